"""The accelerator path on a fake ``cuda:0`` (tests/fake_device.py): the network and every
library entry point with a model on the device, in float16, bfloat16 and float32, for Swin-T,
Swin-L and PVT-v2-b0 (the parity manifests' architectures; weights are never drawn).

What this proves without a GPU: which ops run where and in which dtype, that no op mixes
devices (PyTorch's fake kernels raise on that), what crosses between host and device, and that
the network forward never waits for the device. What it cannot: numbers (fake tensors hold no
values: the masks that come back to the host are placeholders, so decisions the host takes
from mask values, such as Detail's tiles, follow placeholders), speed, and the memory the CUDA
allocator really holds.
"""
from __future__ import annotations

import pytest
import torch

import birefnet_core
from birefnet_core.network.backbones.swin import SwinTransformer
from tests.fake_device import (DEVICE, FakeDevice, cpu_only_ops, fake_model, float64_on_device,
                               mixed_device_ops)

BACKBONES = ("swin_v1_t", "swin_v1_l", "pvt_v2_b0")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NETWORK_SIZE = (64, 96)          # patch maps 16x24 .. 2x3: every Swin stage pads its windows
# Known reads of device memory, each bounded here so that a new one fails:
VIDEO_SYNCS_PER_BATCH = 0    # iter_predictions hands predict the host chunk: checked there
# matting's check_image_alpha reads one combined isnan(...).any() of the image and the alpha
# (the input check every matting entry point makes; kept, since it names bad input).
MATTING_CHECK_SYNCS = 1
NORMALIZE_CONSTANTS = 0      # predict.normalize keeps mean and std as Python numbers


def _check_clean(fake: FakeDevice) -> None:
    """What must hold everywhere: no op mixing devices, no float64 on the device, no CPU-only
    kernel (packed oneDNN linear, int8) for a model on the device."""
    assert mixed_device_ops(fake.records) == []
    assert float64_on_device(fake.records) == []
    assert cpu_only_ops(fake.records) == []


def _plan_tensors(model) -> int:
    """Tensors held by the Swin backbone's window-plan cache (0 for other backbones)."""
    if not isinstance(model.bb, SwinTransformer):
        return 0
    cache = model.bb.plan_cache
    return sum(t is not None for plans in cache._plans.values() for both in plans
               for chunks in both for chunk in chunks for t in chunk.tensors())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_network_forward_never_waits_for_the_device(backbone, dtype):
    """Forward twice at one size: the first builds the Swin window plans on the host and moves
    each of their tensors once; the second touches the host not at all."""
    with FakeDevice() as fake:
        model = fake_model(backbone, dtype)
        fake.watch_forward(model)
        x = torch.zeros(2, 3, *NETWORK_SIZE).to(DEVICE, dtype)
        fake.clear()
        with torch.inference_mode():
            first = model(x)
        first_records = list(fake.records)
        fake.clear()
        with torch.inference_mode():
            second = model(x)
        second_records = list(fake.records)
    for out in (first, second):
        assert out.shape == (2, 1, *NETWORK_SIZE) and out.dtype == dtype
        assert out.device == DEVICE
    for records in (first_records, second_records):
        assert [r.name for r in records if r.kind == "sync"] == []
        assert [r.name for r in records if r.kind == "d2h"] == []
    assert [r.name for r in second_records if r.kind != "device"] == []
    moved = [r for r in first_records if r.kind == "h2d"]
    assert len(moved) == _plan_tensors(model)            # each plan tensor once, nothing else
    assert all(r.out_dtypes[0] in (torch.int64, torch.float32) for r in moved)
    if isinstance(model.bb, SwinTransformer):
        # one chunk per plan (the CPU's row chunks are for the CPU) for the full and half pass
        keys = list(model.bb.plan_cache._plans)
        assert len(keys) == 2 and all(key[-1] is None for key in keys)
        assert all(len(chunks) == 1 for plans in model.bb.plan_cache._plans.values()
                   for both in plans for chunks in both)
    fake.records = first_records + second_records
    _check_clean(fake)


def _copies(fake: FakeDevice) -> tuple[list, list]:
    """Copies between host and device outside the network forward (inside it, the first
    forward at a size moves its window plans: see ``_assert_plans_moved_once``)."""
    outside = [r for r in fake.records if "forward" not in r.phases]
    return ([r for r in outside if r.kind == "h2d"], [r for r in outside if r.kind == "d2h"])


def _assert_plans_moved_once(fake: FakeDevice, model, plans_before: int) -> None:
    """Inside the forward only the window plans new to this call crossed (host to device)."""
    inside = [r for r in fake.records if "forward" in r.phases and r.kind in ("h2d", "d2h")]
    assert all(r.kind == "h2d" for r in inside)
    assert len(inside) == _plan_tensors(model) - plans_before


