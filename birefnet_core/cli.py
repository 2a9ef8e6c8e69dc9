"""Command line: ``python -m birefnet_core IMAGES... -o DIR`` writes a mask and a cut-out per image.

For every input ``photo.jpg`` it writes ``DIR/photo_mask.png`` (8-bit greyscale, white = kept)
and ``DIR/photo_cutout.png`` (the image with the mask as its alpha channel); ``--format png16``
writes both at 16 bits, ``--format exr`` a float ``DIR/photo_cutout.exr``. ``--clip FORMAT``
writes all the inputs as the frames of one clip or sequence instead (cli_output). Folders among
the inputs contribute the image files directly inside them.

Exit status: 0 when every image was processed, 1 when some could not be read or written (the
rest are still processed), 2 for a usage error or a model that cannot be loaded.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .cli_output import (OutputChoice, add_output_options, check_dependencies, clip_path,
                         describe, output_choice, save_still, write_clip)
from .data.images import collect_images, mask_image, read_image, save_outputs
from .errors import BiRefNetError, InputError
from .inference.detail import refine_detail
from .inference.predict import predict
from .inference.region import segment_region
from .network.compiled import compile_state
from .network.cpu_features import auto_dtype
from .weights.hub import default_models_dir, resolve_checkpoint
from .weights.loading import load_model

DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class UsageError(Exception):
    """A command line that cannot run on this machine (e.g. ``--device cuda`` without CUDA)."""


def parse_resolution(text: str) -> int | tuple[int, int]:
    """``"1024"`` -> 1024, ``"1440x2560"`` -> (1440, 2560); each a positive multiple of 32."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or any(size <= 0 or size % 32 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"expected N or HxW with multiples of 32 (e.g. 1024 or 1440x2560), got {text!r}")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_core",
        description="Remove the background of images with BiRefNet.")
    parser.add_argument("images", nargs="+", metavar="IMAGES",
                        help="image files, or folders whose image files are all processed")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder for <name>_mask.png and <name>_cutout.png, or the "
                             "--clip (created)")
    parser.add_argument("--model", default="BiRefNet", metavar="NAME_OR_PATH",
                        help="a known model name (downloaded on first use), a checkpoint file, "
                             "or an .onnx file exported by python -m birefnet_core.export (run "
                             "by onnxruntime) (default: BiRefNet)")
    parser.add_argument("--resolution", type=parse_resolution, metavar="N|HxW",
                        help="working size, multiples of 32 (default: the model's own)")
    parser.add_argument("--detail", action="store_true",
                        help="refine the mask at the image's own pixel scale: the model runs "
                             "again on tiles along the subject's edge (for large photos)")
    parser.add_argument("--guide", metavar="MASK_PATH", type=Path,
                        help="a mask image of the subject to cut out (white = subject, e.g. "
                             "from SAM or a paint program), the size of every input image")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="auto: cuda if available, else mps, else cpu")
    add_speed_options(parser)
    add_output_options(parser)
    parser.add_argument("--patch-order", choices=("auto", "current", "legacy"), default="auto",
                        help="inward-reference patch order the checkpoint was trained with")
    parser.add_argument("--models-dir", metavar="DIR", default=None,
                        help=f"where named models are kept (default: $BIREFNET_MODELS_DIR or "
                             f"{default_models_dir()})")
    return parser


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    """--dtype and --compile, shared by the commands that run the model."""
    parser.add_argument("--dtype", choices=("auto", *DTYPE_NAMES, "int8"), default="auto",
                        help="auto: fp16 on cuda; on a CPU bf16 where it runs bfloat16 "
                             "natively (a short probe decides), else fp32; fp32 elsewhere. "
                             "int8 (CPU only) quantises the backbone's linear layers: the "
                             "faster choice on CPUs without native bf16 (see README for "
                             "speeds and mask differences)")
    parser.add_argument("--compile", action="store_true",
                        help="run the backbone through torch.compile (first image at each size "
                             "compiles; falls back to the plain model where it cannot)")


def choose_device(name: str) -> torch.device:
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise UsageError(f"--device {name} was asked for, but this PyTorch build sees no {name} "
                         "device; use --device cpu or auto")
    return torch.device(name)


