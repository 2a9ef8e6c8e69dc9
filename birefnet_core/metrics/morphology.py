"""Binary and grey-level morphology in numpy, for the evaluation metrics.

Conventions follow OpenCV's defaults, which the official evaluator relies on: outside the image,
dilation sees background and erosion sees foreground (the border never changes a result), unless
a function says otherwise. Structuring elements are symmetric, so their anchor is the centre.
Binary dilation and erosion work on rows bit-packed into uint64 words.

Connected components are found on horizontal runs rather than pixels: a union-find over the runs
of a mask, with overlapping runs of neighbouring rows joined (8- or 4-connectivity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


# ------------------------------------------------------------------------------ binary, packed
# Binary images are bit-packed per row into uint64 words (pixel x: word x // 64, bit x % 64):
# a shift or an OR then handles 64 pixels at once. ``valid`` (from row_mask) holds the bits of
# real columns; results are cleared outside it.

CROSS = [(-1, 0), (0, 1), (1, 0)]         # the 3x3 cross (skimage's disk(1)) as row spans


def ellipse_spans(radius: int) -> list[tuple[int, int]]:
    """Rows of OpenCV's MORPH_ELLIPSE element of size 2r+1: (dy, half width) per row."""
    if radius == 0:
        return [(0, 0)]
    inverse = 1.0 / (radius * radius)
    spans = []
    for dy in range(-radius, radius + 1):
        half = int(np.rint(radius * math.sqrt((radius * radius - dy * dy) * inverse)))
        spans.append((dy, min(half, radius)))
    return spans


