"""The BiRefNet paper's evaluation metrics, matching the official evaluator's numbers.

``evaluate_pairs(preds, gts)`` scores a data set of prediction / ground-truth pairs; a
``MetricSuite`` does the same one pair at a time. Every metric is averaged over the images (the
curves point-wise), as the official ``evaluation/metrics.py`` does:

- S-measure (structure; Fan et al. 2017), MAE;
- F-measure with beta^2 = 0.3 at 256 thresholds (max and mean of the mean curve) and at the
  adaptive threshold min(2 * mean, 1); weighted F-measure (Margolin et al. 2014);
- E-measure (enhanced alignment; Fan et al. 2018): max, mean and adaptive;
- relaxed HCE, mBA, boundary IoU (max and mean): see ``metrics_boundary``.

The sums over pixels come from value histograms (``metrics_counts``), the weighted F-measure
from ``metrics_weighted_f``.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from .boundary import boundary_accuracy, boundary_iou_curve, human_correction_effort
from .counts import PairCounts
from .task_pool import run_overlapped
from .weighted_f import weighted_f_measure

Array = np.ndarray

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
    counts = PairCounts(pred8, truth)
    levels = counts.levels
    with np.errstate(divide="ignore", invalid="ignore"):
        f_curve, e_curve = counts.threshold_curves()
        adaptive_f, adaptive_e = counts.adaptive_scores()
        # |normalised prediction - truth| per pixel, looked up by (truth, level)
        error = np.concatenate([levels, 1 - levels])[counts.pair_key]
        return ImageScores(
            s_measure=counts.s_measure(), mae=counts.mae(),
            weighted_f=weighted_f_measure(error, truth), adaptive_f=adaptive_f,
            adaptive_e=adaptive_e, hce=hce, boundary_accuracy=boundary_accuracy(pred8, gt8),
            f_curve=f_curve, e_curve=e_curve,
            biou_curve=boundary_iou_curve(counts.quantized[pred8], truth))


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

    def add_pairs(self, preds: Iterable, gts: Iterable, workers: int | None = None,
                  on_pair: Callable[[], None] | None = None, item: str = "pair") -> None:
        """Score many pairs, on ``workers`` threads (default: one per CPU core, at most 8, or 1
        for pairs under _POOL_PIXELS pixels in all, where a pool costs more than it gains; 1:
        in this thread). Every pair is checked first (errors name the ``item`` by index);
        ``on_pair()`` runs as each pair is done (on a worker thread), and an exception it
        raises stops the scoring. The scores do not depend on the number of workers."""
        preds, gts = list(preds), list(gts)
        if len(preds) != len(gts):
            raise InputError(f"got {len(preds)} predictions but {len(gts)} ground truths")
        checked = []
        for index, (pred, gt) in enumerate(zip(preds, gts)):
            try:
                checked.append(_checked_pair(pred, gt))
            except InputError as error:
                raise InputError(f"{item} {index}: {error}") from None
        if workers is None:
            large = sum(p.size for p, _ in checked) >= _POOL_PIXELS
            workers = min(os.cpu_count() or 1, 8) if large else 1
        if workers <= 1 or len(checked) <= 1:
            for pred8, gt8 in checked:
                self.images.append(_scores(pred8, gt8, _effort(pred8, gt8)))
                if on_pair is not None:
                    on_pair()
            return
        # HCE (the skeleton, the contours) is Python-bound; the rest is mostly numpy kernels
        efforts, rests = run_overlapped(
            len(checked), lambda i: _effort(*checked[i]), lambda i: _scores(*checked[i], 0),
            workers, on_item=None if on_pair is None else lambda _: on_pair())
        self.images.extend(replace(rest, hce=effort) for effort, rest in zip(efforts, rests))

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
    """Score prediction / ground-truth pairs taken as one data set (see the module doc and
    MetricSuite.add_pairs for ``workers``)."""
    suite = MetricSuite()
    suite.add_pairs(preds, gts, workers)
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