def choose_dtype(name: str, device: torch.device) -> torch.dtype | str:
    if name == "auto":
        return auto_dtype(device)[0]
    if name == "int8":
        if device.type != "cpu":
            raise UsageError(f"--dtype int8 runs on the CPU only, not on {device}; use "
                             "--device cpu, or fp16/bf16 on a GPU")
        return "int8"
    return DTYPE_NAMES[name]





def compute_mask(model: torch.nn.Module, rgb: Image.Image,
                 resolution: int | tuple[int, int] | None, *, detail: bool = False,
                 guide: torch.Tensor | None = None) -> Image.Image:
    """The 8-bit mask of one RGB image (compute_float_mask, rounded to 256 levels)."""
    return mask_image(compute_float_mask(model, rgb, resolution, detail=detail, guide=guide))


def compute_float_mask(model: torch.nn.Module, rgb: Image.Image,
                       resolution: int | tuple[int, int] | None, *, detail: bool = False,
                       guide: torch.Tensor | None = None) -> np.ndarray:
    """The (H, W) float32 mask of one RGB image, at the image's size; ``guide`` (1, 1, H, W)
    picks the subject (segment_region), ``detail`` refines the edge with tiles."""
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)
    batch = pixels.permute(2, 0, 1).unsqueeze(0)
    if guide is not None:
        masks = segment_region(model, batch, guide, resolution=resolution)
    else:
        masks = predict(model, batch, resolution=resolution)
    if detail:
        masks = refine_detail(model, batch, masks, resolution=resolution)
    return np.clip(masks[0, 0].float().cpu().numpy(), 0.0, 1.0)


def read_guide(path: Path) -> torch.Tensor:
    """A guide mask file -> (1, 1, H, W) float in [0, 1] (its grey levels; white = subject)."""
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the guide mask {path}: {exc}") from exc
    return torch.from_numpy(grey)[None, None]




class Progress:
    """A tqdm bar on stderr when tqdm is installed, else one counter line per image."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self._bar: Any = None
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, unit="image", file=sys.stderr, dynamic_ncols=True)

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def advance(self, name: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        else:
            print(f"[{self.done}/{self.total}] {name}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def process_images(model: torch.nn.Module, paths: Sequence[Path], out_dir: Path,
                   resolution: int | tuple[int, int] | None, *, detail: bool = False,
                   guide: torch.Tensor | None = None, choice: OutputChoice | None = None) -> int:
    """Segment every image; report the ones that fail and return how many failed."""
    failures, stems_used = 0, set()
    progress = Progress(len(paths))
    try:
        for path in paths:
            if path.stem in stems_used:
                progress.note(f"warning: {path} has the same name as an earlier input; its "
                              "outputs replace that one's")
            stems_used.add(path.stem)
            try:
                rgb = read_image(path)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                progress.note(f"error: cannot read image {path}: {exc}")
                failures += 1
            else:
                try:
                    mask = compute_float_mask(model, rgb, resolution, detail=detail,
                                              guide=guide)
                    if choice is None or choice.still == "png":
                        save_outputs(rgb, mask_image(mask), out_dir, path.stem)
                    else:
                        save_still(rgb, mask, out_dir, path.stem, choice)
                except OSError as exc:
                    progress.note(f"error: cannot write the outputs of {path}: {exc}")
                    failures += 1
                except BiRefNetError as exc:           # e.g. a guide of another size
                    progress.note(f"error: {path}: {exc}")
                    failures += 1
            progress.advance(path.name)
    finally:
        progress.close()
    return failures


def clip_frames(model: torch.nn.Module, paths: Sequence[Path],
                resolution: int | tuple[int, int] | None, *, detail: bool = False,
                guide: torch.Tensor | None = None) -> Iterator[np.ndarray]:
    """(H, W, 4) float32 per image, one at a time: its colour in [0, 1] with its mask as alpha.
    An image that cannot be read, or whose size differs from the first's, stops the clip."""
    progress, first = Progress(len(paths)), None
    try:
        for path in paths:
            try:
                rgb = read_image(path)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise InputError(f"cannot read image {path}: {exc}; remove it from the inputs "
                                 "to write the clip without it") from exc
            if first is None:
                first = (path, rgb.size)
            elif rgb.size != first[1]:
                raise InputError(
                    f"{path} is {rgb.size[0]}x{rgb.size[1]} but the clip began with {first[0]} "
                    f"at {first[1][0]}x{first[1][1]}: every frame of a --clip must have one "
                    "size; resize the images, or leave out --clip to write each on its own")
            mask = compute_float_mask(model, rgb, resolution, detail=detail, guide=guide)
            colour = np.asarray(rgb, dtype=np.float32) / 255.0
            yield np.concatenate([colour, mask[..., None]], axis=-1)     # (H, W, 4)
            progress.advance(path.name)
    finally:
        progress.close()


