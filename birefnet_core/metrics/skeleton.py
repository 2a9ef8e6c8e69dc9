"""Zhang-Suen thinning, pixel for pixel what ``skimage.morphology.skeletonize`` returns in 2-D.

Zhang and Suen (1984) thin a shape by two alternating parallel sub-iterations: every pass decides
all pixels on the image as it was before the pass, from their 8-neighbourhood alone, and passes
repeat until a full iteration deletes nothing. Which neighbourhoods a pass deletes is a fixed
table. scikit-image's table is not the textbook one (it also deletes some pixels whose neighbours
are an 8-connected corner, such as N+E, and keeps some the textbook deletes), and no relabelling
of the textbook conditions reproduces it; the HCE metric is defined on scikit-image's skeletons,
so the two tables below hold its choices, re-encoded for this module's bit order.

Only pixels next to the background can be deleted, so each pass looks at a frontier: the pixels
that were deletable-in-principle last time plus the surviving neighbours of deleted pixels. Work
is proportional to the shape's area, not to area times thickness.
"""
from __future__ import annotations

import numpy as np

from .morphology import edge_pixels

Array = np.ndarray

# Neighbourhood code: bit k set when neighbour k is foreground, neighbours clockwise from north.
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))

# Bit ``code`` of these numbers is set when a pixel with that neighbourhood is deleted in the
# first / second sub-iteration.
_FIRST_PASS_CODES = int("30b008b0001808a00000000000080aa0"
                        "100000a0001000a510000004010c0e8", 16)
_SECOND_PASS_CODES = int("1101000b0000000800000000800080885"
                         "101000101010002d1510000d010f020", 16)


def _table(codes: int) -> Array:
    return np.array([(codes >> code) & 1 for code in range(256)], dtype=bool)


_FIRST_PASS = _table(_FIRST_PASS_CODES)
_SECOND_PASS = _table(_SECOND_PASS_CODES)
_EITHER_PASS = _FIRST_PASS | _SECOND_PASS


def skeletonize(mask: Array) -> Array:
    """Boolean skeleton of a boolean (or 0/non-0) H x W mask."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"skeletonize needs a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    stride = w + 2
    image = np.zeros((h + 2, stride), np.uint8)
    image[1:-1, 1:-1] = mask
    flat = image.reshape(-1)
    offsets = np.array([dy * stride + dx for dy, dx in _NEIGHBOURS])
    # pixels are indexed from the first one that has all its neighbours inside the frame;
    # neighbour k of pixel p is then views[k][p] (no index arithmetic per pass)
    base = stride + 1
    views = [flat[base + offset:] for offset in offsets]
    pixels = flat[base:]

    frontier = edge_pixels(image.view(bool)) - base   # only these can ever be deleted
    frontier = frontier[_EITHER_PASS[_codes(views, frontier)]]
    slot = np.empty(flat.size, np.int64)              # scratch for de-duplication
    deleted_in_iteration = True
    while deleted_in_iteration and frontier.size:
        deleted_in_iteration = False
        for table in (_FIRST_PASS, _SECOND_PASS):
            codes = _codes(views, frontier)
            delete = table[codes]
            gone = frontier[delete]
            if gone.size == 0:
                continue
            deleted_in_iteration = True
            pixels[gone] = 0
            kept = frontier[~delete & _EITHER_PASS[codes]]
            touched = (gone[:, None] + offsets[None, :]).reshape(-1)
            touched = touched[pixels[touched] != 0]
            frontier = _unique(np.concatenate([kept, touched]), slot)
    return image[1:-1, 1:-1].astype(bool)


def _codes(views: list[Array], pixels: Array) -> Array:
    codes = views[0][pixels]
    for bit in range(1, 8):
        codes |= views[bit][pixels] << bit
    return codes


def _unique(indices: Array, slot: Array) -> Array:
    """Distinct values of ``indices`` (any order), without sorting; ``slot`` is scratch."""
    if indices.size == 0:
        return indices
    slot[indices] = np.arange(indices.size)
    return indices[slot[indices] == np.arange(indices.size)]
