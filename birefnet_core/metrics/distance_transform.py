"""Exact Euclidean distance transform with nearest-feature indices, in numpy.

``FeatureTransform(features)`` finds, for every pixel, the nearest feature (True) pixel, breaking
ties as ``scipy.ndimage.distance_transform_edt(..., return_indices=True)`` does: among the
features at the smallest distance, the one in the leftmost column, and within a column the
topmost. (Scipy builds the transform from column-wise nearest features and a per-row lower
envelope that keeps the earlier candidate whenever two are equally near; the weighted F-measure
reads the error at that feature, so the choice matters.)

Algorithm: per column, the nearest feature above and below; then per row, the lower envelope of
the parabolas ``(x - j)^2 + h_j^2`` (h_j: vertical distance to column j's nearest feature), found
as the lower convex hull of the points ``(j, j^2 + h_j^2)``. Cheap chord tests against nearby
columns first drop most points that cannot be on it; the hull of the rest is computed for all
rows at once by repeatedly deleting every point strictly above the chord of its neighbours.
Collinear points stay, as in scipy, and cannot change the answer. Integer arithmetic throughout.
"""
from __future__ import annotations

import numpy as np

Array = np.ndarray


class FeatureTransform:
    """Nearest feature (True pixel) of every pixel of a boolean image with at least one."""

    def __init__(self, features: Array) -> None:
        features = np.asarray(features, dtype=bool)
        if not features.any():
            raise ValueError("a distance transform needs at least one feature pixel")
        self.features = features
        h, w = features.shape
        self._column_row, column_gap = _nearest_in_columns(features)
        # Candidates per row: one per column that has a feature, except
        # - features inside a horizontal run of features: the run's ends are nearer to any
        #   non-feature pixel (features themselves are answered directly);
        # - points strictly above a chord between two other candidates of their row (never
        #   nearest to anything); chords to near columns weed out many cheaply.
        inside_run = features.copy()
        inside_run[:, 1:] &= features[:, :-1]
        inside_run[:, :-1] &= features[:, 1:]
        inside_run[:, [0, -1]] = False
        # int32 while the chord tests (2 s_x - s_l - s_r, |.| <= 2 gap^2) cannot overflow:
        # gaps < 3 (h + w) + 8
        small = 2 * (3 * (h + w) + 8) ** 2 < 2 ** 31
        squares = column_gap.astype(np.int32 if small else np.int64) ** 2
        candidate = features.any(axis=0)[None, :] & ~inside_run
        _drop_above_chords(candidate, squares)
        rows, cols = np.nonzero(candidate)
        rows, cols, heights = _lower_hull(rows, cols,
                                          cols * cols + squares[candidate].astype(np.int64))
        # int32 where the squared distances (< h^2 + w^2) and their terms fit
        self._exact = np.int32 if 4 * (h * h + w * w) < 2 ** 31 else np.int64
        self._starts, cols, heights = _envelope_segments(rows, cols, heights, w)
        self._cols, self._heights = cols.astype(self._exact), heights.astype(self._exact)

    def squared_distance(self) -> Array:
        """(h, w) integer squared distance to the nearest feature (0 on features): on each
        segment of the envelope, heights[k] - 2 x cols[k] + x^2."""
        h, w = self.features.shape
        lengths = np.diff(self._starts, append=h * w)
        cols = np.repeat(self._cols, lengths).reshape(h, w)
        squared = np.repeat(self._heights, lengths).reshape(h, w)
        x = np.arange(w, dtype=self._exact)
        cols *= -2 * x
        squared += cols
        squared += x * x
        squared[self.features] = 0
        return squared

    def nearest(self, ys: Array, xs: Array) -> tuple[Array, Array]:
        """Row and column of the nearest feature of the pixels (ys, xs)."""
        w = self.features.shape[1]
        segment = np.searchsorted(self._starts, ys * w + xs, side="right") - 1
        cols = self._cols[segment]
        rows = self._column_row[ys, cols]
        own = self.features[ys, xs]
        return np.where(own, ys, rows), np.where(own, xs, cols)


def nearest_feature(features: Array) -> tuple[Array, Array, Array]:
    """Squared distance, row and column of the nearest True pixel, for every pixel."""
    transform = FeatureTransform(features)
    ys, xs = np.indices(transform.features.shape)
    rows, cols = transform.nearest(ys.reshape(-1), xs.reshape(-1))
    shape = transform.features.shape
    return transform.squared_distance(), rows.reshape(shape), cols.reshape(shape)


# Chord reaches a: the reaches doubling up to 8 catch most points of long convex chains,
# which the hull's sweeps would otherwise peel a point at a time (about a third faster).
_CHORD_REACHES = (1, 2, 4, 8)


def _drop_above_chords(candidate: Array, squares: Array) -> None:
    """Clear candidates (y, x) lying strictly above the chord between (y, x - a) and (y, x + a)
    for the reaches a in _CHORD_REACHES; the point of column j is (j, j^2 + squares[y, j]).

    With left l = x - a and right r = x + a the test 2 (y_x - y_l) > y_r - y_l simplifies, the
    column terms cancelling to 2 a^2, to 2 s_x - s_l - s_r > 2 a^2.
    """
    w = squares.shape[1]
    for a in _CHORD_REACHES:
        if 2 * a >= w:
            break
        excess = squares[:, a:w - a] << 1
        excess -= squares[:, :w - 2 * a]
        excess -= squares[:, 2 * a:]
        candidate[:, a:w - a] &= excess <= 2 * a * a


