"""BiRefNetVideoMatte as a Python object in a real ComfyUI (the server test is in
test_comfyui_e2e.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.comfyui_inprocess import import_pack
from tests.test_nodes import LOADER_DEFAULTS, model_dirs  # noqa: F401  (model_dirs: a fixture)

pack = import_pack()
nodes = pack.nodes
core = pack.birefnet_core
import comfy.model_management as mm  # noqa: E402  (importable once the pack is)

DEFAULTS = dict(resolution=64, batch_size=3, stabilize=0.0, stabilize_method="median",
                refine_edges=False, background_color="#00FF00")


def _frames(count=5, height=36, width=44, seed=0):
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def model(model_dirs):
    return nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)[0]


def _matte(model, frames, **options):
    return nodes.BiRefNetVideoMatte().matte(model, frames, **{**DEFAULTS, **options})


def test_outputs_and_stabilize_off_equals_segment(model):
    frames = _frames()
    masks, foreground, cutout, composite = _matte(model, frames)
    segment_mask = nodes.BiRefNetSegment().segment(model, frames, 64, 3, 0.0, False,
                                                   "#FFFFFF")[0]
    assert torch.equal(masks, segment_mask)
    assert foreground is frames                                  # no copy without refine_edges
    assert cutout.shape == (5, 36, 44, 4) and torch.equal(cutout[..., 3], masks)
    green = torch.tensor([0.0, 1.0, 0.0])
    expected = frames * masks[..., None] + green * (1 - masks[..., None])
    # compositing in float32, values in [0, 1]: operation order or FMA may move a few ulps (1e-7)
    assert torch.allclose(composite, expected, atol=1e-6)
    for out in (masks, cutout, composite):
        assert out.dtype == torch.float32 and out.device == mm.intermediate_device()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["BiRefNetVideoMatte"] == "BiRefNet Video Matte"


def test_stabilize_and_refine_match_the_core(model):
    frames = _frames()
    masks, foreground, _, _ = _matte(model, frames, stabilize=0.7, stabilize_method="ema",
                                     refine_edges=True)
    nchw = frames.permute(0, 3, 1, 2)
    expected = core.matte_video(model.model, nchw, batch_size=3, stabilize=0.7, method="ema",
                                resolution=64)
    # same batches, same float32 code: a few ulps; the foreground solve's iterations may carry
    # a reordered sum's rounding along, a few dozen ulps of colours <= 1 at most
    assert torch.allclose(masks, expected[:, 0], atol=1e-6)
    colours = core.estimate_foreground(nchw, expected)
    assert torch.allclose(foreground, colours.permute(0, 2, 3, 1), atol=1e-5)


def test_backgrounds_one_or_one_per_frame(model):
    frames = _frames(count=3)
    single = torch.rand(1, 72, 88, 3)
    masks, _, _, composite = _matte(model, frames, background=single)
    fitted = torch.nn.functional.interpolate(single.permute(0, 3, 1, 2), size=(36, 44),
                                             mode="bilinear", antialias=True)
    expected = frames * masks[..., None] + fitted.permute(0, 2, 3, 1) * (1 - masks[..., None])
    # the background's antialiased resize may sum its taps in another order: ~10 ulps of 1
    assert torch.allclose(composite, expected, atol=1e-5)
    per_frame = torch.rand(3, 36, 44, 3)
    _, _, _, composite = _matte(model, frames, background=per_frame)
    assert torch.allclose(composite[2], frames[2] * masks[2, ..., None]
                          + per_frame[2] * (1 - masks[2, ..., None]), atol=1e-6)
    with pytest.raises(ValueError, match="BiRefNetVideoMatte: the background must be one"):
        _matte(model, frames, background=torch.rand(2, 36, 44, 3))


def test_bad_frames_and_settings_are_named(model):
    with pytest.raises(ValueError, match="BiRefNetVideoMatte: .*channels"):
        _matte(model, torch.rand(4, 20, 20, 2))
    with pytest.raises(ValueError, match="BiRefNetVideoMatte: .*NaN.*frame 1"):
        frames = _frames(count=3)
        frames[1, 0, 0, 0] = float("nan")
        _matte(model, frames)
    assert "multiple of 32" in nodes.BiRefNetVideoMatte.VALIDATE_INPUTS(resolution=100)
    assert "#RRGGBB" in nodes.BiRefNetVideoMatte.VALIDATE_INPUTS(background_color="green-ish")


def test_cancel_stops_between_passes(model):
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _matte(model, _frames(count=6))
    finally:
        mm.interrupt_current_processing(False)


def test_run_adds_a_preview_and_leaves_the_outputs_alone(model):
    from PIL import Image

    import folder_paths
    frames = _frames(count=6)
    returned = nodes.BiRefNetVideoMatte().run(model, frames, **DEFAULTS)
    assert all(torch.equal(a, b) for a, b in zip(returned["result"], _matte(model, frames)))
    previews = returned["ui"]["birefnet_preview"]
    assert [entry["index"] for entry in previews] == [0, 2, 3, 5]
    for entry in previews:
        assert entry["count"] == 6 and entry["after"]["type"] == "temp"
        with Image.open(f"{folder_paths.get_temp_directory()}/{entry['after']['filename']}") as after:
            assert after.mode == "RGBA" and after.size == (44, 36)
            alpha = torch.from_numpy(np.asarray(after)[..., 3].astype(np.float32))
        expected = returned["result"][0][entry["index"]] * 255
        # the PNG stores round(255 * alpha): half a level, plus float32 slack
        assert (alpha - expected).abs().max() <= 0.51
