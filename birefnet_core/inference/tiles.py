"""Tiles for ``refine_detail``: the uncertain band around a mask's edge, the windows that cover
it, and the blending weights that join the windows' masks without seams.

Everything here works on one image at a time, on (H, W) maps: the cost in memory is a few
maps of the image's size, never one per tile. Windows are (top, left, height, width) in image
pixels; they lie on a regular grid (the last one of a row or column pushed back inside the
image), and only those that touch the band are kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..matting.box_filter import box_mean, box_sum

SOFT_LOW, SOFT_HIGH = 0.02, 0.98       # a mask value strictly between these is undecided

Window = tuple[int, int, int, int]     # top, left, height, width (image pixels)
# The smallest side a tile is given to the network at: the multi-scale input also runs the
# backbone at half size, and PVT-v2's first spatial reduction (an 8x8 convolution on stride-4
# features) needs 8 features there: 2 x 4 x 8 = 64 pixels.
MIN_NETWORK_SIDE = 64


def uncertain_pixels(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) mask in [0, 1] -> (H, W) bool: its soft pixels and both sides of its 0.5 edge
    (so a binary mask, drawn or thresholded, still has an edge to refine)."""
    soft = (mask > SOFT_LOW) & (mask < SOFT_HIGH)
    hard = (mask >= 0.5).float()[None, None]
    neighbours = box_sum(hard, 3)[0, 0]                       # 0..9 foreground in the 3x3
    count = box_sum(torch.ones_like(hard), 3)[0, 0]
    edge = (neighbours > 0) & (neighbours < count)            # the 3x3 holds both sides
    return soft | edge


def dilate_square(pixels: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) bool -> bool: within ``radius`` pixels (Chebyshev distance) of a True pixel.
    Running sums: the cost does not grow with the radius."""
    if radius <= 0:
        return pixels
    return box_sum(pixels.float()[None, None], 2 * radius + 1)[0, 0] > 0.5


def band_pixels(mask: torch.Tensor, band: int) -> torch.Tensor:
    """(H, W) bool: the pixels ``refine_detail`` may change, within ``band`` of the uncertain
    pixels."""
    return dilate_square(uncertain_pixels(mask), band)


def band_weight(mask: torch.Tensor, band: int) -> torch.Tensor:
    """(H, W) float in [0, 1]: how much of the tiles' mask replaces ``mask``; 0 exactly outside
    ``band_pixels(mask, band)``."""
    return soft_dilation(uncertain_pixels(mask), band)


def soft_dilation(pixels: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) bool -> float in [0, 1]: 1 near the True pixels, falling linearly to 0 over the
    outer third of ``radius``, and exactly 0 beyond ``radius`` (Chebyshev distance): the blur's
    box stops where the dilation does, and sums of 0/1 values are exact in float32."""
    taper = max(1, radius // 3)
    core = dilate_square(pixels, max(0, radius - taper))
    return box_mean(core.float()[None, None], 2 * taper + 1)[0, 0]


def grid_starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts 0, stride, 2 stride, ... covering [0, length); the last one moved back so
    the window ends at the edge."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def cover_band(band: torch.Tensor, window: tuple[int, int], overlap: float) -> list[Window]:
    """The grid windows of size ``window`` (clipped to the image) with ``overlap`` of a window
    shared between neighbours, keeping those that hold a band pixel. Every band pixel then
    lies in all the grid windows that contain it, so its blend weights sum to more than 0."""
    height, width = band.shape
    win_h, win_w = min(window[0], height), min(window[1], width)
    stride_h = max(1, round(win_h * (1 - overlap)))
    stride_w = max(1, round(win_w * (1 - overlap)))
    rows_hit = band.any(dim=1)
    windows = []
    for top in grid_starts(height, win_h, stride_h):
        if not rows_hit[top:top + win_h].any():
            continue
        cols_hit = band[top:top + win_h].any(dim=0)
        windows.extend((top, left, win_h, win_w) for left in grid_starts(width, win_w, stride_w)
                       if cols_hit[left:left + win_w].any())
    return windows


@dataclass(frozen=True)
class TilePlan:
    """Where one image's tiles go and at what size the network sees them."""
    windows: list[Window]
    window: tuple[int, int]            # window (height, width) in image pixels
    network_size: tuple[int, int]      # what each window is resized to (multiples of 32)
    scale: float                       # the scale asked for, or lower to fit max_tiles


def plan_tiles(band: torch.Tensor, tile_size: tuple[int, int], scale: float, overlap: float,
               max_tiles: int) -> TilePlan:
    """Windows of ``tile_size / scale`` image pixels covering ``band`` (H, W). When more than
    ``max_tiles`` are needed, the windows grow (the scale falls) until they fit; a window never
    exceeds the image, so one window of the whole image always fits."""
    height, width = band.shape
    while True:
        window = (min(height, max(1, round(tile_size[0] / scale))),
                  min(width, max(1, round(tile_size[1] / scale))))
        windows = cover_band(band, window, overlap)
        if len(windows) <= max_tiles or window == (height, width):
            return TilePlan(windows, window, _network_size(window, tile_size, scale), scale)
        scale *= math.sqrt(max_tiles / len(windows)) * 0.95


def _network_size(window: tuple[int, int], tile_size: tuple[int, int],
                  scale: float) -> tuple[int, int]:
    """tile_size, or for a window cut short by the image, its own size times the scale rounded
    to a multiple of 32 (the network's stride), never below what the network can take."""
    return tuple(tile if round(tile / scale) <= side
                 else max(min(tile, MIN_NETWORK_SIDE), round(side * scale / 32) * 32)
                 for side, tile in zip(window, tile_size))


def taper(length: int, ramp: int, start_at_edge: bool, end_at_edge: bool) -> torch.Tensor:
    """(length,) weights: 1 in the middle, rising over ``ramp`` pixels at a side that faces a
    neighbour (sin^2, sampled at pixel centres, so the two ramps of neighbours that share
    ``ramp`` pixels sum to exactly 1 and no weight is 0); flat at a side on the image's edge."""
    weights = torch.ones(length)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rising = torch.sin(0.5 * math.pi * (torch.arange(ramp) + 0.5) / ramp) ** 2
        if not start_at_edge:
            weights[:ramp] = rising
        if not end_at_edge:
            weights[length - ramp:] = rising.flip(0)
    return weights


def window_weight(window: Window, image_size: tuple[int, int], overlap: float) -> torch.Tensor:
    """(height, width) blend weights of one window: separable tapers over the overlap."""
    top, left, height, width = window
    rows = taper(height, round(height * overlap), top == 0, top + height == image_size[0])
    cols = taper(width, round(width * overlap), left == 0, left + width == image_size[1])
    return rows[:, None] * cols[None, :]
