"""The BiRefNet paper's evaluation metrics, matching the official evaluator's numbers.

``evaluate_pairs(preds, gts)`` scores a data set of prediction / ground-truth pairs; a
``MetricSuite`` does the same one pair at a time. Every metric is averaged over the images (the
curves point-wise), as the official ``evaluation/metrics.py`` does:

- S-measure (structure; Fan et al. 2017), MAE;
- F-measure with beta^2 = 0.3 at 256 thresholds (max and mean of the mean curve) and at the
  adaptive threshold min(2 * mean, 1); weighted F-measure (Margolin et al. 2014);
- E-measure (enhanced alignment; Fan et al. 2018): max, mean and adaptive;
- relaxed HCE, mBA, boundary IoU (max and mean): see ``metrics_boundary``.

Conventions (the official ones): images are uint8 H x W; the ground truth is foreground where
above 128; the prediction is scaled to [0, 1] and min-max normalised per image (HCE and mBA
binarise the raw prediction at 128 instead). Float inputs in [0, 1] are first quantised the way
BiRefNet saves its predictions, floor(255 * x); boolean ground truths become 0 / 255. A
prediction and its ground truth must have the same size (the official script resizes the
prediction; here a mismatch is an error).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from .distance_transform import FeatureTransform
from .errors import InputError
from .metrics_boundary import boundary_accuracy, boundary_iou_curve, human_correction_effort
from .task_pool import run_overlapped

Array = np.ndarray

F_BETA2 = 0.3
_EPS = np.spacing(1)
TABLE_COLUMNS = ("maxFm", "wFmeasure", "MAE", "Smeasure", "meanEm", "HCE", "maxEm", "meanFm",
                 "adpEm", "adpFm", "mBA", "maxBIoU", "meanBIoU")
CURVES = ("Fm_curve", "Em_curve", "BIoU_curve")
_POOL_PIXELS = 2 ** 20


@dataclass(frozen=True)
class ImageScores:
    """Every metric of one prediction / ground-truth pair (curves: thresholds 255 down to 0)."""

    s_measure: float
    mae: float
    weighted_f: float
    adaptive_f: float
    adaptive_e: float
    hce: int
    boundary_accuracy: float
    f_curve: Array
    e_curve: Array
    biou_curve: Array


# ------------------------------------------------------------------------------ inputs

def as_uint8(image, name: str = "image") -> Array:
    """A 2-D (or H x W x 1) uint8, bool, integer 0-255 or float [0, 1] array -> uint8 H x W."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or array.size == 0:
        raise InputError(f"{name} must be a non-empty H x W array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise InputError(f"{name}: integer images must hold 0-255, got values "
                             f"{array.min()}..{array.max()}")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{name} contains NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise InputError(f"{name}: float images must lie in [0, 1], got values "
                             f"{array.min():.4g}..{array.max():.4g}")
        return (array * array.dtype.type(255)).astype(np.uint8)
    raise InputError(f"{name} has unsupported dtype {array.dtype}")


def _normalised(pred: Array) -> Array:
    """The official preparation: scale to [0, 1], then min-max normalise if not constant."""
    scaled = pred / 255
    low, high = pred.min() / 255, pred.max() / 255       # = scaled's (division is monotonic)
    if high != low:
        scaled -= low                                     # in place: the same values
        scaled /= high - low
    return scaled


# ------------------------------------------------------------------------------ one image

def score_image(pred, gt, gt_skeleton: Array | None = None) -> ImageScores:
    """All metrics of one pair (``gt_skeleton``: a precomputed skeleton of gt > 128)."""
    pred8, gt8 = _checked_pair(pred, gt)
    return _scores(pred8, gt8, _effort(pred8, gt8, gt_skeleton))


def _checked_pair(pred, gt) -> tuple[Array, Array]:
    pred8, gt8 = as_uint8(pred, "prediction"), as_uint8(gt, "ground truth")
    if pred8.shape != gt8.shape:
        raise InputError(f"the prediction is {pred8.shape[1]}x{pred8.shape[0]} but the ground "
                         f"truth is {gt8.shape[1]}x{gt8.shape[0]} (width x height)")
    return pred8, gt8


def _effort(pred8: Array, gt8: Array, gt_skeleton: Array | None = None) -> int:
    with np.errstate(divide="ignore", invalid="ignore"):
        return human_correction_effort(pred8, gt8, gt_skeleton)


