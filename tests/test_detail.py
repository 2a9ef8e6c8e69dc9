"""refine_detail and segment_region against the resolution-limited oracle (tests/oracle.py):
the oracle is exact at the pixels it is given, so every error left is the tiling's own."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import birefnet_core
from birefnet_core import InputError, predict, refine_detail, segment_region
from birefnet_core.inference.region import guide_box
from birefnet_core.inference.predict import working_size
from birefnet_core.inference.tiles import (band_pixels, band_weight, cover_band, plan_tiles, taper,
                                          window_weight)
from tests.oracle import (ResolutionLimitedOracle, composite, scene, scene_alpha,
                         tile_border_pairs)
from tests.synthetic import synthetic_float_weights
from tests.test_batching import _RunsOutAboveTwo


def _band_mae(mask, alpha, band):
    return (mask - alpha).abs()[0, 0][band].mean().item()


def _refined(height, width, resolution=64, seed=0, **options):
    oracle = ResolutionLimitedOracle(resolution)
    image, alpha = scene(height, width, seed, **options)
    coarse = predict(oracle, image)
    return oracle, image, alpha, coarse, refine_detail(oracle, image, coarse)


@pytest.mark.parametrize("size", [(240, 360), (97, 203), (301, 157)])
def test_band_error_falls_tenfold(size):
    # The tiles are at the image's own scale, where the oracle is exact (up to float32): what
    # error is left comes from the band's outer taper, where the coarse mask is already right.
    _, _, alpha, coarse, refined = _refined(*size)
    band = band_pixels(coarse[0, 0], 8)
    before, after = _band_mae(coarse, alpha, band), _band_mae(refined, alpha, band)
    assert before > 0.01                                  # the coarse mask has lost detail
    assert after < before / 10
    assert (refined - alpha).abs().mean() < (coarse - alpha).abs().mean() / 10


def test_subject_at_the_image_border():
    _, _, alpha, coarse, refined = _refined(180, 260, center=(0.15, 0.05), size=0.8)
    assert alpha[0, 0, 0].max() > 0.99 and alpha[0, 0, :, 0].max() > 0.99   # it touches both
    band = band_pixels(coarse[0, 0], 8)
    assert _band_mae(refined, alpha, band) < _band_mae(coarse, alpha, band) / 10


def test_nothing_changes_outside_the_band_and_no_far_object_is_added():
    oracle = ResolutionLimitedOracle(64)
    alpha = scene_alpha(200, 300, seed=3, center=(0.6, 0.35), size=0.6)
    alpha[..., 20:60, 230:280] = 1.0                      # a far object the mask leaves out
    image = composite(alpha)
    coarse = predict(oracle, image)
    coarse[..., :, 200:] = 0                              # the caller's mask: one subject only
    band = 12
    refined = refine_detail(oracle, image, coarse, band=band)
    outside = ~band_pixels(coarse[0, 0], band)
    assert torch.equal(refined[0, 0][outside], coarse[0, 0][outside])      # bit for bit
    assert refined[..., 20:60, 230:280].max() == 0
    assert (refined != coarse).any()


def _border_and_inside_steps(mask, windows):
    """Largest |difference| of neighbouring pixels across a tile border and elsewhere."""
    height, width = mask.shape
    across, down = tile_border_pairs(windows, height, width)
    step_x, step_y = (mask[:, 1:] - mask[:, :-1]).abs(), (mask[1:] - mask[:-1]).abs()
    border = max(step_x[across].max(), step_y[down].max()).item()
    inside = max(step_x[~across].max(), step_y[~down].max()).item()
    return border, inside


@pytest.mark.parametrize("overlap, seamless", [(0.25, True), (0.5, True), (0.0, False)])
def test_no_seam_with_a_different_bias_per_call(overlap, seamless):
    # A translucent sheet (alpha 0.5, logit 0) under a mask undecided everywhere: every tile's
    # mask is the constant sigmoid(bias of its call), so any step the result takes comes from
    # the blending. The statistic: the largest step between neighbours across a tile border
    # against the largest step inside tiles. Without overlap (the control) the borders are
    # the only steps.
    biases = torch.tensor([0.0, 1.5, -1.2, 0.8, -0.5, 1.1, -1.4, 0.3, 1.9, -0.9] * 8)
    oracle = ResolutionLimitedOracle(64, bias=lambda call: float(biases[call]))
    image = composite(torch.full((1, 1, 150, 170), 0.5))
    undecided = torch.full((1, 1, 150, 170), 0.5)
    refined = refine_detail(oracle, image, undecided, overlap=overlap, batch_size=1)
    windows = cover_band(torch.ones(150, 170, dtype=torch.bool), (64, 64), overlap)
    border, inside = _border_and_inside_steps(refined[0, 0], windows)
    assert len(windows) == len(oracle.calls) > 4
    if seamless:
        assert border <= inside
    else:
        assert border > 0.05 and inside == 0


def test_blend_weights_sum_to_one_where_neighbours_share_the_ramp():
    ramp = taper(64, 16, False, False)
    assert torch.allclose(ramp[-16:] + ramp[:16], torch.ones(16), atol=1e-6)
    assert ramp.min() > 0 and torch.equal(taper(64, 16, True, True), torch.ones(64))
    weight = window_weight((0, 40, 64, 64), (64, 200), 0.25)
    assert weight[:, 0].max() < 0.01 and torch.equal(weight[0, 20:40], torch.ones(20))


def test_guide_crop_lands_where_it_should():
    oracle = ResolutionLimitedOracle(64)
    alpha = scene_alpha(240, 400, seed=5, center=(0.5, 0.25), size=0.4)
    other = scene_alpha(240, 400, seed=6, center=(0.5, 0.78), size=0.4)
    image = composite(torch.maximum(alpha, other))
    guide = (alpha > 0.5).float()
    region = segment_region(oracle, image, guide)
    top, left, bottom, right, _ = guide_box(guide[0, 0] > 0.5, 0.1)
    crop = predict(oracle, image[..., top:bottom, left:right])
    inside = guide[..., top:bottom, left:right] > 0
    assert torch.equal(region[..., top:bottom, left:right][inside], crop[inside])
    assert region[..., :, 300:].max() == 0                 # the other subject stays out
    plain = predict(oracle, image)
    assert (region - alpha).abs().mean() < (plain - alpha).abs().mean() / 2


def test_guide_at_the_image_border_and_odd_size():
    oracle = ResolutionLimitedOracle(64)
    alpha = scene_alpha(131, 217, seed=2, center=(0.2, 0.05), size=0.5)
    guide = (alpha > 0.5).float()
    assert guide[0, 0, :, 0].any() and guide[0, 0, 0].any()    # it leaves the frame
    region = segment_region(oracle, composite(alpha), guide)
    assert region.shape == (1, 1, 131, 217)
    assert (region - alpha).abs().mean() < (predict(oracle, composite(alpha)) - alpha).abs().mean()


def test_region_composes_with_detail():
    oracle = ResolutionLimitedOracle(64)
    alpha = scene_alpha(240, 400, seed=5, center=(0.5, 0.25), size=0.4)
    other = scene_alpha(240, 400, seed=6, center=(0.5, 0.78), size=0.4)
    image = composite(torch.maximum(alpha, other))
    region = segment_region(oracle, image, (alpha > 0.5).float())
    refined = refine_detail(oracle, image, region)
    assert refined[..., :, 300:].max() == 0
    assert (refined - alpha).abs().mean() < (region - alpha).abs().mean()


def test_batch_rows_are_independent():
    # Three different scenes (different bands, different tile counts) in one batch: each
    # row's tiles and blend must be its own, bit for bit (the oracle is per-pixel, so any
    # difference would come from mixing rows up).
    oracle = ResolutionLimitedOracle(64)
    images = torch.cat([scene(150, 210, seed, center=(0.3 + 0.2 * seed, 0.5))[0]
                        for seed in (0, 1, 2)])
    together = refine_detail(oracle, images, batch_size=3)
    for row in range(3):
        assert torch.equal(together[row:row + 1], refine_detail(oracle, images[row:row + 1]))
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def _tiles_one_by_one(model, image, coarse, band, overlap=0.25):
    """refine_detail's blend written out for one image, one window at a time: each window's
    own prediction (at the plan's network size), weighted by window_weight, normalised, then
    mixed into the coarse mask by band_weight. (1, 1, H, W)."""
    mask = coarse[0, 0]
    height, width = mask.shape
    plan = plan_tiles(band_pixels(mask, band), working_size(model, None), 1.0, overlap, 128)
    assert plan.windows                             # the band needs tiles
    blended, weights = torch.zeros(height, width), torch.zeros(height, width)
    for top, left, h, w in plan.windows:
        tile = predict(model, image[..., top:top + h, left:left + w],
                       resolution=plan.network_size)[0, 0]
        weight = window_weight((top, left, h, w), (height, width), overlap)
        blended[top:top + h, left:left + w] += weight * tile
        weights[top:top + h, left:left + w] += weight
    tiles = blended / weights.clamp(min=1e-12)
    return mask.lerp(tiles, band_weight(mask, band)).clamp(0, 1)[None, None]


def _batching_bound(masks: torch.Tensor) -> float:
    """Masks of the same crops predicted in batches of 4 or alone: float32 reassociation in
    other kernels, within 64 float32 ulps of the logits' scale (reassociation only), and
    sigmoid's slope is at most 1/4."""
    logits = torch.logit(masks.double().clamp(1e-6, 1 - 1e-6))
    return 64 * torch.finfo(torch.float32).eps * float(logits.abs().max()) / 4


@pytest.mark.parametrize("height, width", [(150, 230), (45, 70), (70, 45), (20, 20)])
def test_real_network_tiles_land_where_they_belong(height, width):
    # The real network (PVT-v2-b0, 64 px working size) on tiles: the batched result equals the
    # blend of each window's own prediction. Images smaller than a tile are given to the
    # network at a size it can take (PVT-v2's half-scale stage 1 needs 64 pixels).
    model = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), resolution=64)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height))
    coarse = predict(model, image)
    band = 8
    refined = refine_detail(model, image, coarse, band=band, batch_size=4)
    expected = _tiles_one_by_one(model, image, coarse, band)
    assert refined.shape == (1, 1, height, width)
    assert (refined - expected).abs().max() <= _batching_bound(expected)
    outside = ~band_pixels(coarse[0, 0], band)
    assert torch.equal(refined[0, 0][outside], coarse[0, 0][outside])   # untouched there
    if max(height, width) <= 64:        # one window, the whole image at the working size:
        assert torch.equal(refined, coarse)           # the tile is the coarse pass itself
    else:
        assert (refined - coarse).abs().max() > 100 * _batching_bound(expected)   # tiles acted


