"""The CPU speed options: packed Swin MLP kernels, torch.compile with its fallback, int8 linears."""
from __future__ import annotations

import copy
import io
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn

import birefnet_core
from birefnet_core.network import compiled as compiled_module
from birefnet_core.network.backbones.swin import Mlp
from birefnet_core.network.compiled import compile_state
from birefnet_core.network.cpu_kernels import onednn_linear_available, pack_cpu_kernels
from birefnet_core.network.int8 import Int8Linear
from tests.synthetic import parity_fixture, synthetic_float_weights
from tests.test_parity import TOLERANCE

EPS32 = torch.finfo(torch.float32).eps


def _fixture_input(name: str) -> torch.Tensor:
    return torch.from_numpy(parity_fixture(name)["input"])


def _official_difference(model, name: str) -> float:
    fixture = parity_fixture(name)
    with torch.inference_mode():
        logits = model(torch.from_numpy(fixture["input"]))
    return float(np.abs(logits.numpy() - fixture["logits"]).max())


# ------------------------------------------------------------------ packed MLP kernels (oneDNN)

needs_onednn = pytest.mark.skipif(not onednn_linear_available(torch.float32),
                                  reason="this PyTorch build has no oneDNN packed linear")


@needs_onednn
def test_swin_models_get_packed_mlps_that_compute_the_plain_mlp():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    assert mlps and all(m.packed is not None for m in mlps)
    mlp = mlps[0]
    x = torch.randn(2, 300, mlp.fc1.in_features)
    with torch.inference_mode():
        packed = mlp(x)
        plain = mlp.fc2(mlp.act(mlp.fc1(x)))
    # Two float32 products of the same terms in different orders, and GELU to ~1 ulp: each
    # output differs by a few eps times the sum of |terms| through both layers.
    hidden = (x.abs() @ mlp.fc1.weight.abs().t() + mlp.fc1.bias.abs())
    scale = hidden @ mlp.fc2.weight.abs().t() + mlp.fc2.bias.abs()
    assert ((packed - plain).abs() <= 8 * EPS32 * scale + 1e-7).all()


@needs_onednn
def test_packed_mlp_steps_aside_when_weights_move_change_or_train():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    mlp = next(m for m in model.modules() if isinstance(m, Mlp))
    x = torch.randn(1, 50, mlp.fc1.in_features)
    assert mlp.packed.usable(x, mlp.fc1.weight, mlp.fc2.weight)
    with torch.no_grad():
        mlp.fc1.weight.mul_(2)                         # an in-place change (a new version)
    assert not mlp.packed.usable(x, mlp.fc1.weight, mlp.fc2.weight)
    with torch.inference_mode():                       # the plain layers, with the new weights
        assert torch.equal(mlp(x), mlp.fc2(mlp.act(mlp.fc1(x))))
    pack_cpu_kernels(model)
    assert mlp.packed.usable(x, mlp.fc1.weight, mlp.fc2.weight)
    model.to(torch.bfloat16)                           # cast: new storage and dtype
    assert not mlp.packed.usable(x.bfloat16(), mlp.fc1.weight, mlp.fc2.weight)
    model.float().requires_grad_(True)
    pack_cpu_kernels(model)
    with torch.enable_grad():                          # training: autograd needs the layers
        assert not mlp.packed.usable(x, mlp.fc1.weight, mlp.fc2.weight)
        mlp(x).sum().backward()
    assert mlp.fc1.weight.grad is not None


@needs_onednn
def test_copies_and_pickles_of_a_packed_model_run_the_plain_layers():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    copied = copy.deepcopy(model)                      # export's float16 path copies models
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert all(m.packed is None for m in copied.modules() if isinstance(m, Mlp))
    x = _fixture_input("swin_v1_t_256x256")
    with torch.inference_mode():
        assert torch.allclose(copied(x), model(x), rtol=0, atol=TOLERANCE)
    assert pack_cpu_kernels(copied) == sum(isinstance(m, Mlp) for m in copied.modules())


def test_unfused_models_have_no_packed_kernels():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"), fuse=False)
    assert all(m.packed is None for m in model.modules() if isinstance(m, Mlp))


# ------------------------------------------------------------------------------ torch.compile

@pytest.mark.parametrize("backbone,name", [("pvt_v2_b0", "pvt_v2_b0_256x256"),
                                           ("swin_v1_t", "swin_v1_t_256x256")])
def test_compiled_model_keeps_parity(backbone, name):
    """The compiled backbone (Swin in its padded window form) matches the official logits
    within the parity bound, as the eager model does."""
    model = birefnet_core.load_model(synthetic_float_weights(backbone), compile=True)
    difference = _official_difference(model, name)
    assert compile_state(model) == "on"
    assert difference <= TOLERANCE, f"{name}: max |dlogit| {difference:.2e}"