def pack_rows(mask: Array) -> Array:
    """Bit-pack each row of a boolean mask into uint64 words; bits past the last column: 0."""
    h, w = mask.shape
    words = (w + 63) // 64
    packed = np.zeros((h, words * 8), np.uint8)
    packed[:, :(w + 7) // 8] = np.packbits(mask, axis=1, bitorder="little")
    return packed.view(np.uint64)


def unpack_rows(words: Array, width: int) -> Array:
    return np.unpackbits(words.view(np.uint8), axis=1, count=width, bitorder="little").view(bool)


def row_mask(width: int) -> Array:
    """(1, words) packed row with the bits of the ``width`` real columns set."""
    return pack_rows(np.ones((1, width), bool))


def read_bits(words: Array, ys: Array, xs: Array) -> Array:
    """The packed image's pixels at (ys, xs), as booleans."""
    shifted = words[ys, xs >> 6] >> (xs & 63).astype(np.uint64)
    return (shifted & np.uint64(1)).astype(bool)


def dilate_packed(words: Array, spans: list[tuple[int, int]], valid: Array,
                  iterations: int = 1) -> Array:
    """Dilation by a symmetric element given as rows (dy, half width); outside = background."""
    for _ in range(iterations):
        words = _dilate_once(words, spans) & valid
    return words


def erode_packed(words: Array, spans: list[tuple[int, int]], valid: Array,
                 iterations: int = 1) -> Array:
    """Erosion by a symmetric element; outside = foreground (the border never erodes)."""
    return ~dilate_packed(~words & valid, spans, valid, iterations) & valid


def _dilate_once(words: Array, spans: list[tuple[int, int]]) -> Array:
    h = words.shape[0]
    rows = [words]                       # rows[k]: horizontal dilation by half width k
    for k in range(1, max(half for _, half in spans) + 1):
        rows.append(rows[-1] | _shift_packed(words, k) | _shift_packed(words, -k))
    out = np.zeros_like(words)
    for dy, half in spans:
        if abs(dy) >= h:
            continue
        if dy >= 0:
            out[:h - dy] |= rows[half][dy:]
        else:
            out[-dy:] |= rows[half][:h + dy]
    return out


def edge_pixels(mask: Array) -> Array:
    """Flat indices, in raster order, of the True pixels of a boolean image that have a False
    8-neighbour (outside the image counts as False)."""
    bits = pack_rows(mask)
    return np.flatnonzero(unpack_rows(bits & ~erode_square_packed(bits, 1), mask.shape[1]))


def erode_square_packed(words: Array, radius: int) -> Array:
    """Erosion by a (2r+1)^2 square with background outside the image (what a minimum filter
    with zero padding does to a binary image); packed rows, bits past the width clear. Each
    pass ANDs the window [x, x + 2r] and then moves it to [x - r, x + r]: windows reaching
    outside the image come out 0, as they must here (not for a dilation)."""
    window = 2 * radius + 1
    across = _window_reduce(words, window, lambda v, k: v & _shift_packed(v, k))
    across = _shift_packed(across, -radius)
    down = _window_reduce(across, window, lambda v, k: v & _shift_rows(v, k))
    return _shift_rows(down, -radius)


def _window_reduce(values: Array, window: int, step) -> Array:
    """Reduce every window of ``window`` consecutive items, by doubling: ``step(v, k)``
    combines each item of v with the one k further on; after it, item i covers i .. i + span."""
    span = 1
    while span * 2 <= window:
        values = step(values, span)
        span *= 2
    if span < window:
        values = step(values, window - span)
    return values


def _shift_rows(words: Array, offset: int) -> Array:
    """out[y] = in[y + offset]; zero outside the image."""
    out = np.zeros_like(words)
    h = words.shape[0]
    if abs(offset) < h:
        if offset >= 0:
            out[:h - offset] = words[offset:]
        else:
            out[-offset:] = words[:h + offset]
    return out


def _shift_packed(words: Array, offset: int) -> Array:
    """out[x] = in[x + offset] along the packed rows; zero outside the row."""
    out = np.zeros_like(words)
    n = words.shape[1]
    whole, bits = divmod(abs(offset), 64)
    if whole >= n:
        return out
    low, high = np.uint64(bits), np.uint64(64 - bits)
    if offset >= 0:
        out[:, :n - whole] = words[:, whole:] >> low
        if bits and n - whole > 1:
            out[:, :n - whole - 1] |= words[:, whole + 1:] << high
    else:
        out[:, whole:] = words[:, :n - whole] << low
        if bits and n - whole > 1:
            out[:, whole + 1:] |= words[:, :n - whole - 1] >> high
    return out


def min_filter_square(image: Array, radius: int) -> Array:
    """Grey-level erosion with a (2r+1)^2 square, the image padded with zeros."""
    padded = np.pad(image, radius)
    return _sliding_min(_sliding_min(padded, 2 * radius + 1, 0), 2 * radius + 1, 1)


def _sliding_min(values: Array, window: int, axis: int) -> Array:
    """Minimum over windows of ``window`` along ``axis`` ('valid' mode), by doubling."""
    return _window_reduce(values, window, lambda v, k: np.minimum(
        _take(v, 0, -k, axis), _take(v, k, None, axis)))


def _take(values: Array, start: int, stop: int | None, axis: int) -> Array:
    index = [slice(None)] * values.ndim
    index[axis] = slice(start, stop)
    return values[tuple(index)]


# ------------------------------------------------------------------------------ components

@dataclass(frozen=True)
class Runs:
    """Maximal horizontal runs of a mask in raster order, with their component labels."""

    rows: Array          # row of each run
    starts: Array        # first column
    stops: Array         # one past the last column
    labels: Array        # component of each run: 0..count-1, numbered in raster order
    first_runs: Array    # each component's first run in raster order (holds its first pixel)

    @property
    def count(self) -> int:
        return len(self.first_runs)

    def label_image(self, shape: tuple[int, int]) -> Array:
        """int32 image: component + 1 on the mask, 0 elsewhere."""
        out = np.zeros(shape, np.int32)
        lengths = self.stops - self.starts
        pixel_rows = np.repeat(self.rows, lengths)
        first = np.repeat(self.starts - np.cumsum(lengths) + lengths, lengths)
        pixel_cols = first + np.arange(len(pixel_rows))
        out[pixel_rows, pixel_cols] = np.repeat(self.labels + 1, lengths)
        return out


def connected_runs(mask: Array, connectivity: int = 8) -> Runs:
    """Connected components of a boolean mask (8- or 4-connected), as labelled runs."""
    h, w = mask.shape
    edges = np.zeros((h, w + 2), bool)
    edges[:, 1:-1] = mask
    # every row starts and ends outside a run, so its changes alternate start, stop, ...
    change = np.flatnonzero(edges[:, 1:] != edges[:, :-1])
    rows = change[0::2] // (w + 1)
    starts, stops = change[0::2] % (w + 1), change[1::2] % (w + 1)
    parent = np.arange(len(rows))
    a, b = _touching_runs(rows, starts, stops, w, slack=1 if connectivity == 8 else 0)
    parent = _union(parent, a, b)
    roots, labels = np.unique(parent, return_inverse=True)     # a root is its first run
    return Runs(rows, starts, stops, labels.astype(np.int64), roots)


def _touching_runs(rows: Array, starts: Array, stops: Array, width: int,
                   slack: int) -> tuple[Array, Array]:
    """Pairs (a, b) of runs in consecutive rows that touch: b's row is a's row + 1."""
    key = width + 2
    start_keys = rows * key + starts
    stop_keys = rows * key + stops
    below = (rows + 1) * key
    first = np.searchsorted(stop_keys, below + starts + 1 - slack, side="left")
    last = np.searchsorted(start_keys, below + stops - 1 + slack, side="right") - 1
    counts = np.maximum(last - first + 1, 0)
    a = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return a, np.repeat(first, counts) + offsets


def _union(parent: Array, a: Array, b: Array) -> Array:
    """Union-find over index pairs by hooking roots to smaller roots; returns each root."""
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
