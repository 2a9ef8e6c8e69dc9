"""The Loader's ModelPatcher under ComfyUI's model management (2024 ComfyUI by default, 0.21.0
with COMFYUI_DIR): partial loading, unloading, and the caches released with it.

Partial loading runs ComfyUI's own code (``LoadedModel.model_load`` with a VRAM budget: the
2024 ``patch_model_lowvram``, 0.21.0's ``partially_load``) to the ``meta`` device, which
stands in for a GPU: tensors moved there keep their shapes, anything left behind stays a CPU
tensor, so "what moved" is exact without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from tests.comfyui_inprocess import import_pack
from tests.synthetic import synthetic_float_weights

pack = import_pack()
core = pack.birefnet_core
runtime = pack.nodes.runtime
import comfy.model_management as mm  # noqa: E402  (importable once the pack is)
import comfy.model_patcher  # noqa: E402

META = torch.device("meta")


@pytest.fixture(scope="module")
def swin_weights():
    return synthetic_float_weights("swin_v1_t")


def _devices(model: torch.nn.Module) -> dict[str, set[str]]:
    """device type -> names of the parameters and buffers on it."""
    found: dict[str, set[str]] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        found.setdefault(tensor.device.type, set()).add(name)
    return found


def _load_with_budget(patcher, budget: int) -> None:
    """ComfyUI's own partial load of ``patcher`` with ``budget`` bytes of device memory."""
    mm.LoadedModel(patcher).model_load(lowvram_model_memory=budget)


def test_comfyui_partial_load_leaves_parts_of_a_plain_model_behind(swin_weights):
    """What ComfyUI does with a plain ModelPatcher (the pack's before this fix): the 2024
    loader moves only modules that have a ``weight`` (Swin's relative-position tables stay
    on the CPU), 0.21.0 only modules that fit the budget. The forward would mix devices."""
    model = core.load_model(swin_weights)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=META,
                                               offload_device=torch.device("cpu"))
    _load_with_budget(patcher, patcher.model_size() // 2)
    devices = _devices(model)
    assert devices.get("cpu") and devices.get("meta"), devices.keys()


def test_partial_load_moves_every_parameter_and_buffer(swin_weights):
    model = core.load_model(swin_weights)
    patcher = runtime.BiRefNetPatcher(model, load_device=META,
                                      offload_device=torch.device("cpu"))
    _load_with_budget(patcher, patcher.model_size() // 2)
    devices = _devices(model)
    assert set(devices) == {"meta"}, sorted(devices.get("cpu", ()))[:5]
    tables = [n for n in devices["meta"] if "relative_position" in n]
    assert tables                                  # Swin's tables (and their index buffers)


class _CacheSpy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def _cpu_patcher(weights) -> tuple:
    model = core.load_model(weights)
    spy = _CacheSpy()
    model.release_caches = spy
    cpu = torch.device("cpu")
    return runtime.BiRefNetPatcher(model, load_device=cpu, offload_device=cpu), spy


def test_unloading_releases_the_models_caches():
    patcher, spy = _cpu_patcher(synthetic_float_weights("pvt_v2_b0"))
    loaded = mm.LoadedModel(patcher)
    loaded.model_load()
    calls_after_load = spy.calls
    loaded.model_unload()
    assert spy.calls == calls_after_load + 1


@pytest.mark.skipif(not hasattr(comfy.model_patcher.ModelPatcher, "partially_unload"),
                    reason="this ComfyUI (2024) has no partial unloading: it unloads whole")
def test_a_partial_unload_unloads_the_whole_model():
    """ComfyUI frees part of a loaded model when another needs memory; ours cannot run split,
    so none is freed partially and ComfyUI unloads it whole (and its caches with it)."""
    patcher, spy = _cpu_patcher(synthetic_float_weights("pvt_v2_b0"))
    loaded = mm.LoadedModel(patcher)
    loaded.model_load()
    assert patcher.loaded_size() == patcher.model_size()
    assert loaded.model_unload(memory_to_free=patcher.model_size() // 4) is True
    assert patcher.loaded_size() == 0 and spy.calls >= 1


def test_a_load_to_another_device_releases_caches_first():
    model = core.load_model(synthetic_float_weights("pvt_v2_b0"))
    spy = _CacheSpy()
    model.release_caches = spy
    patcher = runtime.BiRefNetPatcher(model, load_device=META,
                                      offload_device=torch.device("cpu"))
    mm.LoadedModel(patcher).model_load()
    assert spy.calls >= 1 and set(_devices(model)) == {"meta"}
