"""How much the two official ways of preparing an image differ, and which one predict matches.

The model cards resize a PIL image (bilinear, antialiased when shrinking); the official
inference script resizes with OpenCV's INTER_LINEAR (no antialiasing). ``predict`` uses the
former. This prints, for a few source sizes, the largest and mean difference (in 8-bit steps)
between PIL's result and ours, and between PIL's and the non-antialiased resize, plus the
resulting mask difference for a synthetic-weight Swin-T (weights are random, so that number
shows sensitivity, not quality).

    python bench/bench_preprocessing.py [--out bench/results/preprocessing.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import birefnet_core  # noqa: E402
from bench.common import write_json  # noqa: E402
from birefnet_core.inference.predict import normalize, resize_images  # noqa: E402
from tests.synthetic import synthetic_float_weights  # noqa: E402


def _photo_like(height: int, width: int) -> np.ndarray:
    """A detailed test picture: the example image, upscaled with fine added texture."""
    base = Image.open(ROOT / "assets" / "example.jpg").convert("RGB")
    big = np.asarray(base.resize((width, height), Image.BICUBIC)).astype(np.float32)
    rng = np.random.default_rng(0)
    return np.clip(big + rng.normal(0, 12, big.shape), 0, 255).astype(np.uint8)


def compare(photo: np.ndarray, size: int, model) -> dict:
    pil = np.asarray(Image.fromarray(photo).resize((size, size), Image.BILINEAR)) / 255.0
    tensor = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    ours = resize_images(tensor, (size, size))
    plain = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    pil_t = torch.from_numpy(pil).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        masks = [torch.sigmoid(model(normalize(x, model.info.mean, model.info.std)))
                 for x in (ours, plain)]
    return {"source": list(photo.shape[:2]), "size": size,
            "ours_vs_pil_max_255": float((ours - pil_t).abs().max() * 255),
            "ours_vs_pil_mean_255": float((ours - pil_t).abs().mean() * 255),
            "opencv_style_vs_pil_max_255": float((plain - pil_t).abs().max() * 255),
            "opencv_style_vs_pil_mean_255": float((plain - pil_t).abs().mean() * 255),
            "mask_diff_max": float((masks[0] - masks[1]).abs().max()),
            "mask_diff_mean": float((masks[0] - masks[1]).abs().mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "preprocessing.json")
    args = parser.parse_args(argv)
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    rows = [compare(_photo_like(h, w), size, model)
            for (h, w), size in (((1536, 2048), 1024), ((3000, 4000), 1024), ((800, 600), 512))]
    for row in rows:
        print(f"{row['source']} -> {row['size']}^2: ours vs PIL max {row['ours_vs_pil_max_255']:.2f}"
              f"/255 (mean {row['ours_vs_pil_mean_255']:.3f}); OpenCV-style vs PIL max "
              f"{row['opencv_style_vs_pil_max_255']:.2f}/255 (mean "
              f"{row['opencv_style_vs_pil_mean_255']:.3f}); mask diff max {row['mask_diff_max']:.4f}"
              f" mean {row['mask_diff_mean']:.5f}")
    write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
