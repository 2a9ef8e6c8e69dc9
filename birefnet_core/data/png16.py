"""A small PNG encoder (numpy + zlib) for 8- and 16-bit grey, RGB and RGBA.

Pillow has no 16-bit RGBA mode to save from, so 16-bit mattes are written here; every row is
stored with the PNG "Up" filter (the difference to the row above), which compresses smooth
mattes well and costs one numpy subtraction per frame.
"""
from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}        # channels -> PNG colour type (grey, RGB, RGBA)
_FILTER_UP = 2
COMPRESSION = 3                          # zlib level: measured as the knee of size vs time


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, compression: int = COMPRESSION) -> bytes:
    """pixels (H, W) or (H, W, C) with C in 1/3/4, dtype uint8 or uint16 -> PNG file bytes."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    if channels not in _COLOR_TYPES or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png takes uint8/uint16 with 1, 3 or 4 channels, got "
                         f"{pixels.dtype} with {channels}")
    depth = 8 * pixels.dtype.itemsize
    rows = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">"))
    raw = rows.view(np.uint8).reshape(height, width * channels * pixels.dtype.itemsize)
    filtered = np.empty((height, raw.shape[1] + 1), np.uint8)   # (H, 1 + row bytes)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=filtered[1:, 1:])         # wraps modulo 256 as PNG does
    header = struct.pack(">IIBBBBB", width, height, depth, _COLOR_TYPES[channels], 0, 0, 0)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header),
                     _chunk(b"IDAT", zlib.compress(filtered.tobytes(), compression)),
                     _chunk(b"IEND", b"")))


def write_png(stream: BinaryIO, pixels: np.ndarray) -> None:
    stream.write(encode_png(pixels))
