"""Evaluation metrics: CPU time of birefnet_core.metrics.suite against the official BiRefNet evaluator.

Two data sets: the six fixture pairs of tests/fixtures/eval (small, 64-320 px), and 50 pairs of
1024x1024 made from them: each prediction upscaled bilinearly, each ground truth upscaled
bilinearly and re-thresholded at 128 (smooth edges, thin parts kept), then turned by one of the
eight flips/rotations and rolled by a different offset per image.

The official side is ``evaluation/metrics.py`` of the BiRefNet repository, given with
``--official``; it needs opencv-python-headless, scipy and scikit-image (not requirements of
this pack: install them into a separate folder and put it on PYTHONPATH). It is timed as its
``evaluator`` runs once the images are loaded: each metric class's ``step`` per pair, and the
ground truth's skeleton from skimage for HCE. Ours is ``evaluate_pairs`` on the same arrays. The
script also checks that both give the same numbers, and reports the median of ``--repeats``
runs of each. By default ``evaluate_pairs`` scores the large set on a thread pool (one thread
per core) and the small fixture set in one thread; ``--workers N`` fixes the number of threads
(``--workers 1``: single-threaded). The official evaluator runs as written.

    PYTHONPATH=/path/to/evaldeps python bench/bench_metrics.py \
        --official /path/to/BiRefNet/evaluation/metrics.py [--out bench/results/metrics.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_json  # noqa: E402
from birefnet_core.metrics.suite import TABLE_COLUMNS, evaluate_pairs  # noqa: E402

Array = np.ndarray
Pairs = list[tuple[Array, Array]]
FIXTURE = ROOT / "tests" / "fixtures" / "eval" / "metrics_pairs.npz"


def fixture_pairs() -> Pairs:
    data = np.load(FIXTURE)
    return [(data[f"pred{i}"], data[f"gt{i}"]) for i in range(6)]


def large_pairs(count: int = 50, size: int = 1024) -> Pairs:
    """``count`` size x size pairs: upscaled fixture pairs, turned and rolled."""
    upscaled = []
    for pred, gt in fixture_pairs():
        pred = np.array(Image.fromarray(pred).resize((size, size), Image.BILINEAR))
        gt = np.array(Image.fromarray(gt).resize((size, size), Image.BILINEAR))
        upscaled.append((pred, np.where(gt > 128, 255, 0).astype(np.uint8)))
    pairs = []
    for index in range(count):
        pred, gt = upscaled[index % len(upscaled)]
        turn = index // len(upscaled) % 8
        shift = (37 * index % size, 91 * index % size)

        def transform(image: Array) -> Array:
            image = np.rot90(image, turn % 4)
            image = image[:, ::-1] if turn >= 4 else image
            return np.ascontiguousarray(np.roll(image, shift, axis=(0, 1)))

        pairs.append((transform(pred), transform(gt)))
    return pairs


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_birefnet_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_evaluator(module) -> Callable[[Pairs], dict[str, float]]:
    """The official metric classes, stepped per pair as its ``evaluator`` does."""
    from skimage.morphology import skeletonize

    def run(pairs: Pairs) -> dict[str, float]:
        names = ("E", "S", "F", "MAE", "WF", "HCE", "MBA", "BIoU")
        classes = (module.EMeasure, module.SMeasure, module.FMeasure, module.MAEMeasure,
                   module.WeightedFMeasure, module.HCEMeasure, module.MBAMeasure,
                   module.BIoUMeasure)
        measures = {name: cls() for name, cls in zip(names, classes)}
        for pred, gt in pairs:
            for name, measure in measures.items():
                if name == "HCE":
                    measure.step(pred=pred, gt=gt, gt_ske=skeletonize(gt > 128))
                else:
                    measure.step(pred=pred, gt=gt)
        em = measures["E"].get_results()["em"]
        fm = measures["F"].get_results()["fm"]
        biou = measures["BIoU"].get_results()["biou"]["curve"]
        return {"maxFm": fm["curve"].max(), "wFmeasure": measures["WF"].get_results()["wfm"],
                "MAE": measures["MAE"].get_results()["mae"],
                "Smeasure": measures["S"].get_results()["sm"], "meanEm": em["curve"].mean(),
                "HCE": measures["HCE"].get_results()["hce"], "maxEm": em["curve"].max(),
                "meanFm": fm["curve"].mean(), "adpEm": em["adp"], "adpFm": fm["adp"],
                "mBA": measures["MBA"].get_results()["mba"], "maxBIoU": biou.max(),
                "meanBIoU": biou.mean()}

    return run


def our_evaluator(workers: int | None) -> Callable[[Pairs], dict[str, float]]:
    """``evaluate_pairs`` with ``workers`` threads (None: its default)."""
    def run(pairs: Pairs) -> dict[str, float]:
        results = evaluate_pairs([p for p, _ in pairs], [g for _, g in pairs], workers=workers)
        return {name: results[name] for name in TABLE_COLUMNS}

    return run


def timed(function: Callable[[Pairs], dict], pairs: Pairs,
          repeats: int) -> tuple[dict[str, float], float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = function(pairs)
        times.append(time.perf_counter() - start)
    return results, statistics.median(times)


def largest_deviation(ours_: dict[str, float], theirs: dict[str, float]) -> float:
    return max(abs(ours_[k] - theirs[k]) / max(abs(theirs[k]), 1e-300) for k in TABLE_COLUMNS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=None,
                        help="the official evaluation/metrics.py (omit to time ours only)")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="threads for evaluate_pairs (default: its own choice)")
    parser.add_argument("--large-only", action="store_true",
                        help="skip the fixture set (quicker iterations)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    args = parser.parse_args(argv)

    official = official_evaluator(load_official(args.official)) if args.official else None
    ours = our_evaluator(args.workers)
    data_sets = [] if args.large_only else [("fixture_6", fixture_pairs())]
    data_sets.append((f"large_{args.images}x1024", large_pairs(args.images)))
    rows = []
    for name, pairs in data_sets:
        row: dict = {"data": name, "pairs": len(pairs), "workers": args.workers or "default"}
        results, row["ours_s"] = timed(ours, pairs, args.repeats)
        print(f"--- {name}: ours {row['ours_s']:.3f} s", flush=True)
        if official is not None:
            reference, row["official_s"] = timed(official, pairs, args.repeats)
            row["speedup"] = row["official_s"] / row["ours_s"]
            row["max_relative_deviation"] = largest_deviation(results, reference)
            print(f"    official {row['official_s']:.3f} s, speed-up {row['speedup']:.1f}x, "
                  f"largest relative deviation {row['max_relative_deviation']:.2e}", flush=True)
        row["results"] = {k: float(v) for k, v in results.items()}
        rows.append(row)
    write_json(args.out, {"repeats": args.repeats, "cpu_cores": os.cpu_count(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