def _open_onnx(path: str, *, device: str, dtype: str, patch_order: str,
               announce: bool) -> torch.nn.Module:
    """An exported .onnx file run by onnxruntime (python -m birefnet_core.export made it)."""
    from .export.runtime import cpu_advice, load_onnx_model     # onnxruntime stays optional
    if device == "mps":
        raise UsageError("an .onnx file runs through onnxruntime on cpu or cuda; use --device "
                         "auto, cpu or cuda (or the checkpoint itself on mps)")
    network = load_onnx_model(path, device=device)
    baked = {"dtype": network.export["dtype"], "patch_order": network.info.patch_order}
    for option, asked in (("dtype", dtype), ("patch_order", patch_order)):
        if asked != "auto" and asked != baked[option]:
            raise UsageError(f"{path} was exported with {option.replace('_', ' ')} "
                             f"{baked[option]}; --{option.replace('_', '-')} {asked} cannot "
                             "change it: export the checkpoint again, or leave the option auto")
    if announce:
        providers = ", ".join(p.removesuffix("ExecutionProvider") for p in network.providers)
        print(f"BiRefNet {network.info.variant} from {path} (ONNX, {baked['dtype']}) on "
              f"onnxruntime [{providers}], patch order {baked['patch_order']}", file=sys.stderr)
        if network.providers[0] == "CPUExecutionProvider":
            print(f"note: {cpu_advice()}", file=sys.stderr)
    return network


def open_model(model: str, *, device: str = "auto", dtype: str = "auto",
               patch_order: str = "auto", models_dir: str | None = None,
               announce: bool = True, compile: bool = False) -> torch.nn.Module:
    """The model a command was asked for: a known name (downloaded on first use), a
    checkpoint file on the chosen device and dtype, or an exported .onnx file (run by
    onnxruntime, same predict contract). Every command opens models through here."""
    if str(model).lower().endswith(".onnx"):
        if compile:
            raise UsageError("--compile applies to checkpoints; an .onnx file is optimised "
                             "by onnxruntime itself")
        return _open_onnx(model, device=device, dtype=dtype, patch_order=patch_order,
                          announce=announce)
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    checkpoint = resolve_checkpoint(model, models_dir)
    network = load_model(checkpoint, device=torch_device, dtype=torch_dtype,
                         patch_order=patch_order, compile=compile)
    if announce:
        info = network.info
        precision = "int8 linear layers" if info.int8 else str(torch_dtype).removeprefix("torch.")
        if dtype == "auto":
            precision += f"; dtype auto chose {auto_dtype(torch_device)[1]}"
        print(f"BiRefNet {info.variant} from {checkpoint} on {torch_device} "
              f"({precision}{', torch.compile at the first image' if compile else ''}), patch order "
              f"{info.patch_order}", file=sys.stderr)
    return network


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    choice = output_choice(args, parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    paths, missing = collect_images(args.images)
    for text in missing:
        print(f"error: no such image or folder: {text}", file=sys.stderr)
    if not paths:
        print("error: no images to process", file=sys.stderr)
        return 2
    out_dir = Path(args.output).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the output folder {out_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        check_dependencies(choice)
        guide = read_guide(args.guide) if args.guide is not None else None
        model = open_model(args.model, device=args.device, dtype=args.dtype,
                           patch_order=args.patch_order, models_dir=args.models_dir,
                           compile=args.compile)
        if choice.clip is not None:
            frames = clip_frames(model, paths, args.resolution, detail=args.detail, guide=guide)
            written = write_clip(frames, clip_path(out_dir, paths[0]), choice)
            print(describe(written), file=sys.stderr)
            return 1 if missing else 0
        failures = process_images(model, paths, out_dir, args.resolution, detail=args.detail,
                                  guide=guide, choice=choice)
    except (BiRefNetError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths) - failures} of {len(paths)} images written to {out_dir}",
          file=sys.stderr)
    if args.compile and failures < len(paths):         # what compiling did, once it was tried
        state = compile_state(model)
        print(f"torch.compile: {'compiled' if state == 'on' else state}", file=sys.stderr)
    return 1 if failures or missing else 0
