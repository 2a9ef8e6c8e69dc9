"""Command line: fine-tune a BiRefNet checkpoint on a folder of image/mask pairs.

    python -m birefnet_core.finetune --data DIR --init CHECKPOINT --out DIR
        [--epochs N] [--lr LR] [--batch-size B] [--accumulate K] [--resolution N|HxW]
        [--region-epochs M] [--task General] [--precision auto|fp32|bf16] ...

See :mod:`birefnet_core.training.finetune` for what it does.

Exit status: 0 on success, 2 for bad inputs (empty or mismatched folders, an unreadable
checkpoint, bad options).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import parse_resolution
from .errors import BiRefNetError
from .training.finetune import FORMATS, TASKS, FinetuneOptions, finetune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_core.finetune",
        description="Fine-tune BiRefNet on DIR/images and DIR/masks (paired by file name).")
    add = parser.add_argument
    add("--data", required=True, type=Path, metavar="DIR", help="folder with images/ and masks/")
    add("--init", required=True, metavar="CHECKPOINT",
        help="checkpoint file (or known model name) to start from")
    add("--out", required=True, type=Path, metavar="DIR", help="folder for the checkpoints")
    add("--epochs", type=int, default=10)
    add("--lr", type=float, default=None,
        help="learning rate (default: the official 1e-5, 1e-4 for DIS5K, times "
             "sqrt(batch-size * K / 4))")
    add("--batch-size", type=int, default=4)
    add("--accumulate", type=int, default=1, metavar="K",
        help="batches whose gradients are averaged into each optimiser step")
    add("--resolution", type=parse_resolution, default=None, metavar="N|HxW",
        help="training size, multiples of 32 (default: the model's own)")
    add("--region-epochs", type=int, default=0, metavar="M",
        help="train the last M epochs with the region-only loss weights")
    add("--task", choices=TASKS, default="General", help="which loss weights (official config)")
    add("--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="auto: bf16 autocast on CUDA when supported, fp32 elsewhere")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add("--freeze-bn", action="store_true",
        help="keep BatchNorm statistics fixed (advisable for batches of 1-2)")
    add("--save-every", type=int, default=0, metavar="N", help="also save every N epochs")
    add("--format", choices=FORMATS, default="both", help="checkpoint file format(s)")
    add("--patch-order", choices=("auto", "current", "legacy"), default="auto")
    add("--workers", type=int, default=0, help="data-loading processes")
    add("--seed", type=int, default=7)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    options = FinetuneOptions(**vars(args))
    try:
        result = finetune(options)
    except BiRefNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(path) for path in result.checkpoints), file=sys.stderr)
    if result.model.info.patch_order == "legacy":
        print("note: the model uses the legacy patch order; load the fine-tuned file with "
              "patch_order='legacy'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