def test_bfloat16_model():
    # bfloat16 keeps 8 bits of mantissa: the oracle's alpha from bfloat16 pixels and logits
    # is off by about 1% (2^-7 of normalised values up to ~2.6, over |FG - BG| ~ 1): the
    # coarse band error (~5%) still falls, by less than tenfold.
    oracle = ResolutionLimitedOracle(64).to(torch.bfloat16)
    image, alpha = scene(160, 240, seed=4)
    refined = refine_detail(oracle, image)
    coarse = predict(oracle, image)
    assert refined.dtype == torch.float32 and refined.shape == alpha.shape
    band = band_pixels(coarse[0, 0], 8)
    assert _band_mae(refined, alpha, band) < _band_mae(coarse, alpha, band) / 3


def test_out_of_memory_halves_the_tile_batch(caplog):
    oracle = ResolutionLimitedOracle(64)
    image, _ = scene(200, 260, seed=1)
    coarse = predict(oracle, image)
    wrapped = _RunsOutAboveTwo(oracle)
    refined = refine_detail(wrapped, image, coarse, batch_size=8)
    assert torch.equal(refined, refine_detail(oracle, image, coarse))
    assert wrapped.sizes[:2] == [8, 4] and max(wrapped.sizes[2:]) <= 2
    assert "out of memory" in caplog.text


