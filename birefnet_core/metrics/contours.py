"""Border following and polyline simplification as OpenCV does them, for the HCE metric.

``trace_borders`` returns the borders ``cv2.findContours(mask, RETR_TREE, CHAIN_APPROX_NONE)``
returns: Suzuki and Abe's border following (8-connected foreground, 4-connected holes), every
border pixel in tracing order, from the same start pixel and in the same direction. Each
8-connected component has one outer border, started at its first pixel in raster order; each
hole (a 4-connected background region the image border cannot reach) has one border, started
at the pixel left of the hole's first pixel. Within a component OpenCV lists the outer border
first and then the holes, last-found first; components are kept apart here (no pixel belongs to
two), which is all the HCE metric's bookkeeping depends on.

``polyline_vertex_counts`` counts the vertices ``cv2.approxPolyDP(curve, epsilon, False)``
keeps for open polylines: the Ramer-Douglas-Peucker recursion (point-to-segment distances,
first farthest point, split while farther than epsilon), then OpenCV's clean-up pass that drops
a middle vertex of three nearly collinear ones. Both are vectorised over all polylines at once.

Finding starts, components and holes is vectorised; following a border is a short loop per
border pixel over precomputed neighbourhood codes (the one inherently sequential step).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .morphology import Runs, connected_runs, edge_pixels

Array = np.ndarray

# Freeman chain codes with y pointing down: 0 = east, then counter-clockwise on screen.
_DIRECTIONS = ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))
_OUTER_START_SEARCH = (3, 2, 1, 0, 7, 6, 5, 4)    # clockwise from the west neighbour
_HOLE_START_SEARCH = (7, 6, 5, 4, 3, 2, 1)        # clockwise from the east (hole) pixel


def _turn_table() -> list[int]:
    """[code * 8 + b]: the first set neighbour counter-clockwise after direction b (b itself
    last), for an 8-bit neighbourhood code (bit k: neighbour in direction k is set)."""
    table = [0] * (256 * 8)
    for code in range(1, 256):
        for back in range(8):
            table[code * 8 + back] = next(k & 7 for k in range(back + 1, back + 9)
                                          if code >> (k & 7) & 1)
    return table


def _first_set_table(order: tuple[int, ...]) -> Array:
    """[code]: the first direction of ``order`` whose neighbour is set (-1: none)."""
    table = np.full(256, -1, np.int64)
    for code in range(256):
        table[code] = next((k for k in order if code >> k & 1), -1)
    return table


_TURN = _turn_table()
_OUTER_START = _first_set_table(_OUTER_START_SEARCH)
_HOLE_START = _first_set_table(_HOLE_START_SEARCH)


@dataclass(frozen=True)
class Borders:
    """All borders of a mask, concatenated: per point its (y, x), per border its length."""

    ys: Array
    xs: Array
    lengths: Array           # points per border, in the order described in the module doc
    component: Array         # per border: its component (raster order of first pixels)
    components: int          # number of 8-connected components

    @property
    def border_of_point(self) -> Array:
        return np.repeat(np.arange(len(self.lengths)), self.lengths)


def trace_borders(mask: Array) -> Borders:
    """The outer and hole borders of a boolean mask, as cv2.findContours traces them."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    stride = w + 2
    padded = np.zeros((h + 2, stride), bool)
    padded[1:-1, 1:-1] = mask
    codes = _neighbourhood_codes(padded)
    flat_codes = codes.reshape(-1)

    runs = connected_runs(mask, 8)
    first = runs.first_runs
    outer_starts = (runs.rows[first] + 1) * stride + runs.starts[first] + 1
    outer_turns = _OUTER_START[flat_codes[outer_starts]]
    hole_starts, hole_components = _hole_starts(padded, runs, stride)
    hole_turns = _HOLE_START[flat_codes[hole_starts]]

    # per component: its outer border, then its holes, the last found (raster order) first
    component = np.concatenate([np.arange(runs.count), hole_components])
    is_hole = np.arange(len(component)) >= runs.count
    starts = np.concatenate([outer_starts, hole_starts])
    order = np.lexsort((-np.where(is_hole, starts, 0), is_hole, component))
    starts, component = starts[order], component[order]
    turns = np.concatenate([outer_turns, hole_turns])[order]

    points, lengths = _follow_all(codes.tobytes(), stride, starts.tolist(), turns.tolist())
    points = np.asarray(points, dtype=np.int64)
    return Borders(points // stride - 1, points % stride - 1, np.asarray(lengths, np.int64),
                   component, runs.count)


def _neighbourhood_codes(padded: Array) -> Array:
    """uint8 code per pixel: bit k set when the neighbour in chain direction k is set. Only the
    pixels border following can read get one (mask pixels with a background neighbour; the
    padding ring is background); the others stay 0."""
    stride = padded.shape[1]
    edge = edge_pixels(padded)
    values = padded.view(np.uint8).reshape(-1)
    edge_codes = np.zeros(edge.size, np.uint8)
    for bit, (dx, dy) in enumerate(_DIRECTIONS):
        edge_codes |= values[edge + (dx + dy * stride)] << bit
    codes = np.zeros(padded.shape, np.uint8)
    codes.reshape(-1)[edge] = edge_codes
    return codes