def _scores(pred8: Array, gt8: Array, hce: int) -> ImageScores:
    """Every metric but HCE (given) of a checked uint8 pair."""
    truth = gt8 > 128
    soft = _normalised(pred8)
    quantized = (soft * 255).astype(np.uint8)
    f_curve, e_curve = threshold_curves(quantized, truth)
    adaptive_f, adaptive_e = adaptive_scores(soft, truth)
    error = soft - truth
    np.abs(error, out=error)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ImageScores(
            s_measure=s_measure(soft, truth), mae=float(np.mean(error)),
            weighted_f=weighted_f_measure(soft, truth, error=error), adaptive_f=adaptive_f,
            adaptive_e=adaptive_e, hce=hce, boundary_accuracy=boundary_accuracy(pred8, gt8),
            f_curve=f_curve, e_curve=e_curve, biou_curve=boundary_iou_curve(quantized, truth))


def threshold_curves(quantized: Array, truth: Array) -> tuple[Array, Array]:
    """F-measure and E-measure at the thresholds 255, 254, ..., 0 of the quantised prediction."""
    key = truth.view(np.uint8).astype(np.uint16) << 8          # 256 * truth + quantized
    key |= quantized
    counts = np.bincount(key.reshape(-1), minlength=512)
    true_pos = np.cumsum(counts[256:][::-1])
    false_pos = np.cumsum(counts[:256][::-1])
    truth_size = int(np.count_nonzero(truth))
    predicted = true_pos + false_pos
    precision = true_pos / np.where(predicted == 0, 1, predicted)
    recall = true_pos / max(truth_size, 1)
    numerator = (1 + F_BETA2) * precision * recall
    f_curve = numerator / np.where(numerator == 0, 1, F_BETA2 * precision + recall)
    return f_curve, _e_measure(true_pos, false_pos, truth_size, truth.size)


def adaptive_scores(soft: Array, truth: Array) -> tuple[float, float]:
    """F-measure and E-measure of the prediction binarised at min(2 * mean, 1)."""
    binary = soft >= min(2 * soft.mean(), 1)
    true_pos = int(np.count_nonzero(binary & truth))
    predicted = int(np.count_nonzero(binary))
    truth_size = int(np.count_nonzero(truth))
    e_measure = float(_e_measure(np.array([true_pos]), np.array([predicted - true_pos]),
                                 truth_size, truth.size)[0])
    if true_pos == 0:
        return 0.0, e_measure
    precision, recall = true_pos / predicted, true_pos / truth_size
    return (1 + F_BETA2) * precision * recall / (F_BETA2 * precision + recall), e_measure


def _e_measure(true_pos: Array, false_pos: Array, truth_size: int, size: int) -> Array:
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
            align = 2 * (a * b) / (a ** 2 + b ** 2 + _EPS)
            enhanced = enhanced + (align + 1) ** 2 / 4 * part
    return enhanced / (size - 1 + _EPS)


def s_measure(soft: Array, truth: Array, alpha: float = 0.5) -> float:
    """Structure measure: object-aware and region-aware similarity, weighted by ``alpha``."""
    share = np.count_nonzero(truth) / truth.size          # = truth.mean(), exactly
    if share == 0:
        return float(1 - soft.mean())
    if share == 1:
        return float(soft.mean())
    inside, outside = soft[truth], soft[~truth]
    np.subtract(1, outside, out=outside)
    object_score = share * _object_similarity(inside) + (1 - share) * \
        _object_similarity(outside)
    score = alpha * object_score + (1 - alpha) * _region_similarity(soft, truth)
    return float(max(0.0, score))


def _object_similarity(values: Array) -> float:
    mean = np.mean(values)
    spread = np.std(values, ddof=1) if values.size > 1 else math.nan    # as numpy: NaN
    return 2 * mean / (mean ** 2 + 1 + spread + _EPS)


def _region_similarity(soft: Array, truth: Array) -> float:
    """SSIM of the four blocks split at the ground truth's centroid, weighted by area."""
    h, w = truth.shape
    y, x = (int(np.round(_mean_position(np.count_nonzero(truth, axis=axis)))) + 1
            for axis in (1, 0))
    area = h * w
    w1, w2, w3 = x * y / area, y * (w - x) / area, (h - y) * x / area
    blocks = ((slice(0, y), slice(0, x)), (slice(0, y), slice(x, w)),
              (slice(y, h), slice(0, x)), (slice(y, h), slice(x, w)))
    weights = (w1, w2, w3, 1 - w1 - w2 - w3)
    return sum(weight * _ssim(soft[block], truth[block].astype(np.float64))
               for weight, block in zip(weights, blocks))


def _mean_position(counts: Array) -> float:
    """Mean index of the pixels from per-row (or per-column) counts; the integer sum is exact,
    so this equals the mean of the pixels' coordinates."""
    return int(counts @ np.arange(len(counts))) / int(counts.sum())