def test_progress_counts_tiles_and_can_stop():
    oracle = ResolutionLimitedOracle(64)
    image, _ = scene(200, 260, seed=1)
    seen = []
    refine_detail(oracle, image, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    tiles = sum(batch for batch, _, _ in oracle.calls[1:])
    assert seen[0] == (1, 1 + tiles) and seen[-1] == (1 + tiles, 1 + tiles)

    class Stop(Exception):
        pass

    def stop_after_coarse(done, total):
        if done >= 1:
            raise Stop
    counting = ResolutionLimitedOracle(64)
    with pytest.raises(Stop):
        refine_detail(counting, image, batch_size=2, progress=stop_after_coarse)
    assert len(counting.calls) == 1                          # the coarse pass only


def test_max_tiles_lowers_the_scale(caplog):
    oracle = ResolutionLimitedOracle(64)
    image, _ = scene(300, 400, seed=1)
    caplog.set_level(logging.WARNING)
    refine_detail(oracle, image, max_tiles=4, batch_size=16)
    assert sum(batch for batch, _, _ in oracle.calls[1:]) <= 4
    assert "using scale" in caplog.text


def test_bad_input_is_named():
    oracle = ResolutionLimitedOracle(64)
    image, _ = scene(60, 80)
    with pytest.raises(InputError, match="masks are"):
        refine_detail(oracle, image, torch.zeros(1, 1, 60, 81))
    with pytest.raises(InputError, match="overlap"):
        refine_detail(oracle, image, overlap=0.7)
    with pytest.raises(InputError, match="multiple of 32"):
        refine_detail(oracle, image, tile_size=100)
    with pytest.raises(InputError, match="the guide is empty"):
        segment_region(oracle, image, torch.zeros(1, 1, 60, 80))
    with pytest.raises(InputError, match="the guide is empty"):      # before the size check
        segment_region(oracle, image, torch.zeros(1, 1, 64, 64))
    with pytest.raises(InputError, match="guide of image 1 is empty"):
        segment_region(oracle, image.expand(2, -1, -1, -1),
                       torch.stack([torch.ones(1, 60, 80), torch.zeros(1, 60, 80)]))
    with pytest.raises(InputError, match="guide is"):
        segment_region(oracle, image, torch.ones(1, 1, 30, 80))


def test_cli_detail_and_guide(tmp_path):
    from PIL import Image
    from safetensors.torch import save_file

    from birefnet_core.cli import main, open_model
    from tests.synthetic import synthetic_state_dict
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in synthetic_state_dict("pvt_v2_b0").items()},
              str(weights))
    alpha = scene_alpha(72, 110, seed=1, center=(0.5, 0.3), size=0.5)
    rgb = (composite(alpha)[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    guide = torch.zeros(72, 110, dtype=torch.uint8)
    guide[15:60, 10:60] = 255
    Image.fromarray(guide.numpy()).save(tmp_path / "guide.png")
    common = [str(tmp_path / "photo.png"), "--model", str(weights), "--resolution", "64",
              "--device", "cpu", "--dtype", "fp32"]
    assert main([*common, "-o", str(tmp_path / "out"), "--detail", "--guide",
                 str(tmp_path / "guide.png")]) == 0
    with Image.open(tmp_path / "out" / "photo_mask.png") as written:
        mask = torch.from_numpy(np.asarray(written, dtype=np.float32) / 255)
    model = open_model(str(weights), device="cpu", dtype="fp32", announce=False)
    pixels = torch.from_numpy(rgb.astype("float32") / 255).permute(2, 0, 1)[None]
    expected = refine_detail(model, pixels, segment_region(model, pixels, guide[None, None] / 255,
                                                           resolution=64), resolution=64)
    assert (mask - expected[0, 0]).abs().max() <= 0.5 / 255 + 1e-6   # 8-bit rounding only
    assert mask[:, 80:].max() == 0                                    # beyond the grown guide
    small = tmp_path / "small_guide.png"
    Image.fromarray(guide.numpy()[:50]).save(small)
    assert main([*common, "-o", str(tmp_path / "out2"), "--guide", str(small)]) == 1
    assert main([*common, "-o", str(tmp_path / "out3"), "--guide",
                 str(tmp_path / "missing.png")]) == 2
