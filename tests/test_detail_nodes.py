"""BiRefNetDetail and Segment's guide as Python objects in a real ComfyUI (the example workflows
06 and 07 run end to end in tests/test_detail_workflows.py)."""
from __future__ import annotations

import pytest
import torch

from tests.comfyui_inprocess import import_pack
from tests.oracle import composite, scene_alpha
from tests.test_nodes import LOADER_DEFAULTS, model_dirs  # noqa: F401  (model_dirs: a fixture)

pack = import_pack()
nodes = pack.nodes
core = pack.birefnet_core
import comfy.model_management as mm  # noqa: E402  (importable once the pack is)

DETAIL = dict(scale=1.0, band=0, overlap=0.25, max_tiles=128, batch_size=4, resolution=64)
SEGMENT = dict(resolution=64, batch_size=2, threshold=0.0, invert=False,
               background_color="#FFFFFF")


@pytest.fixture()
def patcher(model_dirs):  # noqa: F811
    return nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)[0]


def _photo(height=90, width=140, seed=0):
    """IMAGE (1, H, W, 3) of a two-colour scene and its alpha (1, 1, H, W)."""
    alpha = scene_alpha(height, width, seed=seed, size=0.7)
    return composite(alpha).permute(0, 2, 3, 1).contiguous(), alpha


def test_registered_with_preview_and_tooltips():
    assert pack.NODE_CLASS_MAPPINGS["BiRefNetDetail"] is nodes.BiRefNetDetail
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["BiRefNetDetail"] == "BiRefNet Detail"
    spec = nodes.BiRefNetDetail.INPUT_TYPES()
    assert "mask" in spec["optional"] and "guide" in nodes.BiRefNetSegment.INPUT_TYPES()["optional"]
    for group in spec.values():
        assert all(entry[1].get("tooltip") for entry in group.values())
    assert nodes.BiRefNetDetail.VALIDATE_INPUTS(resolution=100).startswith("BiRefNetDetail:")
    assert nodes.BiRefNetDetail.VALIDATE_INPUTS(resolution=64) is True


def test_detail_matches_the_core_with_and_without_a_mask(patcher):
    image, _ = _photo()
    rgb = image.permute(0, 3, 1, 2)
    mask, cutout = nodes.BiRefNetDetail().refine(patcher, image, **DETAIL)
    expected = core.refine_detail(patcher.model, rgb, resolution=64, tile_size=64)
    assert mask.shape == (1, 90, 140) and cutout.shape == (1, 90, 140, 4)
    assert torch.allclose(mask, expected[:, 0], atol=1e-6)
    assert mask.device == mm.intermediate_device() and torch.equal(cutout[..., 3], mask)
    coarse = torch.zeros(1, 90, 140)
    coarse[:, 30:60, 40:100] = 1.0
    given, _ = nodes.BiRefNetDetail().refine(patcher, image, mask=coarse, **DETAIL)
    assert given[:, :10].abs().max() == 0             # far from the given edge: unchanged
    assert not torch.allclose(given, mask, atol=1e-3)


def test_detail_run_returns_the_preview(patcher):
    image, _ = _photo(60, 80)
    out = nodes.BiRefNetDetail().run(patcher, image, **DETAIL)
    assert out["ui"]["birefnet_preview"][0]["after"]["type"] == "temp"
    assert out["result"][0].shape == (1, 60, 80)


def test_detail_errors_name_the_node(patcher):
    image, _ = _photo(60, 80)
    with pytest.raises(ValueError, match="BiRefNetDetail: the mask is 81x60"):
        nodes.BiRefNetDetail().refine(patcher, image, mask=torch.zeros(1, 60, 81), **DETAIL)
    with pytest.raises(ValueError, match="BiRefNetDetail: scale must be above 0"):
        nodes.BiRefNetDetail().refine(patcher, image, **{**DETAIL, "scale": 0.0})
    with pytest.raises(ValueError, match="BiRefNetDetail: resolution 100"):
        nodes.BiRefNetDetail().refine(patcher, image, **{**DETAIL, "resolution": 100})


def test_detail_cancel_stops_between_tile_batches(patcher):
    image, _ = _photo()
    calls = []

    def interrupt_after_first(*_):
        calls.append(1)
        mm.interrupt_current_processing(True)      # the user presses Cancel mid-run
    hook = patcher.model.register_forward_hook(interrupt_after_first)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            nodes.BiRefNetDetail().refine(patcher, image, **{**DETAIL, "batch_size": 1})
    finally:
        hook.remove()
        mm.interrupt_current_processing(False)
    assert len(calls) == 1                          # the coarse pass, then no tile


def test_segment_guide_picks_one_subject(patcher):
    left = scene_alpha(80, 160, seed=1, center=(0.5, 0.25), size=0.35)
    right = scene_alpha(80, 160, seed=2, center=(0.5, 0.75), size=0.35)
    image = composite(torch.maximum(left, right)).permute(0, 2, 3, 1).contiguous()
    guide = (left[:, 0] > 0.5).float()
    mask, cutout, composite_out = nodes.BiRefNetSegment().segment(patcher, image, guide=guide,
                                                                 **SEGMENT)
    assert mask.shape == (1, 80, 160) and mask[:, :, 110:].max() == 0
    expected = core.segment_region(patcher.model, image.permute(0, 3, 1, 2), guide[:, None],
                                   resolution=64)
    assert torch.allclose(mask, expected[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="BiRefNetSegment: the guide mask is empty"):
        nodes.BiRefNetSegment().segment(patcher, image, guide=torch.zeros(1, 80, 160), **SEGMENT)
    with pytest.raises(ValueError, match="BiRefNetSegment: the mask is 64x64"):
        nodes.BiRefNetSegment().segment(patcher, image, guide=torch.ones(1, 64, 64), **SEGMENT)
