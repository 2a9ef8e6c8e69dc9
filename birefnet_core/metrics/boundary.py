"""Boundary metrics of the BiRefNet paper: human correction effort, mean boundary accuracy and
boundary IoU, computed as the official evaluator (``evaluation/metrics.py``) computes them.

Inputs are uint8 H x W arrays (0-255). Like the official code, HCE and mBA binarise the raw
prediction at 128; boundary IoU uses the min-max normalised, requantised prediction.
"""
from __future__ import annotations

import math

import numpy as np

from .contours import Borders, polyline_vertex_counts, trace_borders
from .morphology import (
    CROSS,
    dilate_packed,
    ellipse_spans,
    erode_packed,
    erode_square_packed,
    min_filter_square,
    pack_rows,
    read_bits,
    row_mask,
    unpack_rows,
)
from .skeleton import skeletonize

Array = np.ndarray

HCE_RELAX = 5
HCE_EPSILON = 2.0
BIOU_DILATION_RATIO = 0.02


# ------------------------------------------------------------------------------ HCE

def human_correction_effort(pred: Array, gt: Array, gt_skeleton: Array | None = None,
                            relax: int = HCE_RELAX, epsilon: float = HCE_EPSILON) -> int:
    """Relaxed HCE (Qin et al., DIS): the clicks a person needs to fix the prediction.

    False positive and false negative regions are relaxed (thin slivers along correct edges do
    not count, except where they break the ground truth's skeleton); each remaining region
    costs the vertices of its border polygons (Douglas-Peucker, ``epsilon``) where the border
    runs next to the correct area, or one click when it is independent of it.
    """
    truth = gt > 128
    if gt_skeleton is None:
        gt_skeleton = skeletonize(truth)
    width = truth.shape[1]
    valid = row_mask(width)
    truth, positive, skeleton = pack_rows(truth), pack_rows(pred > 128), pack_rows(gt_skeleton)
    hit = truth & positive
    false_pos = positive & ~truth
    false_neg = truth & ~positive
    core = erode_packed(truth | positive, CROSS, valid, relax)
    fp_relaxed = _relaxed(false_pos, core, hit | false_neg, valid, relax)
    fn_relaxed = _relaxed(false_neg, core, hit | false_pos, valid, relax) | (skeleton & ~hit)
    fp_cost = _correction_cost(unpack_rows(fp_relaxed, width),
                               dilate_packed(hit | fn_relaxed, CROSS, valid), epsilon)
    fn_cost = _correction_cost(unpack_rows(fn_relaxed, width),
                               dilate_packed(~(hit | fp_relaxed | fn_relaxed) & valid, CROSS,
                                             valid), epsilon)
    return fp_cost + fn_cost


def _relaxed(errors: Array, core: Array, blocked: Array, valid: Array, relax: int) -> Array:
    """The error pixels that grow back (``relax`` cross steps, never into ``blocked``) from
    the errors left inside the eroded union: errors wider than a sliver (packed rows)."""
    grown = errors & core
    for _ in range(relax):
        grown = dilate_packed(grown, CROSS, valid) & ~blocked
    return errors & grown


def _correction_cost(errors: Array, touching: Array, epsilon: float) -> int:
    """Polygon vertices along the border stretches of ``errors`` that lie on ``touching``
    (packed rows), plus one per error region with no such stretch (one click selects it)."""
    if not errors.any():
        return 0
    borders = trace_borders(errors)
    ys, xs = borders.ys, borders.xs
    flat = ys * errors.shape[1] + xs
    marked = read_bits(touching, ys, xs) & _first_visits(flat)
    offsets, order = _stretches(borders, marked)
    vertices = polyline_vertex_counts(xs[order], ys[order], offsets, epsilon).sum()
    independent = borders.components - len(np.unique(borders.component[
        borders.border_of_point[marked]]))
    if errors.all():                    # the official label table has no background entry
        independent = 0
    return int(vertices) + int(independent)


def _first_visits(flat: Array) -> Array:
    """True at the first occurrence of each value (a border pixel visited twice counts once)."""
    order = np.argsort(flat, kind="stable")
    ranked = flat[order]
    first = np.ones(len(flat), bool)
    first[1:] = ranked[1:] != ranked[:-1]
    out = np.empty(len(flat), bool)
    out[order] = first
    return out