class _Broken:
    """What torch.compile returns in the failure tests: a callable that fails like a backend."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


def _compiled_with(monkeypatch, error: Exception):
    monkeypatch.setattr(compiled_module.torch, "compile",
                        lambda function, **options: _Broken(error))
    return birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), compile=True)


def test_compile_failure_falls_back_to_eager_with_one_log_line(monkeypatch, caplog):
    model = _compiled_with(monkeypatch, RuntimeError("InductorError: no C++ compiler found"))
    eager = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"))
    x = _fixture_input("pvt_v2_b0_256x256")
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        first, second = model(x), model(x)
        expected = eager(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()
    assert compile_state(model).startswith("fell back to eager (RuntimeError")
    result = birefnet_core.predict(model, torch.rand(1, 3, 100, 80))   # the whole path runs
    assert result.shape == (1, 1, 100, 80) and torch.isfinite(result).all()


def test_bad_input_raises_eagers_error_not_the_compilers(monkeypatch):
    model = _compiled_with(monkeypatch, RuntimeError("backend failed"))
    eager = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"))
    bad = torch.rand(1, 4, 64, 64)                                  # four channels
    with pytest.raises(RuntimeError) as from_compiled, torch.inference_mode():
        model(bad)
    with pytest.raises(RuntimeError) as from_eager, torch.inference_mode():
        eager(bad)
    assert str(from_compiled.value) == str(from_eager.value)
    assert "backend failed" not in str(from_compiled.value)


def test_out_of_memory_passes_through_for_the_callers_batch_halving(monkeypatch):
    model = _compiled_with(monkeypatch, torch.OutOfMemoryError("out of memory"))
    with pytest.raises(torch.OutOfMemoryError), torch.inference_mode():
        model(_fixture_input("pvt_v2_b0_256x256"))
    assert compile_state(model) == "on"                             # not given up for an OOM


# ------------------------------------------------------------------------------ int8 linears

def _linear_error_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """|int8 - float| for y = x W^T with weight scales s_w = max|W_n|/127 per output channel
    and an activation step s_x no larger than (max(x, 0) - min(x, 0))/127 (x86 keeps 7 bits):
    per output n, sum_k |x_k| s_w/2 + |w_nk| s_x/2 + s_x s_w/4 (each rounding at most half a
    step), plus float32 rounding."""
    s_w = weight.abs().amax(dim=1) / 127                                   # (N,)
    s_x = (x.max().clamp_min(0) - x.min().clamp_max(0)) / 127
    return ((x.abs().sum(dim=1, keepdim=True) * s_w / 2)
            + (weight.abs().sum(dim=1) * s_x / 2)
            + weight.shape[1] * s_x * s_w / 4) * (1 + 1e-4) + 1e-6


def test_int8_replaces_the_backbone_linears_within_the_quantisation_bound():
    weights = synthetic_float_weights("swin_v1_t")
    reference = birefnet_core.load_model(weights)
    model = birefnet_core.load_model(weights, dtype="int8")
    assert model.info.int8
    float_linears = {n: m for n, m in reference.bb.named_modules() if type(m) is nn.Linear}
    quantised = dict(model.bb.named_modules())
    assert float_linears and all(type(quantised[n]) is Int8Linear for n in float_linears)
    assert not any(type(m) is nn.Linear for m in model.modules())
    state = model.state_dict()                     # plain tensors (memory accounting reads them)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state[f"bb.{next(iter(float_linears))}.weight_int8"].dtype == torch.int8
    name = "layers.2.blocks.1.mlp.fc1"
    x = torch.randn(500, float_linears[name].in_features) * 3
    with torch.inference_mode():
        exact, int8 = float_linears[name](x), quantised[name](x)
    assert ((int8 - exact).abs() <= _linear_error_bound(x, float_linears[name].weight)).all()


# The README's stated bound for int8 masks against float32 (measured on these fixtures with
# synthetic weights: 0.0045 Swin-T, 0.0050 PVT-v2-b0; real weights are not available here).
INT8_MASK_BOUND = 0.02


@pytest.mark.parametrize("backbone,name", [("pvt_v2_b0", "pvt_v2_b0_256x256"),
                                           ("swin_v1_t", "swin_v1_t_256x256")])
def test_int8_masks_stay_within_the_stated_bound(backbone, name):
    weights = synthetic_float_weights(backbone)
    x = _fixture_input(name)
    with torch.inference_mode():
        exact = torch.sigmoid(birefnet_core.load_model(weights)(x))
        int8 = torch.sigmoid(birefnet_core.load_model(weights, dtype="int8")(x))
    difference = float((int8 - exact).abs().max())
    assert 0 < difference <= INT8_MASK_BOUND, difference


def test_int8_is_refused_off_the_cpu():
    with pytest.raises(ValueError, match="CPU only"):
        birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), dtype="int8",
                                 device="meta")