def _hole_starts(padded: Array, runs: Runs, stride: int) -> tuple[Array, Array]:
    """Start pixel (flat, padded) of every hole's border, and the component around the hole."""
    background = connected_runs(~padded, 4)
    first = background.first_runs
    holes = first[background.labels[first] != background.labels[0]]
    starts = background.rows[holes] * stride + background.starts[holes] - 1
    # the component owning the start pixel: find its run (keys in raster order, unpadded)
    y, x = starts // stride - 1, starts % stride - 1
    keys = runs.rows * stride + runs.starts
    run = np.searchsorted(keys, y * stride + x, side="right") - 1
    return starts, runs.labels[run]


def _follow_all(codes: bytes, stride: int, starts: list[int],
                turns: list[int]) -> tuple[list[int], list[int]]:
    """Follow every border from its start pixel and first turn; flat padded indices."""
    delta = [dx + dy * stride for dx, dy in _DIRECTIONS]
    turn = _TURN
    points: list[int] = []
    lengths: list[int] = []
    append = points.append
    for start, first_turn in zip(starts, turns):
        before = len(points)
        if first_turn < 0:                                     # an isolated pixel
            append(start)
        else:
            # OpenCV stops on re-entering the start pixel from the last pixel before it
            last = start + delta[first_turn]
            pixel, back = start, first_turn
            while True:
                direction = turn[(codes[pixel] << 3) | back]
                append(pixel)
                following = pixel + delta[direction]
                if following == start and pixel == last:
                    break
                pixel, back = following, direction ^ 4
        lengths.append(len(points) - before)
    return points, lengths


# ------------------------------------------------------------------------------ approxPolyDP

def polyline_vertex_counts(xs: Array, ys: Array, offsets: Array, epsilon: float) -> Array:
    """Vertices kept by cv2.approxPolyDP(polyline, epsilon, closed=False), per polyline.

    Polyline k is points offsets[k] .. offsets[k+1]-1 of xs, ys. Its first and last points must
    differ unless it has a single point (true of the HCE boundaries).
    """
    xs = np.asarray(xs, np.float64)
    ys = np.asarray(ys, np.float64)
    offsets = np.asarray(offsets, np.int64)
    kept = np.zeros(len(xs), bool)
    kept[offsets[1:] - 1] = True                          # an open curve keeps its last point
    first, last = offsets[:-1], offsets[1:] - 1
    multi = last > first
    _douglas_peucker(xs, ys, first[multi], last[multi], epsilon * epsilon, kept)
    vertices = np.flatnonzero(kept)
    polyline = np.searchsorted(offsets, vertices, side="right") - 1
    counts = np.bincount(polyline, minlength=len(first))
    return counts - _cleanup_removals(xs[vertices], ys[vertices], polyline, epsilon * epsilon,
                                      len(first))


def _douglas_peucker(xs: Array, ys: Array, first: Array, last: Array, eps2: float,
                     kept: Array) -> None:
    """Mark the start of every slice the recursion keeps whole, all slices in parallel."""
    while first.size:
        inner = last - first - 1
        kept[first[inner == 0]] = True
        split = inner > 0
        first, last, inner = first[split], last[split], inner[split]
        if first.size == 0:
            return
        slice_of = np.repeat(np.arange(len(first)), inner)
        opening = np.cumsum(inner) - inner
        position = np.arange(inner.sum()) - opening[slice_of] + first[slice_of] + 1
        sx, sy = xs[first], ys[first]
        dx, dy = xs[last] - sx, ys[last] - sy
        length2 = dx * dx + dy * dy
        px, py = xs[position] - sx[slice_of], ys[position] - sy[slice_of]
        sdx, sdy, slen2 = dx[slice_of], dy[slice_of], length2[slice_of]
        projection = px * sdx + py * sdy
        ex, ey = xs[position] - xs[last][slice_of], ys[position] - ys[last][slice_of]
        distance = np.where(projection < 0, (px * px + py * py) * slen2,
                            np.where(projection > slen2, (ex * ex + ey * ey) * slen2,
                                     (py * sdx - px * sdy) ** 2))
        farthest = np.maximum.reduceat(distance, opening)
        at_max = np.where(distance == farthest[slice_of], position, len(xs))
        pivot = np.minimum.reduceat(at_max, opening)
        whole = farthest <= eps2 * length2
        kept[first[whole]] = True
        cut = ~whole
        first, last = (np.concatenate([first[cut], pivot[cut]]),
                       np.concatenate([pivot[cut], last[cut]]))


def _cleanup_removals(xs: Array, ys: Array, polyline: Array, eps2: float, count: int) -> Array:
    """Per polyline, how many vertices OpenCV's final pass removes.

    The pass walks the vertex triples in order; a removable middle vertex is dropped and the
    walk jumps two triples ahead, so a stretch of L consecutive removable triples loses
    ceil(L / 2) vertices.
    """
    removals = np.zeros(count, np.int64)
    if len(xs) < 3:
        return removals
    same = polyline[:-2] == polyline[2:]
    ax, ay, bx, by, cx, cy = xs[:-2], ys[:-2], xs[1:-1], ys[1:-1], xs[2:], ys[2:]
    dx, dy = cx - ax, cy - ay
    cross = (bx - ax) * dy - (by - ay) * dx
    inner = (bx - ax) * (cx - bx) + (by - ay) * (cy - by)
    removable = (same & (cross * cross <= 0.5 * eps2 * (dx * dx + dy * dy))
                 & (dx != 0) & (dy != 0) & (inner >= 0))
    edges = np.diff(np.concatenate([[False], removable, [False]]).astype(np.int8))
    stretch_start, stretch_stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    np.add.at(removals, polyline[stretch_start], (stretch_stop - stretch_start + 1) // 2)
    return removals
