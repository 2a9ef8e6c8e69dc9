"""The forward memory estimate (birefnet_core/inference/memory.py), what the nodes tell
ComfyUI with it (a recorded ``load_models_gpu`` call, in-process ComfyUI), and the tile batch
Detail chooses from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from birefnet_core.inference import memory
from tests.comfyui_inprocess import import_pack
from tests.test_nodes import LOADER_DEFAULTS, model_dirs  # noqa: F401  (model_dirs: a fixture)

pack = import_pack()
nodes = pack.nodes
core = pack.birefnet_core
import comfy.model_management as mm  # noqa: E402  (importable once the pack is)

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "memory.json"
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_estimate_grows_with_pixels_batch_and_dtype_size():
    one = memory.forward_memory_bytes("swin_v1_l", 1024, 1024, torch.float16, 1, CUDA)
    two = memory.forward_memory_bytes("swin_v1_l", 1024, 1024, torch.float16, 2, CUDA)
    big = memory.forward_memory_bytes("swin_v1_l", 2048, 2048, torch.float16, 1, CUDA)
    fp32 = memory.forward_memory_bytes("swin_v1_l", 1024, 1024, torch.float32, 1, CUDA)
    fit = memory.coefficients("swin_v1_l", CUDA, torch.float16)
    pixels = 1024 * 1024 * fit.per_pixel * 2                     # bytes of one image's slope
    assert two - one == pixels + fit.image_mib * memory.MIB      # one more image
    assert big - one == 3 * pixels                               # linear in pixels
    assert fp32 > one                                            # larger elements
    assert memory.forward_memory_bytes("swin_v1_l", 1024, 1024, torch.bfloat16, 1, CUDA) == one
    with pytest.raises(ValueError, match="positive"):
        memory.forward_memory_bytes("swin_v1_t", 0, 1024, torch.float16, 1, CUDA)


def test_unknown_and_unmeasured_variants_take_a_measured_larger_one():
    unknown = memory.forward_memory_bytes(None, 1024, 1024, torch.float16, 1, CUDA)
    every = [memory.forward_memory_bytes(name, 1024, 1024, torch.float16, 1, CUDA)
             for name in memory.ACCELERATOR]
    assert unknown == max(every)
    assert memory.coefficients("swin_v1_b", CUDA) == memory.coefficients("swin_v1_l", CUDA)


def _measured(kind: str) -> list[tuple[str, str, int, int, int]]:
    rows = json.loads(RESULTS.read_text()).get(kind, {})
    found = []
    for key, row in rows.items():
        if "peak_bytes" in row:
            backbone, dtype, side, batch = key.split(":")
            found.append((backbone, dtype, int(side), int(batch), row["peak_bytes"]))
    return found


@pytest.mark.parametrize("kind, device", [("fake", CUDA), ("cpu", CPU)])
def test_estimate_covers_every_measurement_without_wasting_much(kind, device):
    """Each measured peak of bench/bench_memory.py lies under its estimate, and the estimate
    asks for at most a third more (or 64 MiB, for small peaks) than was measured: enough for
    ComfyUI to free what a forward needs, not so much that it unloads models for nothing."""
    measured = _measured(kind)
    assert measured, f"no {kind} rows in {RESULTS}"
    for backbone, dtype, side, batch, peak in measured:
        estimate = memory.forward_memory_bytes(backbone, side, side, getattr(torch, dtype),
                                               batch, device)
        assert peak <= estimate <= max(peak * 4 / 3, peak + 64 * memory.MIB), \
            (backbone, dtype, side, batch, peak / memory.MIB, estimate / memory.MIB)


def test_batch_for_budget_fits_the_estimate():
    args = ("swin_v1_t", 1024, 1024, torch.float16, CUDA)
    three = memory.forward_memory_bytes(*args[:4], 3, CUDA)
    assert memory.batch_for_budget(*args, budget_bytes=three) == 3
    assert memory.batch_for_budget(*args, budget_bytes=three - 1) == 2
    assert memory.batch_for_budget(*args, budget_bytes=0) == 1
    assert memory.batch_for_budget(*args, budget_bytes=10 ** 15, most=8) == 8


class _Recorder:
    """Wraps comfy.model_management.load_models_gpu, keeping each call's memory_required."""

    def __init__(self, original) -> None:
        self.original, self.memory_required = original, []

    def __call__(self, models, memory_required=0, **options):
        self.memory_required.append(memory_required)
        return self.original(models, memory_required=memory_required, **options)


@pytest.fixture()
def recorded(monkeypatch):
    recorder = _Recorder(mm.load_models_gpu)
    monkeypatch.setattr(mm, "load_models_gpu", recorder)
    return recorder


@pytest.fixture()
def patcher(model_dirs):  # noqa: F811
    return nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)[0]


def _expected(height: int, width: int, batch: int) -> int:
    return memory.forward_memory_bytes("pvt_v2_b0", height, width, torch.float32, batch, CPU)


def test_segment_tells_comfyui_what_its_batch_needs(patcher, recorded):
    images = torch.rand(3, 40, 50, 3, generator=torch.Generator().manual_seed(0))
    nodes.BiRefNetSegment().segment(patcher, images, resolution=96, batch_size=2, threshold=0.0,
                                    invert=False, background_color="#FFFFFF")
    assert recorded.memory_required == [_expected(96, 96, 2)]


def test_detail_and_video_tell_comfyui_what_a_pass_needs(patcher, recorded):
    image = torch.rand(1, 70, 90, 3, generator=torch.Generator().manual_seed(1))
    nodes.BiRefNetDetail().refine(patcher, image, scale=1.0, band=0, overlap=0.25,
                                  max_tiles=4, batch_size=0, resolution=64)
    nodes.BiRefNetVideoMatte().matte(patcher, image.expand(3, -1, -1, -1), resolution=64,
                                     batch_size=2, stabilize=0.0, stabilize_method="ema",
                                     refine_edges=False, background_color="#00FF00")
    assert recorded.memory_required == [_expected(64, 64, 1), _expected(64, 64, 2)]


def test_detail_runs_its_tiles_one_per_pass_on_the_cpu_by_default(patcher):
    """The node's default (0: auto) on the CPU: one tile per forward (a batch of 4, the old
    default, measured no faster and cost the memory of four tiles' activations)."""
    batches = []
    hook = patcher.model.register_forward_pre_hook(
        lambda _module, inputs: batches.append(inputs[0].shape[0]))
    try:
        image = torch.rand(1, 150, 170, 3, generator=torch.Generator().manual_seed(2))
        default = nodes.BiRefNetDetail.INPUT_TYPES()["required"]["batch_size"][1]["default"]
        nodes.BiRefNetDetail().refine(patcher, image, scale=1.0, band=0, overlap=0.25,
                                      max_tiles=16, batch_size=default, resolution=64)
    finally:
        hook.remove()
    assert len(batches) > 2 and set(batches) == {1}
