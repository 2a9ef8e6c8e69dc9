"""The nodes with the model under ComfyUI's model management on a fake ``cuda:0``
(tests/fake_device.py), the offload device the CPU, in whichever ComfyUI the process imported
(tests/comfyui_inprocess.py: the 2024 one, or 0.21.0 with COMFYUI_DIR).

ComfyUI is told the device is ``cuda:0`` (its device queries are patched: it was imported with
``--cpu``, and this machine has no GPU); the Loader builds the model on the CPU and ComfyUI's
``load_models_gpu`` moves it, as it does for a GPU user. What the fake device cannot model is in
tests/fake_device.py; ComfyUI's memory figures here are the patched ones (free memory is
reported as ample), so its decisions to offload or partially load other models are not
exercised.
"""
from __future__ import annotations

import pytest
import torch

from tests.comfyui_inprocess import import_pack
from tests.fake_device import DEVICE, FakeDevice, cpu_only_ops, float64_on_device, mixed_device_ops
from tests.test_fake_device import MATTING_CHECK_SYNCS
from tests.test_nodes import model_dirs  # noqa: F401  (a fixture: a synthetic PVT-v2-b0 file)

pack = import_pack()
nodes = pack.nodes
import comfy.model_management as mm  # noqa: E402  (importable once the pack is)

GIB = 1 << 30


@pytest.fixture()
def fake_gpu(monkeypatch):
    """ComfyUI reporting a fake ``cuda:0`` as its torch device, with the CPU as offload and
    intermediate device; inside a FakeDevice. Models are unloaded before and after."""
    mm.unload_all_models()
    monkeypatch.setattr(mm, "get_torch_device", lambda: DEVICE)
    monkeypatch.setattr(mm, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (16 * GIB, 16 * GIB)
                        if torch_free_too else 16 * GIB)
    monkeypatch.setattr(mm, "get_total_memory",
                        lambda dev=None, torch_total_too=False: (24 * GIB, 24 * GIB)
                        if torch_total_too else 24 * GIB)
    # ComfyUI 0.21.0 waits for the device after loading each module (torch.cuda.synchronize);
    # a fake device has nothing to wait for
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    with FakeDevice() as fake:
        load = mm.load_models_gpu

        def load_models_gpu(*args, **kwargs):
            with fake.phase("load"):                    # the weights' own move to the device
                return load(*args, **kwargs)
        monkeypatch.setattr(mm, "load_models_gpu", load_models_gpu)
        yield fake
        mm.unload_all_models()


def _load(dtype: str = "fp16"):
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", device="auto", dtype=dtype,
                                            patch_order="auto", input_normalization="auto")
    return patcher


def _check_clean(fake: FakeDevice) -> None:
    assert mixed_device_ops(fake.records) == []
    assert float64_on_device(fake.records) == []
    assert cpu_only_ops(fake.records) == []


def _images(batch: int, height: int = 45, width: int = 70) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_segment_loads_the_model_to_the_device_and_packs_nothing(model_dirs, fake_gpu, dtype):  # noqa: F811
    from birefnet_core.network.cpu_kernels import packed_kernel_count
    patcher = _load(dtype)
    assert patcher.load_device == DEVICE and patcher.offload_device == torch.device("cpu")
    fake_gpu.clear()
    mask, cutout, composite = nodes.BiRefNetSegment().segment(
        patcher, _images(3), resolution=64, batch_size=3, threshold=0.0, invert=False,
        background_color="#00FF00")
    network = patcher.model
    assert next(network.parameters()).device == DEVICE
    assert all(t.device == DEVICE for t in (*network.parameters(), *network.buffers()))
    assert any(loaded.model is patcher for loaded in mm.current_loaded_models)
    assert mask.shape == (3, 45, 70) and mask.device == mm.intermediate_device()
    assert cutout.shape == (3, 45, 70, 4) and composite.shape == (3, 45, 70, 3)
    # the packed oneDNN copies of the linear weights are made at a CPU forward only, and a
    # model that never ran on the CPU keeps none in host memory
    assert packed_kernel_count(network) == 0
    weights = {tuple(t.shape) for t in (*network.parameters(), *network.buffers())}
    loads = fake_gpu.of("h2d", phase="load")
    assert loads and all(r.shapes[0] in weights for r in loads)
    moved = [r for r in fake_gpu.of("h2d") if not {"forward", "load"} & set(r.phases)]
    images_in = [r.shapes[0] for r in moved if len(r.shapes[0]) == 4]
    assert images_in == [(3, 3, 45, 70)]                  # the one batch of images
    assert [r.shapes[0] for r in fake_gpu.of("d2h")] == [(3, 1, 45, 70)]
    _check_clean(fake_gpu)


def test_detail_video_and_refine_edges_on_the_device(model_dirs, fake_gpu):  # noqa: F811
    patcher = _load()
    image = _images(1, 80, 100)
    fake_gpu.clear()
    mask, _ = nodes.BiRefNetDetail().refine(
        patcher, image, scale=1.0, band=0, overlap=0.25, max_tiles=4, batch_size=2,
        resolution=64, mask=None)[:2]
    assert mask.shape == (1, 80, 100) and mask.device == mm.intermediate_device()
    assert next(patcher.model.parameters()).device == DEVICE
    assert fake_gpu.of("sync", phase="forward") == []
    _check_clean(fake_gpu)

    frames = _images(5, 48, 40)
    fake_gpu.clear()
    outputs = nodes.BiRefNetVideoMatte().matte(
        patcher, frames, resolution=64, batch_size=2, stabilize=0.5, stabilize_method="median",
        background_color="#00FF00", refine_edges=False)
    assert outputs[0].shape[0] == 5
    masks_out = [r.shapes[0] for r in fake_gpu.of("d2h")]
    assert masks_out == [(2, 1, 48, 40), (2, 1, 48, 40), (1, 1, 48, 40)]
    _check_clean(fake_gpu)

    alpha = torch.rand(2, 40, 52, generator=torch.Generator().manual_seed(1))
    fake_gpu.clear()
    refined, colors, rgba = nodes.BiRefNetRefineEdges().refine(
        _images(2, 40, 52), alpha, foreground_method="multilevel", guided_radius=2,
        guided_eps=1e-3, grow=1, feather=1.0, band=3)
    assert refined.shape == (2, 40, 52) and rgba.shape == (2, 40, 52, 4)
    # per image: its image and mask in, its colours and mask out; read back mid-way only by
    # the input checks of refine_mask and estimate_foreground (tests/test_fake_device.py)
    assert [r.shapes[0] for r in fake_gpu.of("h2d")] == [(1, 3, 40, 52), (1, 1, 40, 52)] * 2
    assert [r.shapes[0] for r in fake_gpu.of("d2h")] == [(1, 4, 40, 52)] * 2
    assert [r.caller for r in fake_gpu.of("sync")] == \
        ["birefnet_core/matting/foreground.py:check_image_alpha"] * 2 * 2 * MATTING_CHECK_SYNCS
    _check_clean(fake_gpu)
