"""Foreground colour estimation: error and CPU time on synthetic composites with known F, B, alpha.

Each composite (seeded, procedural) has a textured subject with hard, blurred and hair-like
edges (curved strands 1-3 px wide with soft profiles), semi-transparent patches (alpha 0.3-0.7),
over four background bands: pure green screen, red/blue stripes, textured noise and a
black/white checkerboard. ``I = alpha * F + (1 - alpha) * B``. For each method the script prints
the alpha-weighted mean absolute error of F in the transition band (0 < alpha < 1),
``sum(alpha * |F_est - F|) / (3 * sum(alpha))``, and the median time of 3 warm runs.

Methods: the naive cutout (F = I); blur fusion written with OpenCV's cv2.blur (box widths 90 then
6, as in Forte's paper code); pymatting's estimate_foreground_ml (numba; its first-call compile
is timed separately); ours (birefnet_core.matting.foreground), both methods, float32, plus bfloat16 once.
Needs requirements-bench.txt (pymatting, opencv-python-headless, scipy).

    python bench/bench_refine.py [--sizes 1024 2048] [--out bench/results/refine.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_json  # noqa: E402
from birefnet_core.matting.foreground import estimate_foreground  # noqa: E402

Array = np.ndarray


# ------------------------------------------------------------------------------ composites

def _colour_field(rng: np.random.Generator, size: int, waves: int, noise: float) -> Array:
    """(size, size, 3) smooth random colours from a few sinusoids, plus fine noise, in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    field = np.zeros((size, size, 3), np.float32)
    for channel in range(3):
        for _ in range(waves):
            fy, fx = rng.uniform(-6, 6, 2)
            field[..., channel] += np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 6.3))
    field = 0.5 + 0.4 * field / waves + noise * rng.standard_normal(field.shape).astype(np.float32)
    return np.clip(field, 0, 1)


