"""What ``python -m birefnet_core`` writes: 8-bit PNGs per image (the default), 16-bit PNG or
float EXR stills per image, or every input as the frames of one clip or sequence.

The 16-bit, EXR and clip outputs go through ``data.write_matte``; a clip's frames arrive one at a
time from a generator, so the clip is never held in memory.
"""
from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data.matte import FORMATS as MATTE_FORMATS, MattesWritten, write_matte
from .data.matte_av import require_av
from .errors import InputError

STILL_FORMATS = ("png", "png16", "exr")
_STILL_MATTE_FORMAT = {"png16": "png_sequence_16bit", "exr": "exr_sequence"}


@dataclass(frozen=True)
class OutputChoice:
    still: str              # png (8-bit, today's outputs), png16 or exr, per image
    clip: str | None        # a write_matte format: every input becomes one clip's frames
    fps: float              # the clip's frame rate
    premultiply: bool       # colour x alpha in the cut-outs (straight otherwise)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--format, --alpha, --clip and --fps."""
    parser.add_argument("--format", choices=STILL_FORMATS, default="png",
                        help="per image: png writes 8-bit <name>_mask.png and <name>_cutout.png; "
                             "png16 writes both at 16 bits; exr writes <name>_cutout.exr "
                             "(float32 RGBA, the mask as its alpha; needs PyAV) (default: png)")
    parser.add_argument("--alpha", choices=("straight", "premultiplied"), default="straight",
                        help="colour of the cut-outs: straight, or multiplied by the alpha; "
                             "premultiplied needs --format png16 or exr, or --clip")
    parser.add_argument("--clip", choices=tuple(MATTE_FORMATS), metavar="FORMAT",
                        help="write all the inputs, in order, as the frames of one clip or "
                             "sequence named after the first input's folder: "
                             f"{', '.join(MATTE_FORMATS)} (every image must have one size)")
    parser.add_argument("--fps", type=float, default=None,
                        help="the --clip's frame rate (default: 24)")


def output_choice(args: argparse.Namespace, parser: argparse.ArgumentParser) -> OutputChoice:
    """The options checked together; a combination that cannot work exits through
    ``parser.error`` (status 2) saying which option to change."""
    if args.clip is not None and args.format != "png":
        parser.error(f"--clip {args.clip} writes one clip, not images: leave out --format "
                     f"{args.format} (choose the clip's depth with --clip, e.g. "
                     "png_sequence_16bit or exr_sequence)")
    if args.clip is None and args.fps is not None:
        parser.error("--fps is the frame rate of a --clip: add --clip FORMAT, or leave out --fps")
    premultiply = args.alpha == "premultiplied"
    if premultiply and args.clip is None and args.format == "png":
        parser.error("--alpha premultiplied needs --format png16 or exr, or --clip: the 8-bit "
                     "PNG cut-outs keep straight colour")
    if args.clip == "matte_only" and premultiply:
        parser.error("--clip matte_only writes the mask alone, with no colour to premultiply: "
                     "leave out --alpha premultiplied")
    return OutputChoice(args.format, args.clip, 24.0 if args.fps is None else args.fps,
                        premultiply)


def check_dependencies(choice: OutputChoice) -> None:
    """Fail before the model loads when the chosen format needs PyAV and it is missing
    (MissingDependencyError, which says what to install)."""
    name = choice.clip or _STILL_MATTE_FORMAT.get(choice.still)
    if name is not None and MATTE_FORMATS[name].needs_av:
        require_av(name)


def still_paths(out_dir: Path, stem: str, still: str) -> list[Path]:
    """The files one image's outputs go to in a --format other than png."""
    if still == "exr":
        return [out_dir / f"{stem}_cutout.exr"]
    return [out_dir / f"{stem}_mask.png", out_dir / f"{stem}_cutout.png"]


def save_still(rgb: Image.Image, mask: np.ndarray, out_dir: Path, stem: str,
               choice: OutputChoice) -> None:
    """One image's outputs at 16 bits or in float EXR. rgb: 8-bit RGB; mask: (H, W) float in
    [0, 1]. Each file is written under a temporary name and renamed into place, replacing an
    earlier run's output as the 8-bit PNGs do."""
    colour = np.asarray(rgb, dtype=np.float32)[None] / 255.0          # (1, H, W, 3)
    alpha = mask[None]                                                 # (1, H, W)
    if choice.still == "exr":
        _replace(out_dir / f"{stem}_cutout.exr", colour, alpha, "exr_sequence", choice)
        return
    mask_path, cutout_path = still_paths(out_dir, stem, "png16")
    _replace(mask_path, None, alpha, "matte_only", choice)
    _replace(cutout_path, colour, alpha, "png_sequence_16bit", choice)


def _replace(final: Path, colour: np.ndarray | None, alpha: np.ndarray, matte_format: str,
             choice: OutputChoice) -> None:
    temporary = final.with_name(f".{final.stem}.partial-{uuid.uuid4().hex[:8]}")
    written = write_matte(temporary, colour, alpha, format=matte_format, fps=1,
                          premultiply=choice.premultiply and colour is not None)
    try:
        os.replace(written.path, final)
    except BaseException:
        written.path.unlink(missing_ok=True)
        raise


def clip_path(out_dir: Path, first_input: Path) -> Path:
    """A clip is named after the folder its first frame is in (``frames/`` -> ``frames.mov``,
    or the folder ``frames/`` of ``frames_000000.png`` ...)."""
    return out_dir / (first_input.resolve().parent.name or "clip")


def write_clip(frames: Iterable[np.ndarray], path: Path, choice: OutputChoice) -> MattesWritten:
    """frames: (H, W, 4) float32 per image, colour with its mask as alpha, one at a time.
    An earlier run's clip is never replaced: InputError says what to do."""
    assert choice.clip is not None
    spec = MATTE_FORMATS[choice.clip]
    for taken in [path.with_name(path.name + spec.suffix)] + ([path] if spec.sequence else []):
        if taken.exists():
            raise InputError(f"{taken} already exists (an earlier run's?) and a --clip is never "
                             "replaced: remove it, or choose another -o folder (the clip is "
                             "named after its frames' folder)")
    return write_matte(path, frames, None, format=choice.clip, fps=choice.fps,
                       premultiply=choice.premultiply)


def describe(written: MattesWritten) -> str:
    depth = "float" if written.bit_depth == 32 else f"{written.bit_depth}-bit"
    return (f"{written.format}: {written.frames} frames, {written.width}x{written.height}, "
            f"{depth}, written to {written.path}")
