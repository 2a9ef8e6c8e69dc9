"""The CPU fast paths stay right: packed oneDNN and int8 kernels are made at the first CPU
forward, dropped when the model moves, follow weight changes that no version counter sees
(ComfyUI's weight patches, load_state_dict under inference_mode), leave autograd to the plain
layers, and torch.compile picks its options on the device it runs on."""
from __future__ import annotations

import gc
import logging
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import birefnet_core
from birefnet_core.network import compiled as compiled_module
from birefnet_core.network.blocks import ASPPDeformable
from birefnet_core.network.compiled import compile_model, compile_state
from birefnet_core.network.cpu_kernels import (FastLinear, enable_cpu_kernels,
                                               onednn_linear_available, packed_kernel_count)
from tests.synthetic import parity_fixture, synthetic_float_weights
from tests.test_parity import TOLERANCE

pytestmark = pytest.mark.skipif(not onednn_linear_available(torch.float32),
                                reason="this PyTorch build has no oneDNN packed linear")
FIXTURE = "pvt_v2_b0_256x256"


def _image() -> torch.Tensor:
    return torch.from_numpy(parity_fixture(FIXTURE)["input"])


def _loaded_as_comfyui_does(dtype: str = "fp32") -> nn.Module:
    """Built inside inference_mode, as ComfyUI runs the Loader: parameters without versions."""
    with torch.inference_mode():
        return birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), dtype=dtype)


def _plain_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's forward with every packed kernel off (the plain layers)."""
    enable_cpu_kernels(model, False)
    try:
        return model(x)
    finally:
        enable_cpu_kernels(model, True)


def _fast_linear(model: nn.Module) -> tuple[str, FastLinear]:
    return next((n, m) for n, m in model.named_modules()
                if isinstance(m, FastLinear) and m.bias is not None)


# ------------------------------------------------------------------------------- lifecycle

def test_packs_are_made_at_the_first_cpu_forward_and_dropped_when_the_model_moves():
    model = _loaded_as_comfyui_does()
    assert packed_kernel_count(model) == 0             # a GPU user's host copy never exists
    with torch.inference_mode():
        model(_image())
    made = packed_kernel_count(model)
    aspps = [m for m in model.modules() if isinstance(m, ASPPDeformable)]
    linears = [m for m in model.modules() if isinstance(m, FastLinear)]
    assert made == len(linears) + sum(2 * len(m.branches()) for m in aspps)
    pack = weakref.ref(linears[0].packed)
    with torch.inference_mode():
        model.to(torch.bfloat16)                       # a cast (as a move): every pack goes
        gc.collect()
        assert packed_kernel_count(model) == 0 and pack() is None
        model(_image().bfloat16())
        assert packed_kernel_count(model) == made
        linears[0].to("meta")                          # one submodule moved on its own
    assert linears[0].packed is None and packed_kernel_count(model) == made - 1
    model.release_caches()                             # what ComfyUI's unload calls
    assert packed_kernel_count(model) == 0


def test_a_pack_does_not_outlive_a_forward_off_the_cpu():
    """Weights replaced without a module move (ComfyUI's set_attr_param to the device): the
    next forward off the CPU drops the CPU pack."""
    layer = FastLinear(16, 8)
    layer.pack_cpu_kernels()
    with torch.inference_mode():
        layer(torch.randn(3, 16))
        assert layer.packed is not None
        layer.weight = nn.Parameter(layer.weight.to("meta"), requires_grad=False)
        layer.bias = nn.Parameter(layer.bias.to("meta"), requires_grad=False)
        layer(torch.randn(3, 16, device="meta"))
    assert layer.packed is None


# ------------------------------------------------------- weight changes without versions

def test_load_state_dict_under_inference_mode_reaches_the_packed_kernels():
    model = _loaded_as_comfyui_does()
    x = _image()
    with torch.inference_mode():
        before = model(x)                              # packs made from the first weights
        changed = {k: v * 1.25 if v.is_floating_point() else v
                   for k, v in model.state_dict().items()}
        model.load_state_dict(changed)                 # in place: same storage, no version
        after, plain = model(x), _plain_forward(model, x)
    assert (after - before).abs().max() > 100 * TOLERANCE       # the change matters
    assert (after - plain).abs().max() <= TOLERANCE


def test_in_place_bias_changes_reach_the_packed_kernels():
    model = _loaded_as_comfyui_does()
    _, layer = _fast_linear(model)
    x = torch.randn(2, 40, layer.in_features)
    with torch.inference_mode():
        layer(x)
        layer.bias.add_(0.5)
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias),
                              rtol=0, atol=TOLERANCE)


def test_int8_follows_in_place_weight_changes_under_inference_mode():
    with torch.inference_mode():
        model = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), dtype="int8")
        x = _image()
        before = model(x)
        state = model.state_dict()
        changed = {k: -v if k.endswith("weight_int8") else v for k, v in state.items()}
        model.load_state_dict(changed)
        after = model(x)
        model.release_caches()                         # prepacked again from the new weights
        fresh = model(x)
    assert (after - before).abs().max() > 100 * TOLERANCE
    assert torch.equal(after, fresh)