def _backgrounds(rng: np.random.Generator, size: int) -> Array:
    """(size, size, 3) bands: green screen, red/blue stripes, smoothed noise, checkerboard."""
    from scipy.ndimage import gaussian_filter
    band = size // 4
    background = np.zeros((size, size, 3), np.float32)
    background[:band] = (0.0, 1.0, 0.0)
    stripes = (np.arange(size) // max(2, size // 96)) % 2 == 0                  # vertical
    background[band:2 * band] = np.where(stripes[:, None], (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    noise = gaussian_filter(rng.random((size, size, 3)).astype(np.float32), (2, 2, 0))
    noise = np.clip((noise - noise.mean()) * 6 + 0.5, 0, 1)
    background[2 * band:3 * band] = noise[2 * band:3 * band]
    cells = (np.arange(size) // max(2, size // 64)) % 2
    checker = (cells[:, None] ^ cells[None, :]).astype(np.float32)
    background[3 * band:] = checker[3 * band:, :, None]
    return background


def _strands(rng: np.random.Generator, size: int, count: int) -> Array:
    """(size, size) coverage of ``count`` quadratic Bezier strands, 1-3 px wide, soft profile."""
    from scipy.ndimage import gaussian_filter
    canvas = np.zeros((size + 2, size + 2), np.float32)
    centre = np.array([size / 2, size / 2])
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.sin(angle), np.cos(angle)])
        start = centre + direction * size * rng.uniform(0.18, 0.3)
        end = start + direction * size * rng.uniform(0.1, 0.25) + rng.normal(0, 0.05 * size, 2)
        bend = (start + end) / 2 + rng.normal(0, 0.06 * size, 2)
        length = np.linalg.norm(end - start) + np.linalg.norm(bend - start)
        t = np.linspace(0, 1, int(length / 0.3) + 2)[:, None]
        points = (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t ** 2 * end    # (n, 2)
        tangent = np.gradient(points, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
        width, opacity = rng.uniform(1, 3), rng.uniform(0.6, 1.0)
        for offset in np.arange(-width / 2, width / 2, 0.3):
            _splat(canvas, points + offset * normal, opacity * 0.09)
    return np.clip(gaussian_filter(np.clip(canvas, 0, 1), 0.6)[1:-1, 1:-1], 0, 1)


def _splat(canvas: Array, points: Array, weight: float) -> None:
    """Add ``weight`` at each (y, x) point of (n, 2), bilinearly, into canvas (1-px margin)."""
    points = points + 1
    inside = (points >= 0).all(1) & (points < np.array(canvas.shape) - 1).all(1)
    y, x = points[inside].T
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    for dy, dx, share in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                          (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(canvas, (y0 + dy, x0 + dx), weight * share)


def _subject(rng: np.random.Generator, size: int) -> Array:
    """(size, size) alpha of a blob with a hard and a blurred half, plus translucent patches."""
    from scipy.ndimage import gaussian_filter
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    radius = np.hypot((y - 0.5) / 0.3, (x - 0.5) / 0.22)
    blob = np.clip((1 - radius) * size * 0.22, 0, 1)                         # ~1 px edge
    soft = gaussian_filter(blob, size / 200)
    blob = np.where(x > 0.5, soft, blob)
    patches = np.zeros_like(blob)
    for _ in range(12):
        cy, cx, r = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95), rng.uniform(0.01, 0.03)
        disc = np.clip((r - np.hypot(y - cy, x - cx)) * size / 3, 0, 1) * rng.uniform(0.3, 0.7)
        patches = np.maximum(patches, disc)
    return 1 - (1 - blob) * (1 - patches)


def make_composite(size: int, seed: int = 0) -> dict[str, Array]:
    """Known image, alpha, foreground and background, each (size, size[, 3]) float32."""
    rng = np.random.default_rng(seed)
    strands = _strands(rng, size, count=size // 6)
    alpha = 1 - (1 - _subject(rng, size)) * (1 - strands)
    hair = np.array([0.45, 0.3, 0.15], np.float32)
    foreground = _colour_field(rng, size, waves=4, noise=0.02)
    hairiness = np.clip(strands * 3, 0, 1)[..., None]
    foreground = foreground * (1 - hairiness) + hair * hairiness
    background = _backgrounds(rng, size)
    image = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    return {"image": image.astype(np.float32), "alpha": alpha.astype(np.float32),
            "foreground": foreground.astype(np.float32), "background": background}


def band_error(estimate: Array, truth: Array, alpha: Array) -> float:
    """sum(alpha * |F_est - F|) / (3 * sum(alpha)) over pixels with 0 < alpha < 1."""
    band = (alpha > 0) & (alpha < 1)
    weights = alpha[band]
    difference = np.abs(estimate[band].astype(np.float64) - truth[band])      # (n, 3)
    return float((weights[:, None] * difference).sum() / (3 * weights.sum()))


# -------------------------------------------------------------------------------- methods

def blur_fusion_opencv(image: Array, alpha: Array) -> Array:
    """Forte's two-pass blur fusion with cv2.blur boxes (widths 90 then 6), HWC float32."""
    import cv2
    a = alpha[..., None]
    foreground, background = image, image
    for width in (90, 6):
        blurred_alpha = cv2.blur(alpha, (width, width))[..., None]
        mean_f = cv2.blur(foreground * a, (width, width)) / (blurred_alpha + 1e-5)
        mean_b = cv2.blur(background * (1 - a), (width, width)) / (1 - blurred_alpha + 1e-5)
        foreground = np.clip(mean_f + a * (image - a * mean_f - (1 - a) * mean_b), 0, 1)
        background = mean_b
    return foreground


def ours(method: str, dtype: torch.dtype = torch.float32, **options) -> Callable:
    """Wrap estimate_foreground for HWC numpy in and out."""
    def run(image: Array, alpha: Array) -> Array:
        image_t = torch.from_numpy(image).permute(2, 0, 1)[None].to(dtype)     # (1, 3, H, W)
        alpha_t = torch.from_numpy(alpha)[None, None].to(dtype)              # (1, 1, H, W)
        result = estimate_foreground(image_t, alpha_t, method=method, **options)
        return result[0].permute(1, 2, 0).float().numpy()
    return run


def pymatting_ml(image: Array, alpha: Array) -> Array:
    """pymatting's multi-level estimator (numba)."""
    from pymatting import estimate_foreground_ml
    return estimate_foreground_ml(image, alpha)


def timed(function: Callable, image: Array, alpha: Array, repeats: int) -> tuple[Array, float]:
    """The result and the median wall time of ``repeats`` runs (after a warm-up run)."""
    result = function(image, alpha)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(image, alpha)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=None, help="subset of method names")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "refine.json")
    args = parser.parse_args(argv)
    methods: dict[str, Callable] = {
        "naive": lambda image, alpha: image,
        "blur_fusion_opencv": blur_fusion_opencv,
        "pymatting_ml": pymatting_ml,
        "ours_multilevel": ours("multilevel"),
        "ours_blur_fusion": ours("blur_fusion"),
        "ours_multilevel_bf16": ours("multilevel", torch.bfloat16),
        "ours_blur_fusion_bf16": ours("blur_fusion", torch.bfloat16),
    }
    chosen = args.methods or list(methods)
    rows, compile_s = [], None
    if "pymatting_ml" in chosen:
        tiny = make_composite(64, args.seed)
        start = time.perf_counter()
        pymatting_ml(tiny["image"], tiny["alpha"])
        compile_s = time.perf_counter() - start
        print(f"pymatting first call (numba compile) at 64x64: {compile_s:.2f} s", flush=True)
    for size in args.sizes:
        data = make_composite(size, args.seed)
        band = float(((data["alpha"] > 0) & (data["alpha"] < 1)).mean())
        print(f"--- {size}x{size}: {band:.1%} of pixels in the band", flush=True)
        for name in chosen:
            repeats = 1 if name.endswith("bf16") else args.repeats
            result, seconds = timed(methods[name], data["image"], data["alpha"], repeats)
            error = band_error(result, data["foreground"], data["alpha"])
            rows.append({"size": size, "method": name, "band_error": error, "seconds": seconds,
                         "repeats": repeats})
            print(f"{name:24s} error {error:.4f}  time {seconds:.3f} s", flush=True)
    write_json(args.out, {"torch_threads": torch.get_num_threads(),
                          "pymatting_compile_s": compile_s, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
