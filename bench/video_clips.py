"""Synthetic clips for the video benchmark and tests: a static scene with a static subject and a
shape moving at a fixed speed, per-frame sensor noise, and the ground-truth masks.

A stand-in predictor turns ground truth into per-frame masks with the kind of flicker a
segmentation network shows (spatially correlated logit noise, strongest at soft edges), so
flicker and edge lag can be measured against known edges without real weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Clip:
    frames: torch.Tensor        # (T, 3, H, W) in [0, 1], noisy
    masks: torch.Tensor         # (T, 1, H, W) ground truth, soft 1-px edges
    static: torch.Tensor        # (H, W) bool: pixels the moving shape never comes near
    square_rows: slice          # rows fully inside the moving square
    square_left: torch.Tensor   # (T,) x of the square's left edge (pixel boundary)
    square_size: int


def make_clip(size: int = 256, frames: int = 40, speed: float = 4.0, noise: float = 0.03,
              seed: int = 0) -> Clip:
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                          torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    background = _texture(size, generator)                                 # (3, H, W)
    disc = ((size * 0.25 - torch.hypot(y - size * 0.3, x - size * 0.3)) + 0.5).clamp(0, 1)
    side = size // 5
    top = int(size * 0.6)
    lefts = size * 0.05 + speed * torch.arange(frames, dtype=torch.float32)
    all_frames, all_masks = [], []
    for left in lefts.tolist():
        square = _box_coverage(x, left, left + side) * _box_coverage(y, top, top + side)
        mask = torch.maximum(disc, square)[None]                             # (1, H, W)
        colour = torch.where(square[None] > 0, torch.tensor([0.9, 0.2, 0.2]).view(3, 1, 1),
                             torch.tensor([0.2, 0.3, 0.9]).view(3, 1, 1))
        subject = torch.where(disc[None] >= square[None], torch.tensor([0.2, 0.3, 0.9]).view(
            3, 1, 1), colour)
        image = subject * mask + background * (1 - mask)
        image = image + noise * torch.randn(image.shape, generator=generator)
        all_frames.append(image.clamp(0, 1))
        all_masks.append(mask)
    swept = torch.zeros(size, size, dtype=torch.bool)
    margin = 12
    swept[max(0, top - margin):top + side + margin,
          max(0, int(lefts[0]) - margin):int(lefts[-1]) + side + margin] = True
    return Clip(torch.stack(all_frames), torch.stack(all_masks), ~swept,
                slice(top + 4, top + side - 4), lefts, side)


def _box_coverage(coordinate: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Fraction of each pixel (centre ``coordinate``) inside [low, high]: antialiased edges."""
    return ((coordinate + 0.5).clamp(max=high) - (coordinate - 0.5).clamp(min=low)).clamp(0, 1)


def _texture(size: int, generator: torch.Generator) -> torch.Tensor:
    """(3, size, size) smooth coloured texture in [0.1, 0.9]."""
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    return 0.1 + 0.8 * smooth.clamp(0, 1)


def simulated_masks(clip: Clip, amplitude: float = 2.5, seed: int = 1) -> torch.Tensor:
    """(T, 1, H, W) masks with per-frame flicker: sigmoid(6 (2 gt - 1) + noise), the noise
    Gaussian-blurred (sigma 3 px) white noise of standard deviation ``amplitude``."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(clip.masks.shape, generator=generator)
    kernel = _gaussian_kernel(3.0)
    blurred = F.conv2d(F.pad(noise, (9, 9, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, 9, 9), mode="reflect"), kernel.view(1, 1, -1, 1))
    blurred = blurred * (amplitude / blurred.std())
    return torch.sigmoid(6.0 * (2.0 * clip.masks - 1.0) + blurred)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    offsets = torch.arange(-9, 10, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def static_flicker(masks: torch.Tensor, clip: Clip) -> float:
    """Mean |mask_t - mask_{t-1}| over the static pixels."""
    change = (masks[1:] - masks[:-1]).abs()[:, 0]                          # (T-1, H, W)
    return float(change[:, clip.static].mean())


def edge_lag(masks: torch.Tensor, clip: Clip, skip: int = 3, reach: int = 16) -> dict[str, float]:
    """Signed lag (px behind the true edge, positive = late) of the moving square's leading
    (right) and trailing (left) edges, averaged over the square's rows and the frames after the
    first ``skip``. An edge's position is read from the mask's mass within ``reach`` px of the
    true edge (a step from 1 to 0 at position e covers e - start pixels), so sub-pixel shifts
    count and isolated noise averages out."""
    rows = masks[:, 0, clip.square_rows].double()                          # (T, R, W)
    leading, trailing = [], []
    for t in range(skip, rows.shape[0]):
        left = float(clip.square_left[t])
        right = left + clip.square_size
        start = int(right) - reach
        estimate = start + rows[t, :, start:start + 2 * reach].sum(dim=1).mean()
        leading.append(right - float(estimate))
        start = int(left) - reach
        estimate = start + 2 * reach - rows[t, :, start:start + 2 * reach].sum(dim=1).mean()
        trailing.append(left - float(estimate))
    return {"leading_px": sum(leading) / len(leading), "trailing_px": sum(trailing) / len(trailing)}


