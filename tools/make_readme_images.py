"""The README's Refine Edges picture: a synthetic composite with known alpha, foreground and
background (bench/bench_refine.py's generator: hair strands and soft edges over green screen
and stripes), placed over a new background three ways: the naive cutout (F = I), ours
(multilevel foreground estimation), and the ground truth. Errors printed are the benchmark's
(alpha-weighted mean absolute error of F in the transition band) on the whole 1024² image.

    python tools/make_readme_images.py [--out assets/readme/refine_edges.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_refine import band_error, make_composite  # noqa: E402
from birefnet_core import estimate_foreground  # noqa: E402

NEW_BACKGROUND = np.array([0.16, 0.17, 0.2], np.float32)      # a dark studio grey


def _panel(foreground: np.ndarray, alpha: np.ndarray, crop: tuple[slice, slice], scale: int,
           label: str) -> Image.Image:
    """foreground over NEW_BACKGROUND, cropped, enlarged (nearest: pixels stay visible)."""
    over = alpha[..., None] * foreground + (1 - alpha[..., None]) * NEW_BACKGROUND
    part = (np.clip(over[crop], 0, 1) * 255).round().astype(np.uint8)
    image = Image.fromarray(part).resize((part.shape[1] * scale, part.shape[0] * scale),
                                         Image.NEAREST)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, image.width, 22], fill=(0, 0, 0))
    draw.text((6, 5), label, fill=(255, 255, 255))
    return image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "readme" / "refine_edges.png")
    args = parser.parse_args(argv)
    data = make_composite(1024, seed=0)
    image, alpha, truth = data["image"], data["alpha"], data["foreground"]
    ours = estimate_foreground(torch.from_numpy(image).permute(2, 0, 1)[None],
                               torch.from_numpy(alpha)[None, None])[0].permute(1, 2, 0).numpy()
    naive_error, ours_error = band_error(image, truth, alpha), band_error(ours, truth, alpha)
    crop = (slice(120, 320), slice(412, 612))           # strands over the green-screen band
    panels = [_panel(image, alpha, crop, 2, f"cutout as is (F = I): error {naive_error:.3f}"),
              _panel(ours, alpha, crop, 2, f"Refine Edges, multilevel: {ours_error:.3f}"),
              _panel(truth, alpha, crop, 2, "ground truth")]
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 8 * 2, panels[0].height), "white")
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + 8
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"naive {naive_error:.4f}, multilevel {ours_error:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
