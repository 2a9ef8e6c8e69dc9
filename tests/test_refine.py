"""birefnet_core.refine_mask: guided filter, grow/shrink, feather and edge band (no ComfyUI)."""
from __future__ import annotations

import pytest
import torch

from birefnet_core.errors import InputError
from birefnet_core.matting.refine import dilate_disk, edge_band, refine_mask


def _disk(size: int, radius: float, center: tuple[int, int] | None = None) -> torch.Tensor:
    cy, cx = center or (size // 2, size // 2)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((y - cy) ** 2 + (x - cx) ** 2) <= radius ** 2).float().view(1, 1, size, size)


def _disk_pixel_count(radius: int) -> int:
    return sum(1 for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if dx * dx + dy * dy <= radius * radius)


def _random(batch: int = 2, height: int = 24, width: int = 31, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, height, width, generator=generator),
            torch.rand(batch, 1, height, width, generator=generator))


def test_all_off_is_identity():
    image, alpha = _random()
    assert torch.equal(refine_mask(image, alpha), alpha)
    assert torch.equal(refine_mask(image, alpha, band=5), alpha)


@pytest.mark.parametrize("radius", [1, 2, 3, 7, 12])
def test_grow_turns_a_pixel_into_a_disk(radius):
    alpha = torch.zeros(1, 1, 41, 41)
    alpha[..., 20, 20] = 1.0
    grown = refine_mask(torch.zeros(1, 3, 41, 41), alpha, grow=radius)
    assert grown.sum().item() == _disk_pixel_count(radius)
    assert torch.equal(grown, _disk(41, radius))


def test_shrink_undoes_grow_on_a_big_disk():
    alpha = _disk(64, 20.0)
    image = torch.zeros(1, 3, 64, 64)
    grown = refine_mask(image, alpha, grow=6)
    assert grown.sum() > alpha.sum()
    assert torch.equal(refine_mask(image, grown, grow=-6), alpha)
    shrunk = refine_mask(image, alpha, grow=-6)
    assert shrunk.sum() < alpha.sum() and (shrunk <= alpha).all()
    assert (refine_mask(image, shrunk, grow=6) <= alpha).all()        # an opening stays inside


def test_dilation_ignores_pixels_outside_the_image():
    alpha = torch.ones(1, 1, 9, 9)
    image = torch.zeros(1, 3, 9, 9)
    assert torch.equal(refine_mask(image, alpha, grow=-3), alpha)    # no erosion from the border
    assert torch.equal(dilate_disk(torch.zeros(1, 1, 5, 5), 3), torch.zeros(1, 1, 5, 5))


def test_feather_keeps_the_mean_and_smooths():
    alpha = _disk(64, 16.0)
    feathered = refine_mask(torch.zeros(1, 3, 64, 64), alpha, feather=2.0)
    assert abs(feathered.mean().item() - alpha.mean().item()) < 0.01 * alpha.mean().item() + 1e-3
    def roughness(x): return (x[..., 1:] - x[..., :-1]).abs().max().item()
    assert roughness(feathered) < 0.5 * roughness(alpha)
    soft = ((feathered > 0.02) & (feathered < 0.98)).sum()
    assert soft > ((alpha > 0.02) & (alpha < 0.98)).sum()


def test_band_limits_changes_to_near_the_edge():
    alpha = _disk(64, 18.0)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    options = dict(grow=5, feather=3.0, guided_radius=4)
    free = refine_mask(image, alpha, **options)
    banded = refine_mask(image, alpha, band=3, **options)
    distance = (torch.cdist(_coordinates(64), _edge_points(alpha)).min(dim=1).values
                .view(1, 1, 64, 64))
    far = distance > 3.0 + 1e-6
    assert (free[far] != alpha[far]).any()               # without a band, far pixels change
    assert torch.equal(banded[far], alpha[far])
    near = ~far
    assert torch.equal(banded[near], free[near])


def test_band_counts_soft_pixels_as_edge():
    alpha = torch.zeros(1, 1, 30, 30)
    alpha[..., 15, 15] = 0.3                             # a lone soft pixel: its own edge
    band = edge_band(alpha, 2)
    assert band[..., 15, 13] and band[..., 13, 15] and not band[..., 15, 12]