def _assert_batches_only(fake: FakeDevice, image_batches: list[tuple], mask_batches: list[tuple],
                         constants: int) -> None:
    """Host to device: exactly ``image_batches`` (shapes, in order) plus ``constants`` tiny
    (3-element) tensors; device to host: exactly ``mask_batches``."""
    to_device, to_host = _copies(fake)
    to_device = [r for r in to_device if "forward" not in r.phases]      # not window plans
    images = [r.shapes[0] for r in to_device if len(r.shapes[0]) == 4]
    small = [r.shapes[0] for r in to_device if len(r.shapes[0]) != 4]
    assert images == image_batches
    assert small == [(3,)] * constants
    assert [r.shapes[0] for r in to_host] == mask_batches


# Every backbone in float16 (what the Loader's auto picks on CUDA); the other dtypes with
# Swin-T (the backbone with per-size tables). The dtype changes only the casts at predict's
# entry and exit, which the float16 runs cover, and the forward, which the test above runs in
# every dtype; each combination more costs ~10 fake forwards of CI time.
PIPELINE_CASES = [(backbone, torch.float16) for backbone in BACKBONES] + [
    ("swin_v1_t", torch.bfloat16), ("swin_v1_t", torch.float32)]


@pytest.mark.parametrize("backbone,dtype", PIPELINE_CASES, ids=str)
def test_pipelines_cross_the_host_boundary_one_batch_at_a_time(backbone, dtype):
    """predict (batch 3, an image size that is a multiple of 32 and one that is not),
    refine_detail, segment_region and the video path with stabilisation, images on the host
    and the model on the device."""
    with FakeDevice() as fake:
        model = fake_model(backbone, dtype, resolution=64)
        fake.watch_forward(model)
        for size, resolution in (((90, 70), NETWORK_SIZE), ((64, 64), 64)):
            images = torch.rand(3, 3, *size)
            for repeat in range(2):           # the second call at a size moves no plans
                plans_before = _plan_tensors(model)
                fake.clear()
                masks = birefnet_core.predict(model, images, resolution=resolution)
                assert masks.shape == (3, 1, *size) and masks.device.type == "cpu"
                assert not isinstance(masks, torch._subclasses.FakeTensor)
                _assert_batches_only(fake, [(3, 3, *size)], [(3, 1, *size)],
                                     NORMALIZE_CONSTANTS)
                _assert_plans_moved_once(fake, model, plans_before)
                assert repeat == 0 or _plan_tensors(model) == plans_before
                assert fake.of("sync") == []
                _check_clean(fake)

        image = torch.rand(1, 3, 80, 100)
        fake.clear()
        detail = birefnet_core.refine_detail(model, image, tile_size=64, batch_size=2,
                                             max_tiles=4)
        assert detail.shape == (1, 1, 80, 100)
        to_device, to_host = _copies(fake)
        assert [r.shapes[0][1:] for r in to_device if len(r.shapes[0]) == 4] == \
            [(3, 80, 100)] + [(3, 64, 64)] * (len(to_device) - 1 - sum(
                len(r.shapes[0]) != 4 for r in to_device))
        assert all(r.shapes[0][0] <= 2 or r.shapes[0] == (1, 3, 80, 100) for r in to_device
                   if len(r.shapes[0]) == 4)                   # tiles at most batch_size
        assert all(len(s) == 4 and s[1] == 1 for s in (r.shapes[0] for r in to_host))
        assert fake.of("sync", phase="forward") == []
        _check_clean(fake)

        guide = torch.zeros(1, 1, 80, 100)
        guide[..., 20:60, 30:70] = 1
        fake.clear()
        region = birefnet_core.segment_region(model, image, guide, resolution=64)
        assert region.shape == (1, 1, 80, 100)
        to_device, to_host = _copies(fake)
        assert [len(r.shapes[0]) for r in to_device if len(r.shapes[0]) == 4] == [4]
        assert len(to_host) == 1 and to_host[0].shapes[0][:2] == (1, 1)
        assert fake.of("sync") == []
        _check_clean(fake)

        frames = torch.rand(5, 3, 48, 40)
        fake.clear()
        video = birefnet_core.matte_video(model, frames, batch_size=2, stabilize=0.5,
                                          resolution=64)
        assert video.shape == (5, 1, 48, 40)
        _assert_batches_only(fake, [(2, 3, 48, 40), (2, 3, 48, 40), (1, 3, 48, 40)],
                             [(2, 1, 48, 40), (2, 1, 48, 40), (1, 1, 48, 40)],
                             3 * NORMALIZE_CONSTANTS)
        assert [r.caller for r in fake.of("sync")] == \
            ["birefnet_core/inference/predict.py:check_images"] * 3 * VIDEO_SYNCS_PER_BATCH
        _check_clean(fake)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matting_runs_on_the_device(dtype):
    """estimate_foreground (both methods) and refine_mask with every option, image and alpha
    on the device: results stay there, nothing float64, nothing read back but the input
    checks."""
    with FakeDevice() as fake:
        image = torch.rand(2, 3, 40, 52).to(DEVICE, dtype)
        alpha = torch.rand(2, 1, 40, 52).to(DEVICE, dtype)
        fake.clear()
        results = [birefnet_core.estimate_foreground(image, alpha),
                   birefnet_core.estimate_foreground(image, alpha, method="blur_fusion"),
                   birefnet_core.refine_mask(image, alpha, guided_radius=2, grow=2, feather=1.5,
                                             band=3),
                   birefnet_core.refine_mask(image, alpha, grow=-2)]
        for result in results:
            assert result.device == DEVICE and result.dtype == dtype
        assert fake.of("d2h") == []
        # the feather (kornia's gaussian_blur2d) makes its sigma and kernel with torch.tensor
        # on the host; nothing image-sized is ever there
        small = [r for r in fake.of("host") + fake.of("h2d")
                 if all(torch.Size(shape).numel() < 40 * 52 for shape in r.shapes)]
        assert len(small) == len(fake.of("host") + fake.of("h2d"))
        assert [r.caller for r in fake.of("sync")] == \
            ["birefnet_core/matting/foreground.py:check_image_alpha"] * 4 * MATTING_CHECK_SYNCS
        _check_clean(fake)