def _ssim(pred: Array, gt: Array) -> float:
    count = pred.size
    x, y = np.mean(pred), np.mean(gt)
    dx, dy = pred - x, gt - y                   # each deviation computed once (same values)
    sigma_x = np.sum(dx ** 2) / (count - 1)
    sigma_y = np.sum(dy ** 2) / (count - 1)
    sigma_xy = np.sum(dx * dy) / (count - 1)
    alpha = 4 * x * y * sigma_xy
    beta = (x ** 2 + y ** 2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + _EPS)
    return 1.0 if beta == 0 else 0.0


def weighted_f_measure(soft: Array, truth: Array, beta2: float = 1.0,
                       error: Array | None = None) -> float:
    """Weighted F-measure: errors spread from the nearest foreground pixel, smoothed by a 7x7
    Gaussian (sigma 5) on the foreground, and weighted up with distance in the background.
    ``error``: |soft - truth| when already computed."""
    if not truth.any():
        return 0.0
    if error is None:
        error = np.abs(soft - truth)
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


# ------------------------------------------------------------------------------ data sets

class MetricSuite:
    """Accumulates pairs and reports the data-set metrics the way the paper does."""

    def __init__(self) -> None:
        self.images: list[ImageScores] = []

    def __len__(self) -> int:
        return len(self.images)

    def add(self, pred, gt, gt_skeleton: Array | None = None) -> ImageScores:
        scores = score_image(pred, gt, gt_skeleton)
        self.images.append(scores)
        return scores

    def results(self) -> dict[str, float | list[float]]:
        """TABLE_COLUMNS (means over the images) plus the mean curves CURVES."""
        if not self.images:
            raise InputError("no image pairs were evaluated")

        def mean(field: str) -> Array:
            return np.mean(np.array([getattr(s, field) for s in self.images], np.float64), axis=0)

        f_curve, e_curve, biou = mean("f_curve"), mean("e_curve"), mean("biou_curve")
        scores = {
            "maxFm": f_curve.max(), "wFmeasure": mean("weighted_f"), "MAE": mean("mae"),
            "Smeasure": mean("s_measure"), "meanEm": e_curve.mean(), "HCE": mean("hce"),
            "maxEm": e_curve.max(), "meanFm": f_curve.mean(), "adpEm": mean("adaptive_e"),
            "adpFm": mean("adaptive_f"), "mBA": mean("boundary_accuracy"),
            "maxBIoU": biou.max(), "meanBIoU": biou.mean()}
        out: dict[str, float | list[float]] = {k: float(v) for k, v in scores.items()}
        out.update(Fm_curve=f_curve.tolist(), Em_curve=e_curve.tolist(), BIoU_curve=biou.tolist())
        return out


def evaluate_pairs(preds: Iterable, gts: Iterable,
                   workers: int | None = None) -> dict[str, float | list[float]]:
    """Score prediction / ground-truth pairs taken as one data set (see the module doc), on
    ``workers`` threads (default: one per CPU core, at most 8, or 1 for data sets under
    _POOL_PIXELS pixels in all, where a pool costs more than it gains; 1: in this thread).
    The results do not depend on the number of workers."""
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise InputError(f"got {len(preds)} predictions but {len(gts)} ground truths")
    checked = []
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        try:
            checked.append(_checked_pair(pred, gt))
        except InputError as error:
            raise InputError(f"pair {index}: {error}") from None
    if workers is None:
        large = sum(p.size for p, _ in checked) >= _POOL_PIXELS
        workers = min(os.cpu_count() or 1, 8) if large else 1
    suite = MetricSuite()
    if workers <= 1 or len(checked) <= 1:
        suite.images.extend(_scores(p, g, _effort(p, g)) for p, g in checked)
    else:
        # HCE (the skeleton, the contours) is Python-bound; the rest is mostly numpy kernels
        efforts, rests = run_overlapped(len(checked), lambda i: _effort(*checked[i]),
                                        lambda i: _scores(*checked[i], 0), workers)
        suite.images.extend(replace(rest, hce=effort) for effort, rest in zip(efforts, rests))
    return suite.results()


def format_table(results: dict) -> str:
    """The paper's columns, rounded as the official script rounds them (HCE to an integer)."""
    cells = [str(round(results[c])) if c == "HCE" else _three_places(results[c])
             for c in TABLE_COLUMNS]
    widths = [max(len(c), len(v)) for c, v in zip(TABLE_COLUMNS, cells)]
    header = "  ".join(c.rjust(n) for c, n in zip(TABLE_COLUMNS, widths))
    values = "  ".join(v.rjust(n) for v, n in zip(cells, widths))
    return f"{header}\n{values}"


def _three_places(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"