def _nearest_in_columns(features: Array) -> tuple[Array, Array]:
    """Per pixel, its column's nearest feature row (ties: the upper) and the vertical gap."""
    h, w = features.shape
    kind = np.int16 if 3 * (h + w) + 8 < 2 ** 15 else np.int32   # holds every row and gap
    far = kind(2 * (h + w) + 4)                                   # "no feature": far away
    rows = np.arange(h, dtype=kind)[:, None]
    above = np.where(features, rows, -far)
    below = np.where(features, rows, far)
    for y in range(1, h):                                         # running max downwards
        np.maximum(above[y], above[y - 1], out=above[y])
    for y in range(h - 2, -1, -1):                                # running min upwards
        np.minimum(below[y], below[y + 1], out=below[y])
    gap_above, gap_below = rows - above, below - rows
    take_above = gap_above <= gap_below
    return np.where(take_above, above, below), np.where(take_above, gap_above, gap_below)


def _lower_hull(rows: Array, cols: Array, heights: Array) -> tuple[Array, Array, Array]:
    """The points (col, height) of each row on the row's lower convex hull, collinear ones
    included; input and output are flat arrays in raster order.

    Sweeps delete, all at once, every point strictly above the chord of its neighbours. While
    sweeps delete many points the arrays are compacted after each; for the long tail (convex
    chains peeled a point per sweep from each end) the survivors become a linked list per row
    and only points next to a deletion are tested again.
    """
    while True:
        drop = _above_chords(rows, cols, heights)
        count = int(np.count_nonzero(drop))
        if count == 0:
            return rows, cols, heights
        if count < len(rows) // 8:
            alive = _peel(rows, cols, heights, np.flatnonzero(drop))
            return rows[alive], cols[alive], heights[alive]
        keep = ~drop
        rows, cols, heights = rows[keep], cols[keep], heights[keep]


def _above_chords(rows: Array, cols: Array, heights: Array) -> Array:
    """Points (flat, raster order) strictly above the chord of their two row neighbours."""
    drop = np.zeros(len(rows), bool)
    if len(rows) >= 3:
        inner = (rows[:-2] == rows[2:])                   # rows sorted: then all three equal
        drop[1:-1] = inner & ((heights[1:-1] - heights[:-2]) * (cols[2:] - cols[:-2])
                              > (heights[2:] - heights[:-2]) * (cols[1:-1] - cols[:-2]))
    return drop


def _peel(rows: Array, cols: Array, heights: Array, gone: Array) -> Array:
    """Delete ``gone``, then keep deleting points above their neighbours' chord; each round
    tests only the survivors next to the last deletions. Returns the alive mask."""
    n = len(rows)
    position = np.arange(n)
    before, after = position - 1, position + 1
    row_start = np.ones(n, bool)
    row_start[1:] = rows[1:] != rows[:-1]
    before[row_start] = -1
    after[np.flatnonzero(row_start)[1:] - 1] = -1
    after[-1] = -1
    alive = np.ones(n, bool)
    scratch = np.empty(n, np.int64)
    while gone.size:
        alive[gone] = False
        left = _first_alive(before, before[gone], alive)
        right = _first_alive(after, after[gone], alive)
        has_left, has_right = left >= 0, right >= 0
        after[left[has_left]] = right[has_left]
        before[right[has_right]] = left[has_right]
        candidates = _distinct(np.concatenate([left[has_left], right[has_right]]), scratch)
        left, right = before[candidates], after[candidates]
        inner = (left >= 0) & (right >= 0)
        mid, left, right = candidates[inner], left[inner], right[inner]
        above = ((heights[mid] - heights[left]) * (cols[right] - cols[left])
                 > (heights[right] - heights[left]) * (cols[mid] - cols[left]))
        gone = mid[above]
    return alive


def _first_alive(link: Array, start: Array, alive: Array) -> Array:
    """Follow ``link`` from ``start`` past deleted points (-1: none left)."""
    position = start.copy()
    while True:
        dead = position >= 0
        dead[dead] = ~alive[position[dead]]
        if not dead.any():
            return position
        position[dead] = link[position[dead]]


def _distinct(values: Array, scratch: Array) -> Array:
    """The distinct entries of ``values`` (any order); ``scratch`` is an array longer than the
    largest value, used without clearing."""
    scratch[values] = np.arange(values.size)
    return values[scratch[values] == np.arange(values.size)]


def _envelope_segments(rows: Array, cols: Array, heights: Array,
                       w: int) -> tuple[Array, Array, Array]:
    """The envelope as segments in raster order: (flat start pixel, col, height) of each hull
    point that is lowest somewhere (ties: the leftmost point).

    Between consecutive hull points k, k+1 of a row, k stays best up to and including
    x_k = (height_{k+1} - height_k) / (2 (col_{k+1} - col_k)); from floor(x_k) + 1 on, k+1 wins.
    A row's first point starts at 0; a point whose segment is empty (its start reached by the
    next point's, or at w) is dropped.
    """
    starts = np.zeros(len(rows), np.int64)
    pair = np.flatnonzero(rows[:-1] == rows[1:])
    numerator = heights[pair + 1] - heights[pair]
    denominator = 2 * (cols[pair + 1] - cols[pair])
    starts[pair + 1] = np.clip(np.floor_divide(numerator, denominator) + 1, 0, w)
    starts += rows.astype(np.int64) * w
    last = np.ones(len(rows), bool)              # the last of the points sharing a start
    last[:-1] = starts[:-1] != starts[1:]
    last &= (starts - rows * w) < w
    return starts[last], cols[last], heights[last]
