"""Mask refinement: snap a soft mask to the image's edges, grow or shrink it, feather it, and
limit every change to a band around the original edge.

Everything is plain torch plus kornia's filters, so it runs on any device and dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from .foreground import check_image_alpha

__all__ = ["refine_mask", "dilate_disk"]

SOFT_LOW, SOFT_HIGH = 0.02, 0.98


def refine_mask(image: torch.Tensor, alpha: torch.Tensor, *, guided_radius: int = 0,
                guided_eps: float = 1e-3, grow: int = 0, feather: float = 0.0,
                band: int = 0) -> torch.Tensor:
    """Refine a soft mask; (B, 3, H, W) image and (B, 1, H, W) alpha in [0, 1] -> (B, 1, H, W).

    In order: a guided filter of alpha with the image as guide (window 2 * guided_radius + 1;
    0 = off; guided_eps: smaller follows the image's edges more closely), growing (grow > 0) or
    shrinking (grow < 0) by |grow| pixels with a round structuring element, a Gaussian feather
    (sigma in pixels; 0 = off). With band > 0, only pixels within band pixels of the original
    mask's edge may change. The result is clamped to [0, 1] and has alpha's dtype and device.
    """
    _check_inputs(image, alpha, guided_radius, guided_eps, grow, feather, band)
    work = torch.float64 if alpha.dtype == torch.float64 else torch.float32
    original = alpha.to(work)
    out = original
    if guided_radius > 0:
        out = _guided(image.to(work), out, guided_radius, guided_eps).clamp(0.0, 1.0)
    if grow > 0:
        out = dilate_disk(out, grow)
    elif grow < 0:
        out = 1.0 - dilate_disk(1.0 - out, -grow)
    if feather > 0:
        out = _feather(out, feather)
    if band > 0:
        out = torch.where(edge_band(original, band), out, original)
    return out.clamp(0.0, 1.0).to(alpha.dtype)


def dilate_disk(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation (max filter) of (B, C, H, W) values >= 0 with the disk
    dx^2 + dy^2 <= radius^2; pixels outside the image do not count.

    Exact for the disk and O(radius) passes over the image: the row maxima of growing width are
    built one step at a time and each is used for the rows of the disk that have that width.
    """
    if radius <= 0:
        return x
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius))          # zeros: never above x >= 0
    widths = [math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)]
    rows = padded[..., radius:radius + width]                     # half-width 0
    out = None
    for half in range(radius + 1):
        if half > 0:
            left = padded[..., radius - half:radius - half + width]
            right = padded[..., radius + half:radius + half + width]
            rows = torch.maximum(rows, torch.maximum(left, right))
        for index, w in enumerate(widths):
            if w == half:                                          # dy = index - radius
                shifted = rows[..., index:index + height, :]
                out = shifted if out is None else torch.maximum(out, shifted)
    return out


def edge_band(alpha: torch.Tensor, band: int) -> torch.Tensor:
    """Pixels within band pixels of alpha's edge: its soft pixels and the pixels where the
    mask thresholded at 0.5 changes. (B, 1, H, W) bool."""
    soft = (alpha > SOFT_LOW) & (alpha < SOFT_HIGH)
    hard = (alpha >= 0.5).to(alpha.dtype)
    inside_edge = (1.0 - dilate_disk(1.0 - hard, 1)) < hard        # foreground next to background
    outside_edge = dilate_disk(hard, 1) > hard                     # background next to foreground
    edge = (soft | inside_edge | outside_edge).to(alpha.dtype)
    return dilate_disk(edge, band) > 0


def _guided(image: torch.Tensor, alpha: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    # kornia pads by reflection, which needs the window's half-size below the image size.
    radius = min(radius, min(alpha.shape[-2:]) - 1)
    if radius < 1:
        return alpha
    from kornia.filters import guided_blur  # only edge refinement needs kornia
    return guided_blur(image, alpha, 2 * radius + 1, eps)


def _feather(alpha: torch.Tensor, sigma: float) -> torch.Tensor:
    size = 2 * math.ceil(3.0 * sigma) + 1
    height, width = alpha.shape[-2:]
    # Capped at twice the image: a wider kernel would only see more copies of the border.
    kernel = (min(size, 2 * height + 1), min(size, 2 * width + 1))
    from kornia.filters import gaussian_blur2d
    return gaussian_blur2d(alpha, kernel, (float(sigma), float(sigma)), border_type="replicate")


def _check_inputs(image: torch.Tensor, alpha: torch.Tensor, guided_radius: int,
                  guided_eps: float, grow: int, feather: float, band: int) -> None:
    check_image_alpha(image, alpha)
    for name, value in (("guided_radius", guided_radius), ("grow", grow), ("band", band)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name} must be an integer number of pixels, got {value!r}")
    if guided_radius < 0 or band < 0:
        raise InputError(f"guided_radius and band must be >= 0, got {guided_radius} and {band}")
    if not (guided_eps > 0 and math.isfinite(guided_eps)):
        raise InputError(f"guided_eps must be a positive number, got {guided_eps!r}")
    if not (feather >= 0 and math.isfinite(feather)):
        raise InputError(f"feather must be a sigma in pixels >= 0, got {feather!r}")