def test_guided_filter_pulls_a_misplaced_edge_to_the_image_edge():
    image = torch.zeros(1, 3, 40, 48)
    image[..., :20] = 1.0                                # image edge between x = 19 and 20
    alpha = torch.zeros(1, 1, 40, 48)
    alpha[..., :23] = 1.0                                # mask edge three pixels to the right
    refined = refine_mask(image, alpha, guided_radius=8, guided_eps=1e-3)
    assert abs(_crossing(refined[0, 0, 20]) - 19.5) < abs(_crossing(alpha[0, 0, 20]) - 19.5) - 1


def test_outputs_stay_in_range_and_keep_dtype():
    image, alpha = _random()
    for options in (dict(guided_radius=3, guided_eps=1e-5), dict(grow=2, feather=1.5),
                    dict(grow=-2, band=2)):
        out = refine_mask(image, alpha, **options)
        assert out.shape == alpha.shape and out.dtype == alpha.dtype
        assert out.min() >= 0 and out.max() <= 1


def test_bfloat16_rounds_the_float32_result_and_float64_runs():
    """refine_mask computes in float32 for a bfloat16 alpha, so on the same (already rounded)
    inputs it must return the float32 result rounded to bfloat16: values lie in [0, 1], where
    rounding to nearest moves a number by at most half an ulp of 1, eps / 2, on any device.
    (Against unrounded inputs the guided filter, which divides by a local variance plus
    guided_eps, would measure the inputs' precision instead.)"""
    image, alpha = _random()
    options = dict(guided_radius=3, grow=1, feather=1.0, band=4)
    image, alpha = image.bfloat16(), alpha.bfloat16()
    low = refine_mask(image, alpha, **options)
    assert low.dtype == torch.bfloat16
    same_inputs_float32 = refine_mask(image.float(), alpha.float(), **options)
    assert (low.float() - same_inputs_float32).abs().max() <= torch.finfo(torch.bfloat16).eps / 2
    assert refine_mask(image.double(), alpha.double(), **options).dtype == torch.float64


def test_radius_and_sigma_larger_than_the_image():
    image, alpha = _random(batch=1, height=5, width=6)
    out = refine_mask(image, alpha, guided_radius=64, grow=30, feather=64.0, band=256)
    assert out.shape == alpha.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("image,alpha,options,message", [
    (torch.rand(1, 4, 8, 8), torch.rand(1, 1, 8, 8), {}, "image must have shape"),
    (torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), {}, "alpha must have shape"),
    (torch.rand(1, 3, 8, 8), torch.rand(2, 1, 8, 8), {}, "same batch size"),
    (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 9), {}, "same batch size, height"),
    (torch.rand(1, 3, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.uint8), {}, "float"),
    ("image", torch.rand(1, 1, 8, 8), {}, "torch.Tensor"),
    (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), {"guided_radius": -1}, ">= 0"),
    (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), {"band": -2}, ">= 0"),
    (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), {"grow": 1.5}, "integer"),
    (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), {"guided_eps": 0.0}, "positive"),
    (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), {"feather": -1.0}, "feather"),
])
def test_bad_inputs_raise_input_error(image, alpha, options, message):
    with pytest.raises(InputError, match=message):
        refine_mask(image, alpha, **options)


# -- helpers --------------------------------------------------------------------------------------
def _coordinates(size: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([y.flatten(), x.flatten()], dim=1).float()


def _edge_points(alpha: torch.Tensor) -> torch.Tensor:
    """Pixels of a binary mask with a 4-neighbour of the other value (both sides of the edge)."""
    a = alpha[0, 0]
    edge = torch.zeros_like(a, dtype=torch.bool)
    edge[1:] |= a[1:] != a[:-1]
    edge[:-1] |= a[:-1] != a[1:]
    edge[:, 1:] |= a[:, 1:] != a[:, :-1]
    edge[:, :-1] |= a[:, :-1] != a[:, 1:]
    return edge.nonzero().float()


def _crossing(row: torch.Tensor) -> float:
    """Where a falling row first crosses 0.5, interpolated between pixel centres."""
    index = int((row < 0.5).nonzero()[0])
    before, after = row[index - 1].item(), row[index].item()
    return index - 1 + (before - 0.5) / (before - after)
