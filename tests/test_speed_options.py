"""The CPU speed options: packed oneDNN kernels, torch.compile with its fallback, int8 linears."""
from __future__ import annotations

import copy
import io
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import birefnet_core
from birefnet_core.network import compiled as compiled_module
from birefnet_core.network.blocks import ASPPDeformable
from birefnet_core.network.compiled import compile_state
from birefnet_core.network.cpu_kernels import (ACTIVATIONS, FastLinear, onednn_linear_available,
                                               pack_cpu_kernels, packed_kernel_count)
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


# ------------------------------------------------------------------ packed oneDNN kernels

needs_onednn = pytest.mark.skipif(not onednn_linear_available(torch.float32),
                                  reason="this PyTorch build has no oneDNN packed linear")


U32 = 2.0 ** -24                     # float32's unit roundoff (half its eps)
GELU_LIPSCHITZ = 1.13                # max of GELU' = Phi(z) + z phi(z), at z ~ 1.41; ReLU's is 1


def _product_bound(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   plain: torch.Tensor, activation: str | None) -> torch.Tensor:
    """|packed - plain| where both compute act(x W^T + b) from the same stored values: the
    packed kernel accumulates in float32 and rounds its output to x's dtype, ``plain`` is
    float32 throughout.

    Each side's float32 dot product of K terms plus the bias is within gamma_(K+1) * S of the
    exact value (S = |x| |W|^T + |b|, gamma_n = n u / (1 - n u), u = 2^-24; bfloat16 products
    are exact in float32, float32 ones round once, both inside gamma), so the pre-activations
    differ by at most 2 gamma S; the activation multiplies that by its Lipschitz constant and
    its two implementations (oneDNN's, PyTorch's) differ by a few ulps (8 u |y| allowed); the
    output's rounding to x's dtype adds u_dtype |y| (2^-8 for bfloat16)."""
    terms = weight.shape[1] + 1
    gamma = terms * U32 / (1 - terms * U32)
    scale = x.abs().float() @ weight.abs().float().t()
    if bias is not None:
        scale = scale + bias.abs().float()
    lipschitz = GELU_LIPSCHITZ if activation == "gelu" else 1.0
    u_out = torch.finfo(x.dtype).eps / 2
    accumulation = lipschitz * 2 * gamma * scale
    return (1 + u_out) * accumulation + (u_out + 8 * U32) * plain.abs()


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_packed_linears_compute_the_plain_layer(dtype, activation):
    """The packed kernel (made at the layer's first CPU call) within the rounding bound of the
    plain float32 layer; a dropped bias or another activation exceeds it (K = 96..1536, S up
    to ~28: the bound is ~0.005 + 2^-8 |y| in bfloat16, observed errors are bfloat16's output
    rounding)."""
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"),
                                     dtype="fp32" if dtype == torch.float32 else "bf16")
    assert packed_kernel_count(model) == 0                       # nothing packed at load
    for layer in (model.bb.layers[0].blocks[1].attn.qkv, model.bb.layers[2].blocks[0].mlp.fc2,
                  model.bb.layers[1].downsample.reduction):
        x = torch.randn(2, 300, layer.in_features).to(dtype)
        with torch.inference_mode():
            packed = layer(x, activation).float()
            plain = ACTIVATIONS[activation](F.linear(x.float(), layer.weight.float(),
                                            None if layer.bias is None else layer.bias.float()))
        assert layer.packed is not None                         # the packed kernel ran
        bound = _product_bound(x, layer.weight, layer.bias, plain, activation)
        assert ((packed - plain).abs() <= bound).all(), float(((packed - plain).abs()
                                                               - bound).max())