@pytest.mark.parametrize("inplace", [False, True], ids=["set_attr_param", "copy_to_param"])
def test_comfyui_weight_patches_reach_the_packed_kernels(inplace):
    """ModelPatcher.add_patches + patch_model, as a LoRA-style patch applies: a packed
    linear's bias alone, another's weight, and the deformable ASPP's, replaced
    (set_attr_param) or written in place (copy_to_param, weight_inplace_update); unpatching
    restores the first output."""
    from tests.comfyui_inprocess import import_pack
    import_pack()
    import comfy.model_patcher
    model = _loaded_as_comfyui_does()
    first, second = [n for n, m in model.named_modules() if isinstance(m, FastLinear)][:2]
    aspp = next(n for n, m in model.named_modules() if isinstance(m, ASPPDeformable))
    keys = (f"{first}.bias", f"{second}.weight", f"{aspp}.conv1.weight",   # a bias alone too
            f"{aspp}.aspp1.atrous_conv.regular_conv.bias")
    generator = torch.Generator().manual_seed(0)
    x = _image()
    with torch.inference_mode():
        patcher = comfy.model_patcher.ModelPatcher(
            model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"),
            weight_inplace_update=inplace)
        state = model.state_dict()
        before = model(x)
        patches = {k: (0.5 * torch.randn(state[k].shape, generator=generator),) for k in keys}
        assert sorted(patcher.add_patches(patches, 1.0)) == sorted(keys)
        patcher.patch_model()
        after, plain = model(x), _plain_forward(model, x)
        patcher.unpatch_model()
        restored = model(x)
    assert (after - before).abs().max() > 100 * TOLERANCE
    assert (after - plain).abs().max() <= TOLERANCE
    assert (restored - before).abs().max() <= TOLERANCE


# ----------------------------------------------------------------------------------- autograd

def test_inputs_that_need_gradients_get_the_plain_layers_gradients():
    """A frozen model, an input that requires grad (saliency maps): the packed kernels step
    aside, so the gradients are the plain layers'."""
    model = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"))
    _, layer = _fast_linear(model)
    x = torch.randn(2, 30, layer.in_features, requires_grad=True)
    layer(x, "gelu").square().sum().backward()
    expected = torch.autograd.grad(F.gelu(F.linear(x, layer.weight, layer.bias)).square().sum(),
                                   x)[0]
    assert torch.allclose(x.grad, expected, rtol=1e-5, atol=1e-6)

    aspp = next(m for m in model.modules() if isinstance(m, ASPPDeformable))
    image = torch.randn(1, aspp.conv1.out_channels, 12, 10, requires_grad=True)
    aspp(image).sum().backward()
    enable_cpu_kernels(model, False)
    expected = torch.autograd.grad(aspp(image).sum(), image)[0]
    assert torch.allclose(image.grad, expected, rtol=1e-4, atol=1e-5)


def test_a_trainable_offset_convolution_gets_its_gradient():
    """Only the deformable offsets train (an adapter on a frozen model): the sampled columns
    need gradients even though the packed kernels' own weights do not."""
    model = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"))
    aspp = next(m for m in model.modules() if isinstance(m, ASPPDeformable))
    offsets = aspp.aspp_deforms[0].atrous_conv.offsets_and_modulator
    with torch.no_grad():
        offsets.weight.normal_(0, 0.05)
    offsets.weight.requires_grad_(True)
    image = torch.randn(1, aspp.conv1.out_channels, 12, 10)
    aspp(image).sum().backward()
    gradient, offsets.weight.grad = offsets.weight.grad, None
    enable_cpu_kernels(model, False)
    aspp(image).sum().backward()
    assert gradient is not None and offsets.weight.grad.abs().max() > 0
    assert torch.allclose(gradient, offsets.weight.grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ torch.compile

class _Recorder:
    """torch.compile's stand-in: records its keyword arguments; the "compiled" function runs
    the eager one."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, function, **options):
        self.calls.append(options)
        return function


def _tiny_model() -> nn.Module:
    model = nn.Module()
    model.bb = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    return model.eval().requires_grad_(False)


def test_compile_options_are_chosen_on_the_device_the_forward_runs_on(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(compiled_module.torch, "compile", recorder)
    elsewhere = compile_model(_tiny_model(), mode="max-autotune")   # wrapped on the CPU
    assert recorder.calls == []                                     # nothing chosen yet
    elsewhere.to("meta")                                            # then run elsewhere
    elsewhere.bb(torch.randn(2, 8, device="meta"))
    assert recorder.calls == [{"dynamic": False, "mode": "max-autotune"}]   # no freezing
    on_cpu = compile_model(_tiny_model(), mode="max-autotune")
    on_cpu.bb(torch.randn(2, 8))
    on_cpu.bb(torch.randn(2, 8))                                    # one compile per device
    assert len(recorder.calls) == 2
    cpu = recorder.calls[1]
    assert "mode" not in cpu and cpu["options"]["freezing"] is True
    assert cpu["options"]["max_autotune"] is True                   # the mode, as options


def test_compile_with_a_mode_on_the_cpu_compiles():
    """torch.compile refuses a mode beside options; the CPU's freezing must not make
    compile_model(mode=...) fail (it raised before, outside the fallback)."""
    model = _tiny_model()
    x = torch.randn(5, 8)
    with torch.inference_mode():
        expected = model.bb(x)
        compile_model(model, mode="reduce-overhead")
        out = model.bb(x)
    assert compile_state(model) == "on"
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_a_compile_call_that_raises_falls_back_to_eager(monkeypatch, caplog):
    def refuse(function, **options):
        raise RuntimeError("torch.compile refused its arguments")
    monkeypatch.setattr(compiled_module.torch, "compile", refuse)
    model = compile_model(_tiny_model(), mode="default")        # wrapping never fails
    x = torch.randn(3, 8)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        out = model.bb(x)
        expected = type(model.bb).forward(model.bb, x)
    assert torch.equal(out, expected)
    assert compile_state(model).startswith("fell back to eager (RuntimeError: torch.compile "
                                           "refused")
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1
