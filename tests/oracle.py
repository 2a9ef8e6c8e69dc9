"""A resolution-limited oracle and the scenes it sees (shared by tests and bench/bench_detail.py).

The scenes are composited from two known flat colours, image = alpha * FG + (1 - alpha) * BG,
with a solid body, a soft edge, a translucent veil and hair strands 1-2 pixels wide. The oracle
has BiRefNet's call contract (normalised (B, 3, h, w) -> logits (B, 1, h, w)) and recovers
alpha exactly from the pixels it is given: a perfect model that is blind to detail finer than
one of its working pixels, because ``predict`` shrinks the image to its working size first.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from birefnet_core import ModelInfo

FOREGROUND = (0.92, 0.74, 0.35)       # a warm subject
BACKGROUND = (0.12, 0.35, 0.62)       # a cool backdrop
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPS = 1e-6                            # alpha is clipped to [EPS, 1 - EPS] before the logit


class ResolutionLimitedOracle(nn.Module):
    """alpha from colour, exactly, at the resolution it is given. ``bias``: a function of the
    call's index giving a constant added to that call's logits (the seam test), or None."""

    def __init__(self, resolution: int = 64, bias=None) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))         # predict reads device and dtype
        self.info = ModelInfo(variant="oracle", patch_order="current",
                              resolution=(resolution, resolution), mean=MEAN, std=STD,
                              source="<oracle>")
        self.bias, self.calls = bias, []                     # calls: (batch, h, w) per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape[:1]) + tuple(x.shape[-2:]))
        shape = (1, 3, 1, 1)
        rgb = x.float() * torch.tensor(STD, device=x.device).view(shape) \
            + torch.tensor(MEAN, device=x.device).view(shape)
        fg = torch.tensor(FOREGROUND, device=x.device).view(shape)
        bg = torch.tensor(BACKGROUND, device=x.device).view(shape)
        alpha = ((rgb - bg) * (fg - bg)).sum(1, keepdim=True) / ((fg - bg) ** 2).sum()
        logits = torch.logit(alpha.clamp(EPS, 1 - EPS))
        if self.bias is not None:
            logits = logits + self.bias(len(self.calls) - 1)
        return logits.to(x.dtype) + 0 * self.anchor.to(x.dtype)


def composite(alpha: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) alpha -> (B, 3, H, W) image of the two flat colours."""
    fg = torch.tensor(FOREGROUND).view(1, 3, 1, 1)
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    return alpha * fg + (1 - alpha) * bg


def scene_alpha(height: int, width: int, seed: int = 0, strands: int | None = None,
                center: tuple[float, float] = (0.6, 0.5), size: float = 1.0) -> torch.Tensor:
    """(1, 1, H, W) true alpha: an elliptic body (a 3-pixel soft edge) whose right flank is a
    translucent veil fading over 5% of the body's width, with hair strands 1-2 pixels wide
    rising from its top. ``center`` (fractions of H, W) and ``size`` (of the frame) place it."""
    rng = np.random.default_rng(seed)
    radius_y, radius_x = 0.28 * height * size, 0.22 * width * size
    cy, cx = center[0] * height, center[1] * width
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1) - cy
    xs = torch.arange(width, dtype=torch.float32).view(1, -1) - cx
    distance = (torch.sqrt((ys / radius_y) ** 2 + (xs / radius_x) ** 2) - 1) * min(radius_y,
                                                                                  radius_x)
    alpha = (0.5 - distance / 3).clamp_(0, 1)                            # 3-pixel soft edge
    del distance
    veil = ((xs - 0.6 * radius_x) / (0.05 * 2 * radius_x)).clamp(0, 1)   # 0 -> 1 to the right
    alpha.mul_(1 - 0.7 * veil)                                           # down to 0.3
    count = strands if strands is not None else max(12, round(60 * width * size / 1000))
    for _ in range(count):
        _draw_strand(alpha, rng, cy - 0.8 * radius_y, cx, radius_x, radius_y)
    return alpha[None, None]


def _draw_strand(alpha: torch.Tensor, rng, root_y: float, cx: float, radius_x: float,
                 radius_y: float) -> None:
    """One antialiased strand, x(y) = root + slope (y - y0) + a sin(f (y - y0)), max-blended
    into (H, W) alpha over its own bounding box only."""
    height, width = alpha.shape
    root_x = cx + rng.uniform(-0.6, 0.6) * radius_x
    length = rng.uniform(0.3, 0.7) * radius_y
    top, bottom = max(0, int(root_y - length)), min(height, int(root_y + 0.4 * radius_y))
    if bottom <= top:
        return
    thickness = rng.uniform(1.0, 2.0)
    slope, amplitude = rng.uniform(-0.5, 0.5), rng.uniform(2, 0.05 * radius_x + 3)
    frequency = rng.uniform(1, 4) * 2 * math.pi / max(1.0, length)
    rows = torch.arange(top, bottom, dtype=torch.float32).view(-1, 1) - root_y
    centre = root_x + slope * rows + amplitude * torch.sin(frequency * rows)       # (h, 1)
    steep = slope + amplitude * frequency * torch.cos(frequency * rows)
    left = max(0, int(centre.min()) - 4)
    right = min(width, int(centre.max()) + 5)
    if right <= left:
        return
    cols = torch.arange(left, right, dtype=torch.float32).view(1, -1)
    across = (cols - centre).abs() / torch.sqrt(1 + steep ** 2)        # distance to the axis
    strand = (thickness / 2 + 0.5 - across).clamp_(0, 1)
    region = alpha[top:bottom, left:right]
    torch.maximum(region, strand, out=region)


def scene(height: int, width: int, seed: int = 0, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, 3, H, W), alpha (1, 1, H, W)) of one synthetic scene."""
    alpha = scene_alpha(height, width, seed, **options)
    return composite(alpha), alpha


def tile_border_pairs(windows, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which neighbouring-pixel pairs straddle a tile border: ``across`` (H, W-1) marks the pair
    (x, x+1) of a row, ``down`` (H-1, W) the pair (y, y+1) of a column."""
    across = torch.zeros(height, width - 1, dtype=torch.bool)
    down = torch.zeros(height - 1, width, dtype=torch.bool)
    for top, left, h, w in windows:
        for x in (left, left + w):
            if 0 < x < width:
                across[top:top + h, x - 1] = True
        for y in (top, top + h):
            if 0 < y < height:
                down[y - 1, left:left + w] = True
    return across, down
