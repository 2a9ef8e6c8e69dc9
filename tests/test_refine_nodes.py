"""BiRefNetRefineEdges and Segment's refine_edges option as Python objects in a real ComfyUI."""
from __future__ import annotations

import pytest
import torch

from tests.comfyui_inprocess import import_pack
from tests.test_nodes import LOADER_DEFAULTS, model_dirs  # noqa: F401  (model_dirs: a fixture)

pack = import_pack()
nodes = pack.nodes
core = pack.birefnet_core
import comfy.model_management as mm  # noqa: E402  (importable once the pack is)

OFF = dict(guided_radius=0, guided_eps=1e-3, grow=0, feather=0.0, band=0)


def _images(batch=2, height=20, width=30, seed=0):
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def _masks(batch=2, height=20, width=30, seed=1):
    return torch.rand(batch, height, width, generator=torch.Generator().manual_seed(seed))


def _green_screen(height=24, width=40):
    """A red subject on green with a soft ramp between them: (image, mask), batch 1."""
    ramp = ((torch.arange(width).float() - 14) / 12).clamp(0, 1)     # 1 = background
    mask = (1 - ramp).expand(height, width)[None]
    red, green = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.8, 0.1])
    image = mask[..., None] * red + (1 - mask[..., None]) * green
    return image, mask.contiguous()


def _refine(image, mask, method="none", **options):
    return nodes.BiRefNetRefineEdges().refine(image, mask, method, **{**OFF, **options})


def test_outputs_shapes_types_and_device():
    image, mask = _images(), _masks()
    refined, foreground, cutout = _refine(image, mask, "multilevel", feather=1.0)
    assert refined.shape == (2, 20, 30) and foreground.shape == (2, 20, 30, 3)
    assert cutout.shape == (2, 20, 30, 4)
    assert torch.equal(cutout[..., :3], foreground) and torch.equal(cutout[..., 3], refined)
    for out in (refined, foreground, cutout):
        assert out.dtype == torch.float32 and out.device == mm.intermediate_device()
        assert out.min() >= 0 and out.max() <= 1
    metadata = nodes.BiRefNetRefineEdges
    assert metadata.RETURN_TYPES == ("MASK", "IMAGE", "IMAGE")
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["BiRefNetRefineEdges"] == "BiRefNet Refine Edges"


def test_none_keeps_image_colours_and_options_match_the_core():
    image, mask = _images(), _masks()
    refined, foreground, _ = _refine(image, mask)
    assert torch.equal(refined, mask) and torch.equal(foreground, image)
    options = dict(guided_radius=3, guided_eps=1e-2, grow=-1, feather=1.5, band=4)
    refined, foreground, _ = _refine(image, mask, **options)
    expected = core.refine_mask(image.permute(0, 3, 1, 2), mask[:, None], **options)[:, 0]
    # the same float32 refine_mask, in NHWC instead of NCHW: a few ulps of values <= 1
    assert torch.allclose(refined, expected, atol=1e-6)
    assert torch.equal(foreground, image)


@pytest.mark.parametrize("method", ["multilevel", "blur_fusion"])
def test_foreground_removes_the_background_tint(method):
    image, mask = _green_screen()
    refined, foreground, _ = _refine(image, mask, method)
    soft = (mask > 0.1) & (mask < 0.9)
    red = torch.tensor([0.9, 0.1, 0.1])
    error_before = (image[soft] - red).abs().mean()
    error_after = (foreground[soft] - red).abs().mean()
    assert error_after < 0.5 * error_before
    assert torch.equal(refined, mask)


def test_one_mask_serves_an_image_batch():
    image, mask = _images(batch=3), _masks(batch=1)
    refined, foreground, cutout = _refine(image, mask, grow=1)
    assert refined.shape == (3, 20, 30) and cutout.shape == (3, 20, 30, 4)
    assert torch.equal(refined[0], refined[2]) and torch.equal(foreground, image)


def test_mismatches_name_the_node_and_the_sizes():
    with pytest.raises(ValueError, match=r"BiRefNetRefineEdges: batch sizes .*3.*2"):
        _refine(_images(batch=3), _masks(batch=2))
    with pytest.raises(ValueError, match=r"BiRefNetRefineEdges: the mask is 31x20 .* resize"):
        _refine(_images(), _masks(width=31))
    with pytest.raises(ValueError, match="BiRefNetRefineEdges: .*empty"):
        _refine(torch.zeros(0, 20, 30, 3), _masks())
    with pytest.raises(ValueError, match="BiRefNetRefineEdges: foreground_method"):
        _refine(_images(), _masks(), "magic")


def test_core_errors_come_out_named():
    with pytest.raises(ValueError, match="BiRefNetRefineEdges: guided_eps"):
        _refine(_images(), _masks(), guided_radius=2, guided_eps=0.0)


def test_stops_on_interrupt():
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _refine(_images(), _masks(), "multilevel")
    finally:
        mm.interrupt_current_processing(False)


def test_segment_refine_edges_changes_edge_colours_not_the_mask(model_dirs):  # noqa: F811
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    image = _images(batch=2, height=45, width=70)
    args = (patcher, image, 64, 2, 0.0, False, "#00FF00")
    plain = nodes.BiRefNetSegment().segment(*args)
    refined = nodes.BiRefNetSegment().segment(*args, refine_edges=True)
    assert torch.equal(plain[0], refined[0])
    mask, cutout, composite = refined
    assert torch.equal(cutout[..., 3], mask)
    soft = (mask > 0.02) & (mask < 0.98)
    assert soft.any()
    assert (cutout[..., :3][soft] - image[soft]).abs().max() > 1e-3
    expected = core.estimate_foreground(image.permute(0, 3, 1, 2), mask[:, None])
    # the same float32 solve on the same masks (per chunk vs whole batch); its iterations may
    # carry a reordered sum's rounding along, a few dozen ulps of colours <= 1 at most
    assert torch.allclose(cutout[..., :3], expected.permute(0, 2, 3, 1), atol=1e-5)
    green = torch.tensor([0.0, 1.0, 0.0])
    m = mask[..., None]
    # compositing in float32, values in [0, 1]: operation order or FMA may move a few ulps (1e-7)
    assert torch.allclose(composite, cutout[..., :3] * m + green * (1 - m), atol=1e-6)
    assert nodes.BiRefNetSegment.INPUT_TYPES()["optional"]["refine_edges"][1]["default"] is False
