"""The weighted F-measure (Margolin et al., "How to evaluate foreground maps?", 2014) as the
official BiRefNet evaluator computes it: MATLAB's 7x7 Gaussian (sigma 5) with zero padding, the
nearest foreground pixel as scipy's exact distance transform picks it, and the background's
errors weighted by 2 - 0.5^(distance / 5).
"""
from __future__ import annotations

import numpy as np

from .distance_transform import FeatureTransform

Array = np.ndarray

_EPS = np.spacing(1)


def weighted_f_measure(error: Array, truth: Array, beta2: float = 1.0) -> float:
    """Weighted F-measure of the error |prediction - truth| (float64 H x W) against the boolean
    ground truth: errors spread from the nearest foreground pixel, smoothed by a 7x7 Gaussian
    (sigma 5) on the foreground, and weighted up with distance in the background."""
    if not truth.any():
        return 0.0
    transform = FeatureTransform(truth)
    # The smoothed error is only read on the foreground, so only the foreground and the
    # background within the kernel's reach (3 px) of it matter: work in their bounding box.
    ys, xs = np.flatnonzero(truth.any(axis=1)), np.flatnonzero(truth.any(axis=0))
    box = (slice(max(ys[0] - 3, 0), ys[-1] + 4), slice(max(xs[0] - 3, 0), xs[-1] + 4))
    inside = truth[box]
    reach = _grow_square(inside, 3) & ~inside
    spread = error[box].copy()                 # background: the nearest foreground's error
    reach_y, reach_x = np.nonzero(reach)
    near_y, near_x = transform.nearest(reach_y + box[0].start, reach_x + box[1].start)
    spread[reach] = error[near_y, near_x]
    smoothed = _gaussian_7x7(spread)
    least = error[box][inside]
    fg_smoothed = smoothed[inside]
    weighted_fg = np.where(fg_smoothed < least, fg_smoothed, least)
    # background: error times 2 - 0.5^(distance / 5), summed per squared distance first
    # (features lie at distance 0, background pixels never: drop bin 0 instead of zeroing)
    per_distance = np.bincount(transform.squared_distance().reshape(-1), error.reshape(-1))
    per_distance[0] = 0.0
    present = np.flatnonzero(per_distance)
    importance = 2 - np.exp(np.log(0.5) / 5 * np.sqrt(present.astype(np.float64)))
    false_pos = per_distance[present] @ importance
    true_pos = np.count_nonzero(truth) - np.sum(weighted_fg)
    recall = 1 - np.mean(weighted_fg)
    precision = true_pos / (true_pos + false_pos + _EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + _EPS))


def _grow_square(mask: Array, radius: int) -> Array:
    """Dilation by a (2r+1)^2 square (outside = background)."""
    grown = mask.copy()
    for k in range(1, radius + 1):
        grown[:, k:] |= mask[:, :-k]
        grown[:, :-k] |= mask[:, k:]
    rows = grown.copy()
    for k in range(1, radius + 1):
        grown[k:] |= rows[:-k]
        grown[:-k] |= rows[k:]
    return grown


def _gaussian_7x7(image: Array, strip: int = 32) -> Array:
    """MATLAB's fspecial('gaussian', 7, 5) applied with zero padding (separably), a strip of
    ``strip`` rows at a time so that the passes stay in cache."""
    taps = np.exp(-np.arange(-3, 4) ** 2 / 50.0)
    taps /= taps.sum()
    h, w = image.shape
    padded = np.pad(image, 3)
    out = np.empty((h, w))
    for top in range(0, h, strip):
        bottom = min(top + strip, h)
        rows = _filter_rows(padded[top:bottom + 6], taps, w)
        _filter_columns(rows, taps, out[top:bottom])
    return out


def _filter_rows(padded: Array, taps: Array, w: int) -> Array:
    rows = padded[:, 3:3 + w] * taps[3]
    pair = np.empty_like(rows)
    for k in range(3):                                   # symmetric taps: add mirrored pairs
        np.add(padded[:, k:k + w], padded[:, 6 - k:6 - k + w], out=pair)
        pair *= taps[k]
        rows += pair
    return rows


def _filter_columns(rows: Array, taps: Array, out: Array) -> None:
    h = out.shape[0]
    np.multiply(rows[3:3 + h], taps[3], out=out)
    pair = np.empty_like(out)
    for k in range(3):
        np.add(rows[k:k + h], rows[6 - k:6 - k + h], out=pair)
        pair *= taps[k]
        out += pair