def _stretches(borders: Borders, marked: Array) -> tuple[Array, Array]:
    """Maximal runs of marked points along each border, as polylines: (offsets, point order).

    As in the official code, when a border has several runs and its first run starts next to
    where its last run ends, the first run, reversed, is appended to the last one.
    """
    starts, stops = _marked_runs(borders, marked)
    owner = borders.border_of_point[starts]
    first_of = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])   # each border's runs
    last_of = np.r_[first_of[1:] - 1, len(starts) - 1]
    several = last_of > first_of
    head, tail = first_of[several], last_of[several]
    gap = np.maximum(np.abs(borders.ys[starts[head]] - borders.ys[stops[tail] - 1]),
                     np.abs(borders.xs[starts[head]] - borders.xs[stops[tail] - 1]))
    head, tail = head[gap == 1], tail[gap == 1]
    # pieces (start, length, step): every run but the joined heads, then the heads reversed,
    # each tagged with its polyline (a joined head follows its tail)
    keep = np.ones(len(starts), bool)
    keep[head] = False
    kept = np.flatnonzero(keep)
    piece_start = np.concatenate([starts[kept], stops[head] - 1])
    piece_length = np.concatenate([(stops - starts)[kept], (stops - starts)[head]])
    piece_step = np.concatenate([np.ones(len(kept), np.int64), -np.ones(len(head), np.int64)])
    polyline = np.concatenate([np.arange(len(kept)), np.searchsorted(kept, tail)])
    by_polyline = np.argsort(polyline, kind="stable")
    order = _expand_pieces(piece_start[by_polyline], piece_length[by_polyline],
                           piece_step[by_polyline])
    lengths = np.bincount(polyline, weights=piece_length, minlength=len(kept)).astype(np.int64)
    return np.concatenate([[0], np.cumsum(lengths)]), order


def _marked_runs(borders: Borders, marked: Array) -> tuple[Array, Array]:
    """(start, stop) of every maximal run of marked points within a border."""
    border_start = np.zeros(len(marked), bool)
    border_start[np.cumsum(borders.lengths) - borders.lengths] = True
    border_end = np.roll(border_start, -1)
    previous = np.r_[False, marked[:-1]]
    following = np.r_[marked[1:], False]
    starts = np.flatnonzero(marked & (border_start | ~previous))
    stops = np.flatnonzero(marked & (border_end | ~following)) + 1
    return starts, stops


def _expand_pieces(start: Array, length: Array, step: Array) -> Array:
    """Concatenated index ranges start, start + step, ... (length of each)."""
    opening = np.cumsum(length) - length
    piece = np.repeat(np.arange(len(start)), length)
    return start[piece] + step[piece] * (np.arange(length.sum()) - opening[piece])


# ------------------------------------------------------------------------------ mBA

def boundary_accuracy(pred: Array, gt: Array) -> float:
    """Mean accuracy of the binarised prediction in bands around the ground truth's edge, at
    five radii from 1 to (h + w) / 300 (NaN when the ground truth has no edge)."""
    truth = gt > 128
    h, w = truth.shape
    valid = row_mask(w)
    truth_bits = pack_rows(truth)
    background_bits = ~truth_bits & valid
    agree_bits = ~(truth_bits ^ pack_rows(pred > 128))
    max_radius, steps = (w + h) / 300, 5
    accuracies = []
    for step in range(steps):
        radius = 1 + int((max_radius - 1) / steps * step)
        spans = ellipse_spans(radius)
        band = dilate_packed(truth_bits, spans, valid) & dilate_packed(background_bits, spans,
                                                                       valid)
        size = int(np.bitwise_count(band).sum())
        correct = int(np.bitwise_count(band & agree_bits).sum())
        accuracies.append(correct / size if size else math.nan)
    return sum(accuracies) / steps


# ------------------------------------------------------------------------------ boundary IoU

def boundary_iou_curve(quantized: Array, truth: Array) -> Array:
    """IoU of the prediction's and the ground truth's inner boundary bands (width 2 % of the
    diagonal) at the 256 thresholds 255..0, from the requantised normalised prediction."""
    h, w = truth.shape
    width = max(1, int(round(BIOU_DILATION_RATIO * math.sqrt(h * h + w * w))))
    pred_band = quantized - min_filter_square(quantized, width)
    truth_bits = pack_rows(truth)
    truth_band = unpack_rows(truth_bits & ~erode_square_packed(truth_bits, width), w)
    key = truth_band.view(np.uint8).astype(np.uint16) << 8          # 256 * truth_band + band
    key |= pred_band
    counts = np.bincount(key.reshape(-1), minlength=512)
    inside = counts[256:][::-1].cumsum()
    outside = counts[:256][::-1].cumsum()
    truth_size = max(int(np.count_nonzero(truth_band)), 1)
    return inside / (truth_size + outside)
