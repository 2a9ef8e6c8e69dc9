"""The metrics that are sums over pixels, read off a histogram instead of float images.

A prediction is uint8, so after the official preparation (scale to [0, 1], min-max normalise) it
takes at most 256 values, and each is computed here with the official operations, value for
value. MAE, the S-measure (the means and deviations of its object and region terms), the F- and
E-measure curves and the adaptive scores are sums over pixels of functions of (prediction level,
ground truth), so one bincount of those pairs, per quadrant of the S-measure's split, holds all
they need: no float image, one pass over 2 bytes per pixel.

The sums come out in a different order than the official per-pixel sums (differences of a few
ulps). Where the official code branches on an exact value, the branch is taken from exact
integer counts, or (a constant block in the SSIM term, a level on the adaptive threshold) the
official per-pixel computation is done instead.
"""
from __future__ import annotations

import math

import numpy as np

Array = np.ndarray

F_BETA2 = 0.3
EPS = np.spacing(1)


def normalised_levels(pred8: Array) -> Array:
    """(256,) float64: the official normalised value of every uint8 level of this prediction."""
    levels = np.arange(256, dtype=np.float64) / 255
    low, high = pred8.min() / 255, pred8.max() / 255
    if high != low:
        levels -= low
        levels /= high - low
    return levels


class PairCounts:
    """counts[block, truth, level] of a uint8 prediction and its boolean ground truth; the
    blocks are the S-measure's quadrants, split at the ground truth's centroid (one block, the
    whole image, when the ground truth is empty or full)."""

    def __init__(self, pred8: Array, truth: Array) -> None:
        self.pred8, self.truth = pred8, truth
        self.levels = normalised_levels(pred8)
        self.quantized = quantized_levels(self.levels)      # the requantised value per level
        h, w = truth.shape
        self.size = truth.size
        self.truth_size = int(np.count_nonzero(truth))
        key = np.left_shift(truth.view(np.uint8), 8, dtype=np.uint16)
        key |= pred8
        self.pair_key = key                         # 256 * truth + level, per pixel
        self.split = None
        if 0 < self.truth_size < self.size:
            y, x = (int(np.round(_mean_position(np.count_nonzero(truth, axis=axis)))) + 1
                    for axis in (1, 0))
            self.split = (y, x)
            key = key.copy()
            key[y:] += 1024                        # block = 2 * (row >= y) + (col >= x)
            key[:, x:] += 512
        blocks = 4 if self.split else 1
        counts = np.bincount(key.reshape(-1), minlength=512 * blocks)
        self.blocks = counts.reshape(blocks, 2, 256)
        self.total = self.blocks.sum(axis=0)        # (2, 256)

    def soft_image(self) -> Array:
        """The normalised prediction as a float image (for the rare exact fallbacks)."""
        return self.levels[self.pred8]

    def mae(self) -> float:
        background, foreground = self.total
        levels = self.levels
        return float((background @ levels + foreground @ (1 - levels)) / self.size)

    def threshold_curves(self) -> tuple[Array, Array]:
        """F- and E-measure at the thresholds 255, ..., 0 of the requantised prediction."""
        per_threshold = [np.bincount(self.quantized, weights=row, minlength=256).astype(np.int64)
                         for row in self.total]
        true_pos = np.cumsum(per_threshold[1][::-1])
        false_pos = np.cumsum(per_threshold[0][::-1])
        predicted = true_pos + false_pos
        precision = true_pos / np.where(predicted == 0, 1, predicted)
        recall = true_pos / max(self.truth_size, 1)
        numerator = (1 + F_BETA2) * precision * recall
        f_curve = numerator / np.where(numerator == 0, 1, F_BETA2 * precision + recall)
        return f_curve, e_measure(true_pos, false_pos, self.truth_size, self.size)

    def adaptive_scores(self) -> tuple[float, float]:
        """F- and E-measure of the prediction binarised at min(2 * mean, 1)."""
        background, foreground = self.total
        levels = self.levels
        mean = (background + foreground) @ levels / self.size
        threshold = min(2 * mean, 1)
        present = (background + foreground) > 0
        if np.any(present & np.isclose(levels, threshold, rtol=1e-12, atol=0)):
            threshold = min(2 * self.soft_image().mean(), 1)       # the official sum, exactly
        above = levels >= threshold
        true_pos = int(foreground[above].sum())
        predicted = true_pos + int(background[above].sum())
        e_score = float(e_measure(np.array([true_pos]), np.array([predicted - true_pos]),
                                  self.truth_size, self.size)[0])
        if true_pos == 0:
            return 0.0, e_score
        precision, recall = true_pos / predicted, true_pos / self.truth_size
        return (1 + F_BETA2) * precision * recall / (F_BETA2 * precision + recall), e_score

    def s_measure(self, alpha: float = 0.5) -> float:
        """Structure measure: object-aware and region-aware similarity, weighted by ``alpha``."""
        background, foreground = self.total
        levels = self.levels
        if self.split is None:
            mean = (background + foreground) @ levels / self.size
            return float(1 - mean) if self.truth_size == 0 else float(mean)
        share = self.truth_size / self.size
        object_score = share * _object_similarity(foreground, levels) + \
            (1 - share) * _object_similarity(background, 1 - levels)
        score = alpha * object_score + (1 - alpha) * self._region_similarity()
        return float(max(0.0, score))

    def _region_similarity(self) -> float:
        """SSIM of the four blocks, weighted by area."""
        h, w = self.truth.shape
        y, x = self.split
        area = h * w
        w1, w2, w3 = x * y / area, y * (w - x) / area, (h - y) * x / area
        weights = (w1, w2, w3, 1 - w1 - w2 - w3)
        slices = ((slice(0, y), slice(0, x)), (slice(0, y), slice(x, w)),
                  (slice(y, h), slice(0, x)), (slice(y, h), slice(x, w)))
        total = 0.0
        for weight, counts, block in zip(weights, self.blocks, slices):
            if np.count_nonzero(counts.sum(axis=0)) == 1:     # constant: the official way
                soft = self.levels[self.pred8[block]]
                total += weight * ssim_pixels(soft, self.truth[block].astype(np.float64))
            else:
                total += weight * _ssim_counts(counts, self.levels)
        return total


