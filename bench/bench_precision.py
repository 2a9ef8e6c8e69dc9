"""How far bfloat16, float16 and int8 masks are from float32 ones, on the parity fixtures.

For every fixture image, ``predict`` runs the synthetic-weight model in float32 and in each
lower precision at the fixture's own size; the script prints the largest and the mean absolute
mask difference and writes them to JSON. (Weights are synthetic: the numbers show how much
the arithmetic moves a mask, not a trained model's quality.)

    python bench/bench_precision.py [--dtypes bf16 fp16 int8] [--out bench/results/precision.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import birefnet_core  # noqa: E402
from bench.common import write_json  # noqa: E402
from tests.synthetic import BACKBONES, parity_fixture, parity_fixture_names, synthetic_float_weights  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["bf16"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision.json")
    args = parser.parse_args(argv)
    rows = []
    for name in parity_fixture_names():
        backbone = next(b for b in BACKBONES if name.startswith(b + "_"))
        order = "legacy" if name.endswith("_legacy") else "current"
        fixture = parity_fixture(name)
        image = torch.from_numpy(fixture["image"]).reshape(-1, *fixture["image"].shape[-3:])
        image = image.permute(0, 3, 1, 2)                                  # (1, 3, H, W)
        size = tuple(image.shape[-2:])
        weights = synthetic_float_weights(backbone)
        reference = birefnet_core.predict(
            birefnet_core.load_model(weights, patch_order=order, resolution=size), image)
        for dtype in args.dtypes:
            model = birefnet_core.load_model(weights, patch_order=order, resolution=size,
                                             dtype=dtype)
            difference = (birefnet_core.predict(model, image) - reference).abs()
            row = {"fixture": name, "dtype": dtype, "max_abs_mask_diff": float(difference.max()),
                   "mean_abs_mask_diff": float(difference.mean())}
            rows.append(row)
            print(f"{name:28s} {dtype}: mask difference max {row['max_abs_mask_diff']:.4f} "
                  f"mean {row['mean_abs_mask_diff']:.5f}", flush=True)
    write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
