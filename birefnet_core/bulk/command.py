"""Command line: ``python -m birefnet_core.bulk --input SRC --output DST [options]``.

Exit status: 0 when every image is done (now or by an earlier run), 1 when some failed (the
rest are done; the manifest says which and why), 2 when the run cannot start (bad arguments,
no such input, a model that cannot be had, Ray not installed or the cluster too small).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..cli import DTYPE_NAMES, parse_resolution
from ..errors import BiRefNetError
from ..weights.hub import default_models_dir
from .pipeline import run


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_core.bulk",
        description="Remove the background of many images with BiRefNet on Ray Data (one "
                    "machine or a cluster). Needs: pip install \"ray[data]\".")
    parser.add_argument("--input", required=True, metavar="SRC",
                        help="a folder, a glob ('photos/**/*.jpg', quoted), a .txt file with one "
                             "path per line, or one image; local, or s3://, gs://, ... URIs")
    parser.add_argument("--output", required=True, metavar="DST",
                        help="folder for <name>_mask.png, <name>_cutout.png and "
                             "bulk_manifest.csv (created; on a cluster, mounted on every node)")
    parser.add_argument("--model", default="BiRefNet", metavar="NAME_OR_PATH",
                        help="a known model name (downloaded on first use) or a checkpoint file")
    parser.add_argument("--resolution", type=parse_resolution, metavar="N|HxW",
                        help="working size, multiples of 32 (default: the model's own)")
    parser.add_argument("--detail", action="store_true",
                        help="refine each mask at the image's own pixel scale (refine_detail)")
    parser.add_argument("--refine-foreground", action="store_true",
                        help="cut-outs with the subject's own colours at soft edges")
    parser.add_argument("--address", metavar="RAY_ADDRESS",
                        help="a Ray cluster to run on: auto (the one `ray start` runs here), "
                             "HOST:PORT or ray://head:10001 (default: a new local Ray)")
    parser.add_argument("--actors", type=_positive, default=1, metavar="N",
                        help="model replicas (default 1; one per GPU on a GPU cluster)")
    parser.add_argument("--gpus-per-actor", type=float, metavar="G",
                        help="GPUs each actor holds (default: 1 when the cluster has GPUs, else "
                             "0: CPU actors)")
    parser.add_argument("--batch-size", type=_positive, metavar="N",
                        help="images per forward pass (default: 4 on GPUs, 1 on CPUs)")
    parser.add_argument("--threads-per-actor", type=_positive, metavar="N",
                        help="torch threads of each CPU actor (default: the CPUs / actors)")
    parser.add_argument("--num-cpus", type=_positive, metavar="N",
                        help="CPUs a local Ray may use (default: all)")
    parser.add_argument("--dtype", choices=("auto", *DTYPE_NAMES, "int8"), default="auto",
                        help="auto: fp16 on GPUs, fp32 on CPUs")
    parser.add_argument("--models-dir", metavar="DIR",
                        help=f"where named models are kept (default: $BIREFNET_MODELS_DIR or "
                             f"{default_models_dir()})")
    parser.add_argument("--manifest", metavar="CSV",
                        help="where the manifest goes (default: DST/bulk_manifest.csv)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        summary = run(args.input, args.output, model=args.model, resolution=args.resolution,
                      detail=args.detail, refine_foreground=args.refine_foreground,
                      address=args.address, actors=args.actors,
                      gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size,
                      threads_per_actor=args.threads_per_actor, num_cpus=args.num_cpus,
                      dtype=args.dtype, models_dir=args.models_dir, manifest=args.manifest,
                      progress=not args.quiet)
    except (BiRefNetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.text(), file=sys.stderr)
    return 1 if summary.failed else 0