def quantized_levels(levels: Array) -> Array:
    """The official requantisation (soft * 255 -> uint8) of every level."""
    return (levels * 255).astype(np.uint8)


def e_measure(true_pos: Array, false_pos: Array, truth_size: int, size: int) -> Array:
    """E-measure of binary predictions from their confusion counts (any number at once)."""
    predicted = true_pos + false_pos
    if truth_size == 0:
        enhanced = (size - predicted).astype(np.float64)
    elif truth_size == size:
        enhanced = predicted.astype(np.float64)
    else:
        false_neg = truth_size - true_pos
        true_neg = size - predicted - false_neg
        pred_mean, truth_mean = predicted / size, truth_size / size
        enhanced = np.zeros(len(true_pos))
        for part, pred_value, truth_value in ((true_pos, 1, 1), (false_pos, 1, 0),
                                              (false_neg, 0, 1), (true_neg, 0, 0)):
            a, b = pred_value - pred_mean, truth_value - truth_mean
            align = 2 * (a * b) / (a ** 2 + b ** 2 + EPS)
            enhanced = enhanced + (align + 1) ** 2 / 4 * part
    return enhanced / (size - 1 + EPS)


def _object_similarity(counts: Array, values: Array) -> float:
    """2 mean / (mean^2 + 1 + std + eps) of the pixels, given as counts per value."""
    count = int(counts.sum())
    mean = counts @ values / count
    spread = math.sqrt(counts @ (values - mean) ** 2 / (count - 1)) if count > 1 else math.nan
    return 2 * mean / (mean ** 2 + 1 + spread + EPS)


def _ssim_counts(counts: Array, levels: Array) -> float:
    """The official block SSIM from counts[truth, level] (a non-constant prediction)."""
    background, foreground = counts
    both = background + foreground
    count, ones = both.sum(), foreground.sum()     # numpy integers: an empty block gives NaN
    x, y = both @ levels / count, ones / count
    dx = levels - x
    sigma_x = both @ dx ** 2 / (count - 1)
    sigma_y = (ones * (1 - y) ** 2 + (count - ones) * y ** 2) / (count - 1)
    sigma_xy = (foreground @ dx * (1 - y) - background @ dx * y) / (count - 1)
    return _ssim_score(x, y, sigma_x, sigma_y, sigma_xy)


def ssim_pixels(pred: Array, gt: Array) -> float:
    """The official block SSIM, pixel by pixel."""
    count = pred.size
    x, y = np.mean(pred), np.mean(gt)
    dx, dy = pred - x, gt - y
    sigma_x = np.sum(dx ** 2) / (count - 1)
    sigma_y = np.sum(dy ** 2) / (count - 1)
    sigma_xy = np.sum(dx * dy) / (count - 1)
    return _ssim_score(x, y, sigma_x, sigma_y, sigma_xy)


def _ssim_score(x: float, y: float, sigma_x: float, sigma_y: float, sigma_xy: float) -> float:
    alpha = 4 * x * y * sigma_xy
    beta = (x ** 2 + y ** 2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _mean_position(counts: Array) -> float:
    """Mean index of the pixels from per-row (or per-column) counts; the integer sum is exact,
    so this equals the mean of the pixels' coordinates."""
    return int(counts @ np.arange(len(counts))) / int(counts.sum())