@needs_onednn
def test_packed_deformable_branches_compute_the_plain_branches():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    aspps = [m for m in model.modules() if isinstance(m, ASPPDeformable)]
    aspp = aspps[0]
    x = torch.randn(1, aspp.conv1.out_channels, 23, 17)
    with torch.no_grad():
        for branch in aspp.branches():     # offsets that move samples off the pixel grid
            branch.atrous_conv.offsets_and_modulator.weight.normal_(0, 0.05)
    assert pack_cpu_kernels(model) and all(m.packed is not None for m in aspps)
    with torch.inference_mode():
        packed = aspp(x)
        kernels, aspp.packed = aspp.packed, None
        plain = aspp(x)
        aspp.packed = kernels
    # Products over K = C*k*k terms of O(1) values summed in another order, then a 256-term
    # projection: float32 rounding of sums of thousands of terms.
    assert (packed - plain).abs().max() <= 1e-4 * max(1.0, float(plain.abs().max()))


@needs_onednn
def test_packed_kernels_step_aside_when_weights_move_change_or_train():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    pack_cpu_kernels(model)
    layer = model.bb.layers[0].blocks[0].mlp.fc1
    aspp = model.decoder.decoder_block4.dec_att
    x = torch.randn(1, 50, layer.in_features)
    branch = aspp.branches()[0]
    assert layer.packed.usable(x, layer.sources())
    assert aspp.packed[0][0].usable(x, aspp._sources(branch))
    with torch.no_grad():
        layer.weight.mul_(2)                           # an in-place change (a new version)
        aspp.conv1.weight.mul_(2)
    assert not layer.packed.usable(x, layer.sources())
    assert not aspp.packed[0][0].usable(x, aspp._sources(branch))
    with torch.inference_mode():                       # the plain layer, with the new weights
        assert torch.equal(layer(x, "gelu"), F.gelu(F.linear(x, layer.weight, layer.bias)))
    pack_cpu_kernels(model)
    assert layer.packed.usable(x, layer.sources())
    model.to(torch.bfloat16)                           # cast: the packs are dropped
    assert layer.packed is None and aspp.packed is None
    model.float().requires_grad_(True)
    pack_cpu_kernels(model)
    with torch.enable_grad():                          # training: autograd needs the layers
        assert not layer.packed.usable(x, layer.sources())
        layer(x, "gelu").sum().backward()
    assert layer.weight.grad is not None


def _packed_modules(model) -> list:
    return [m for m in model.modules()
            if isinstance(m, (FastLinear, ASPPDeformable)) and m.packed is not None]


@needs_onednn
def test_copies_and_pickles_of_a_packed_model_run_the_plain_layers():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    pack_cpu_kernels(model)
    copied = copy.deepcopy(model)                      # export's float16 path copies models
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert _packed_modules(model) and not _packed_modules(copied)
    x = _fixture_input("swin_v1_t_256x256")
    with torch.inference_mode():
        assert torch.allclose(copied(x), model(x), rtol=0, atol=TOLERANCE)
    assert pack_cpu_kernels(copied) == len(_packed_modules(model))


def test_unfused_models_have_no_packed_kernels():
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"), fuse=False)
    with torch.inference_mode():
        model(_fixture_input("swin_v1_t_256x256"))
    assert not _packed_modules(model) and packed_kernel_count(model) == 0


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
    float_linears = {n: m for n, m in reference.bb.named_modules() if isinstance(m, nn.Linear)}
    quantised = dict(model.bb.named_modules())
    assert float_linears and all(type(quantised[n]) is Int8Linear for n in float_linears)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    state = model.state_dict()                     # plain tensors (memory accounting reads them)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state[f"bb.{next(iter(float_linears))}.weight_int8"].dtype == torch.int8
    name = "layers.2.blocks.1.mlp.fc1"
    x = torch.randn(500, float_linears[name].in_features) * 3
    with torch.inference_mode():
        exact, int8 = float_linears[name](x), quantised[name](x)
        exact_gelu, int8_gelu = float_linears[name](x, "gelu"), quantised[name](x, "gelu")
    bound = _linear_error_bound(x, float_linears[name].weight)
    assert ((int8 - exact).abs() <= bound).all()
    assert ((int8_gelu - exact_gelu).abs() <= bound).all()      # GELU is 1-Lipschitz


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
