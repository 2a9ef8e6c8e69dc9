"""Command line: ``python -m birefnet_core.export MODEL -o model.onnx`` exports a checkpoint.

Exit status: 0 when the file was written and checked, 2 for a usage error, a model that
cannot be loaded or an export that failed (nothing is left behind then).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import BiRefNetError
from ..weights.hub import default_models_dir, resolve_checkpoint
from ..weights.loading import load_model
from .graph import DEFAULT_OPSET, MIN_OPSET, export_onnx
from .runtime import CPU_ADVICE, cpu_advice


def _size(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"sizes are positive multiples of 32, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_core.export",
        description="Export a BiRefNet checkpoint to ONNX (standard operators only; the "
                    "deformable convolutions become GridSample + Conv).",
        epilog=f"Advice: {CPU_ADVICE}.")
    parser.add_argument("model", metavar="MODEL",
                        help="a known model name (downloaded on first use) or a checkpoint file")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.onnx")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="precision inside the graph; input and output stay float32")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--size", nargs=2, type=_size, metavar=("H", "W"),
                       help="the fixed input size (default: the model's own resolution)")
    shape.add_argument("--dynamic", action="store_true",
                       help="any height and width (multiples of 32); the batch is always free")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, at least {MIN_OPSET} (default {DEFAULT_OPSET})")
    parser.add_argument("--sigmoid", action="store_true",
                        help="output the mask in [0, 1] instead of logits")
    parser.add_argument("--patch-order", choices=("auto", "current", "legacy"), default="auto")
    parser.add_argument("--models-dir", metavar="DIR", default=None,
                        help=f"where named models are kept (default {default_models_dir()})")
    parser.add_argument("--verbose", action="store_true", help="show the exporter's output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output).expanduser()
    if output.suffix.lower() != ".onnx":
        print(f"error: the output must end in .onnx, got {output}", file=sys.stderr)
        return 2
    try:
        checkpoint = resolve_checkpoint(args.model, args.models_dir)
        model = load_model(checkpoint, patch_order=args.patch_order)
        height, width = args.size or model.info.resolution
        shape = "any size" if args.dynamic else f"{height}x{width}"
        print(f"exporting BiRefNet {model.info.variant} from {checkpoint} ({args.dtype}, "
              f"{shape}, opset {args.opset}): this takes minutes", file=sys.stderr)
        report = export_onnx(model, output, dtype=args.dtype, size=args.size,
                             dynamic=args.dynamic, opset=args.opset, sigmoid=args.sigmoid,
                             verbose=args.verbose)
    except BiRefNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(f) for f in report.files)} ({report.bytes / 2**20:.1f} MiB in "
          f"{report.seconds:.0f} s; passes onnx.checker)\nrun it: python -m birefnet_core "
          f"IMAGES -o DIR --model {output}\nadvice: {cpu_advice()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