def _plan_bound(height: int, width: int, window: int) -> tuple[int, int]:
    """(most bytes the window plans of one pass may hold, bytes of the (nW, N, N) float32 masks
    a full shifted-window mask per stage held before) for a Swin pass whose patch map is
    (height, width): per stage and shift at most four int64 indices per padded slot (gather,
    tokens, real and padding slots) and, shifted, one float32 (N, N) mask per seam window (the
    last row and column of windows)."""
    plans = masks = 0
    tokens = window * window
    for _ in range(4):
        rows, cols = -(-height // window), -(-width // window)
        slots = rows * cols * tokens
        plans += 2 * 4 * 8 * slots + (rows + cols - 1) * tokens * tokens * 4
        masks += rows * cols * tokens * tokens * 4
        height, width = (height + 1) // 2, (width + 1) // 2
    return plans, masks


def test_swin_window_plans_are_small_bounded_and_released():
    """Swin-L's window plans at 1024² hold indices and the seam windows' masks only (the full
    masks they replace were ~40 MB at 1024² and grew with every size, per device, for the
    process's life); at most ``capacity`` (size, batch) entries are kept, and
    ``release_caches`` frees them."""
    with FakeDevice() as fake:
        model = fake_model("swin_v1_l", torch.float16)
        cache = model.bb.plan_cache
        x = torch.zeros(1, 3, 1024, 1024).to(DEVICE, torch.float16)
        with torch.inference_mode():
            model(x)
        full_pass, old_full = _plan_bound(256, 256, 12)
        half_pass, old_half = _plan_bound(128, 128, 12)
        assert len(cache) == 2
        assert 0 < cache.nbytes() <= full_pass + half_pass
        assert full_pass + half_pass < (old_full + old_half) / 3
        with torch.inference_mode():
            for size in (64, 96, 128, 160):
                model(torch.zeros(1, 3, size, size).to(DEVICE, torch.float16))
        assert len(cache) == cache.capacity == 4
        assert fake.of("sync") == []
        model.bb.release_caches()
        assert len(cache) == 0 and cache.nbytes() == 0
        with torch.inference_mode():
            model(torch.zeros(1, 3, 64, 64).to(DEVICE, torch.float16))
        assert len(cache) == 2


def test_moving_or_casting_a_swin_backbone_drops_its_window_plans():
    """(On the CPU: a fake model cannot be swapped back by nn.Module.to, whose in-place
    parameter swap refuses the fake tensors' registered weakrefs.)"""
    from birefnet_core.network.variants import get_variant
    backbone = SwinTransformer(get_variant("swin_v1_t").backbone).eval()
    with torch.inference_mode():
        backbone(torch.zeros(1, 3, 64, 64))
    assert len(backbone.plan_cache) == 1
    backbone.to(torch.bfloat16)
    assert len(backbone.plan_cache) == 0
