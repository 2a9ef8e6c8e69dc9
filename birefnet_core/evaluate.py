"""Command line: ``python -m birefnet_core.evaluate --pred DIR --gt DIR [--json OUT]``.

Scores the predictions in one folder against the ground truths in another, matched by file
name without extension (any image type the main CLI reads), and prints the BiRefNet
paper's table: maxFm wFmeasure MAE Smeasure meanEm HCE maxEm meanFm adpEm adpFm mBA maxBIoU
meanBIoU (see ``birefnet_core.metrics``). Images are read as 8-bit greyscale with PIL. Every
ground truth needs a prediction of the same size; predictions without a ground truth are
listed and ignored.

Exit status: 0 on success, 2 for bad input (missing folders or files, sizes that differ).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .data.images import images_by_stem, listing
from .errors import InputError
from .metrics.suite import MetricSuite, format_table


def match_pairs(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(prediction, ground truth) paths for every ground truth, and the unmatched predictions."""
    preds = images_by_stem(pred_dir, "prediction")
    gts = images_by_stem(gt_dir, "ground truth")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise InputError(f"{len(missing)} of {len(gts)} ground truths have no prediction in "
                         f"{pred_dir}: " + listing(gts[stem].name for stem in missing))
    extra = sorted(set(preds) - set(gts))
    return [(preds[stem], gts[stem]) for stem in sorted(gts)], [preds[s].name for s in extra]


def read_grey(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except OSError as error:
        raise InputError(f"cannot read {path}: {error}") from None


def evaluate_folders(pairs: list[tuple[Path, Path]], progress: bool = True) -> dict:
    """Score the pairs; every size mismatch is reported at once, before any metric runs."""
    images = [(read_grey(p), read_grey(g)) for p, g in tqdm(
        pairs, desc="reading", unit="pair", disable=not progress, leave=False)]
    wrong = [f"{p.name} is {pred.shape[1]}x{pred.shape[0]}, {g.name} is "
             f"{gt.shape[1]}x{gt.shape[0]}"
             for (p, g), (pred, gt) in zip(pairs, images) if pred.shape != gt.shape]
    if wrong:
        raise InputError(f"{len(wrong)} predictions differ in size from their ground truth "
                         "(width x height): " + listing(wrong))
    suite = MetricSuite()
    with tqdm(total=len(images), desc="evaluating", unit="pair", disable=not progress) as bar:
        suite.add_pairs([p for p, _ in images], [g for _, g in images],
                        on_pair=lambda: bar.update(1))
    return suite.results()




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_core.evaluate",
        description="Score predicted masks against ground truths with the BiRefNet paper's "
                    "metrics.")
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR",
                        help="folder of predicted masks (8-bit greyscale, white = foreground)")
    parser.add_argument("--gt", required=True, type=Path, metavar="DIR",
                        help="folder of ground-truth masks, matched to predictions by name")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help="also write every number (and the F, E and BIoU curves) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pairs, extra = match_pairs(args.pred, args.gt)
        if extra:
            print(f"ignored {len(extra)} predictions without a ground truth: {listing(extra)}",
                  file=sys.stderr)
        results = evaluate_folders(pairs, progress=not args.quiet)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(pairs)} pairs")
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": len(pairs), **results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
