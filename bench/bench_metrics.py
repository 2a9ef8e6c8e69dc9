"""Evaluation metrics: CPU time of birefnet_core.metrics.suite against the official BiRefNet evaluator.

Two data sets: the six fixture pairs of tests/fixtures/eval (small, 64-320 px), and 64 pairs of
1024x1024 made from them (``--images``): each prediction upscaled bilinearly, each ground truth
upscaled bilinearly and re-thresholded at 128 (smooth edges, thin parts kept), then turned by one
of the eight flips/rotations and rolled by a different offset per image.

The official side is ``evaluation/metrics.py`` of the BiRefNet repository, given with
``--official``; it needs opencv-python-headless, scipy and scikit-image (requirements-bench.txt).
Both sides are timed once the images are in memory, each at its best and each single-threaded:

- ``official_pool``: what its ``evaluator`` runs above 50 pairs, ``process_metrics_batch`` on a
  pool of min(8, pairs) threads (computing and writing each skeleton, as on a first run);
- ``ours_pool``: ``evaluate_pairs`` on its pool (one thread per core, or ``--workers N``);
- ``official_1_thread``: its metric classes stepped pair after pair, as its ``evaluator`` does
  up to 50 pairs or with ``num_workers=1``;
- ``ours_1_thread``: ``evaluate_pairs(..., workers=1)``.

They take turns (one run of each per round, ``--repeats`` rounds, median reported), so other load
on the machine hits all alike. The script also checks that all give the same numbers.

    python bench/bench_metrics.py --official /path/to/BiRefNet/evaluation/metrics.py \
        [--images 64] [--out bench/results/metrics.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
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


MEASURES = ("E", "S", "F", "MAE", "WF", "HCE", "MBA", "BIoU")   # the evaluator's, less MSE


def official_table(measures: dict) -> dict[str, float]:
    """The paper's table from the official measure objects, as its ``evaluator`` reports it."""
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


def _new_measures(module) -> dict:
    classes = (module.EMeasure, module.SMeasure, module.FMeasure, module.MAEMeasure,
               module.WeightedFMeasure, module.HCEMeasure, module.MBAMeasure, module.BIoUMeasure)
    return {name: cls() for name, cls in zip(MEASURES, classes)}


def official_evaluator(module) -> Callable[[Pairs], dict[str, float]]:
    """The official metric classes, stepped per pair as its ``evaluator`` does up to 50 pairs
    (or with ``num_workers=1``): one thread, the ground truth's skeleton from skimage."""
    from skimage.morphology import skeletonize

    def run(pairs: Pairs) -> dict[str, float]:
        measures = _new_measures(module)
        for pred, gt in pairs:
            for name, measure in measures.items():
                if name == "HCE":
                    measure.step(pred=pred, gt=gt, gt_ske=skeletonize(gt > 128))
                else:
                    measure.step(pred=pred, gt=gt)
        return official_table(measures)

    return run


def official_pooled_evaluator(module, scratch: Path) -> Callable[[Pairs], dict[str, float]]:
    """What the official ``evaluator`` runs above 50 pairs once the images are loaded: its
    ``process_metrics_batch`` (a pool of min(8, pairs) threads, one set of measures per pair,
    merged). It takes the skeleton from a ``/ske/`` file next to the ground truth or computes and
    writes one; every run gets a new empty folder, so it computes them, as on a first run."""
    runs = iter(range(1_000_000))

    def run(pairs: Pairs) -> dict[str, float]:
        folder = scratch / f"run{next(runs)}"
        data = [{"idx": index, "gt": gt, "pred": pred,
                 "gt_path": str(folder / "gt" / f"{index}.png"),
                 "pred_path": str(folder / "pred" / f"{index}.png")}
                for index, (pred, gt) in enumerate(pairs)]
        measures = module.process_metrics_batch(data, _new_measures(module), list(MEASURES),
                                                verbose=False, num_workers=8)
        return official_table(measures)

    return run


def our_evaluator(workers: int | None) -> Callable[[Pairs], dict[str, float]]:
    """``evaluate_pairs`` with ``workers`` threads (None: its default)."""
    def run(pairs: Pairs) -> dict[str, float]:
        results = evaluate_pairs([p for p, _ in pairs], [g for _, g in pairs], workers=workers)
        return {name: results[name] for name in TABLE_COLUMNS}

    return run


def timed_interleaved(evaluators: dict[str, Callable[[Pairs], dict]], pairs: Pairs,
                      repeats: int) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Each evaluator once per round, in turn, ``repeats`` rounds: what else runs on the machine
    hits all of them alike. Returns the last results and all times of each."""
    results, times = {}, {name: [] for name in evaluators}
    for _ in range(repeats):
        for name, function in evaluators.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[name] = function(pairs)
            times[name].append(time.perf_counter() - start)
    return results, times


def largest_deviation(ours_: dict[str, float], theirs: dict[str, float]) -> float:
    return max(abs(ours_[k] - theirs[k]) / max(abs(theirs[k]), 1e-300) for k in TABLE_COLUMNS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=None,
                        help="the official evaluation/metrics.py (omit to time ours only)")
    parser.add_argument("--images", type=int, default=64,
                        help="pairs in the large set (the official pool needs more than 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="threads for our pooled run (default: its own choice)")
    parser.add_argument("--large-only", action="store_true",
                        help="skip the fixture set (quicker iterations)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    args = parser.parse_args(argv)

    module = load_official(args.official) if args.official else None
    data_sets = [] if args.large_only else [("fixture_6", fixture_pairs())]
    data_sets.append((f"large_{args.images}x1024", large_pairs(args.images)))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, pairs in data_sets:
            evaluators = {}
            if module is not None and len(pairs) > 50:         # where its evaluator pools
                evaluators["official_pool"] = official_pooled_evaluator(module, Path(scratch))
            evaluators["ours_pool"] = our_evaluator(args.workers)
            if module is not None:
                evaluators["official_1_thread"] = official_evaluator(module)
            evaluators["ours_1_thread"] = our_evaluator(1)
            results, times = timed_interleaved(evaluators, pairs, args.repeats)
            row: dict = {"data": name, "pairs": len(pairs), "workers": args.workers or "default",
                         "seconds": {k: statistics.median(v) for k, v in times.items()},
                         "all_seconds": times}
            print(f"--- {name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in row["seconds"].items()),
                  flush=True)
            if module is not None:
                reference = results["official_1_thread"]
                row["max_relative_deviation"] = {k: largest_deviation(v, reference)
                                                 for k, v in results.items()}
                seconds = row["seconds"]
                row["speedup_single_thread"] = (seconds["official_1_thread"]
                                                / seconds["ours_1_thread"])
                if "official_pool" in seconds:
                    row["speedup_pooled"] = seconds["official_pool"] / seconds["ours_pool"]
                deviation = max(row["max_relative_deviation"].values())
                print("    speed-up " + ", ".join(f"{k[8:]} {v:.2f}x" for k, v in row.items()
                                                   if k.startswith("speedup")) +
                      f"; largest relative deviation {deviation:.2e}", flush=True)
            row["results"] = {k: float(v) for k, v in results["ours_pool"].items()}
            rows.append(row)
    write_json(args.out, {"repeats": args.repeats, "cpu_cores": os.cpu_count(),
                          "interleaved": True, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
