"""BiRefNetSaveMatte: write frames with their alpha (ProRes 4444, VP9 alpha WebM, FFV1, 16/8-bit
PNG or float EXR sequences, or the matte alone) into ComfyUI's output folder.

The UI message: ``images`` holds a preview of the first frame (a PNG in the temp folder, as
core's preview nodes send), ``text`` and ``birefnet_metrics`` one line (format, frames, size,
bit depth, path relative to the output folder), and ``matte_files`` every file written as
``{"filename", "subfolder", "type": "output"}`` entries, the form core's savers use, so that a
headless client finds them in /history and fetches them through /view.
"""
from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..birefnet_core.data import MATTE_FORMATS, MattesWritten, write_matte
from ..birefnet_core.errors import BiRefNetError
from .tensors import NodeInputError

NODE = "BiRefNetSaveMatte"
ALPHA_MODES = ("straight", "premultiplied")
PREVIEW_SIDE = 512
_DEPTHS = {8: "8-bit", 10: "10-bit", 16: "16-bit", 32: "32-bit float"}


class BiRefNetSaveMatte:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames (3 or 4 channels), e.g. Video Matte's "
                                             "foreground or cutout_rgba."}),
            "format": (list(MATTE_FORMATS), {
                "default": "prores_4444",
                "tooltip": "prores_4444 (.mov, 10-bit with alpha, for editors); webm_vp9_alpha "
                           "(browsers; lossy, even sizes only); ffv1_lossless (.mkv, 16-bit, "
                           "exact); png_sequence_16bit / png_sequence_8bit; exr_sequence "
                           "(float32); matte_only (the mask alone as a 16-bit grey PNG "
                           "sequence). PNG formats need no PyAV."}),
            "alpha": (list(ALPHA_MODES), {
                "default": "straight",
                "tooltip": "straight: colour as is; premultiplied: colour x alpha (what "
                           "compositors such as Nuke expect from EXR)."}),
            "fps": ("FLOAT", {"default": 24.0, "min": 0.0, "max": 1000.0, "step": 0.001,
                              "tooltip": "Frame rate of the clip; connect Get Video "
                                         "Components' fps to keep the source's."}),
            "filename_prefix": ("STRING", {"default": "BiRefNet/matte",
                                           "tooltip": "Name in ComfyUI's output folder; a "
                                                      "counter is added, files are never "
                                                      "overwritten."}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "The alpha, one mask per frame; without it the images' "
                                         "fourth channel is used."}),
            "audio": ("AUDIO", {"tooltip": "Sound for the clip (Get Video Components' audio); "
                                           "written as a .wav beside a sequence."}),
        }}

    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = "BiRefNet"
    DESCRIPTION = ("Save frames with their alpha for editors and compositors: ProRes 4444, "
                   "VP9 with alpha, FFV1, 16-bit PNG, EXR, or the matte alone.")

    @classmethod
    def VALIDATE_INPUTS(cls, fps=None, filename_prefix=None, **_):
        if fps is not None:
            problem = fps_problem(fps)
            if problem:
                return problem
        if isinstance(filename_prefix, str):
            return prefix_problem(filename_prefix) or True
        return True

    def save(self, images, format, alpha, fps, filename_prefix, mask=None, audio=None) -> dict:
        problem = fps_problem(fps) or prefix_problem(filename_prefix)
        if problem:
            raise NodeInputError(problem)
        frames = _checked_images(images)
        mask = _checked_mask(mask, frames)
        folder, name = _free_name(filename_prefix, frames.shape[2], frames.shape[1],
                                  MATTE_FORMATS[format], still=frames.shape[0] == 1 and audio is None)
        bar = comfy.utils.ProgressBar(frames.shape[0])
        try:
            written = write_matte(folder / name, _frames_reporting(frames, bar), mask,
                                  format=format, fps=float(fps),
                                  premultiply=alpha == "premultiplied", audio=_audio(audio))
        except (BiRefNetError, ValueError) as error:
            raise NodeInputError(f"{NODE}: {error}") from error
        return {"ui": _ui(written, frames, mask), "result": ()}


def fps_problem(fps: float) -> str | None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 < fps <= 1000):
        return (f"{NODE}: fps must be above 0, got {fps}: set the clip's frame rate (e.g. 24, 25, "
                "30 or 29.97) or connect Get Video Components' fps")
    return None


def prefix_problem(prefix: str) -> str | None:
    parts = prefix.replace("\\", "/").split("/")
    absolute = os.path.isabs(prefix) or prefix.startswith(("/", "\\")) or prefix[1:2] == ":"
    if not prefix.strip() or ".." in parts or absolute:
        return (f"{NODE}: filename_prefix {prefix!r} must be a name inside ComfyUI's output "
                "folder, optionally with subfolders (e.g. BiRefNet/matte): no '..', no absolute "
                "path, not empty")
    return None


def _checked_images(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images.unsqueeze(0)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0 \
            or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise NodeInputError(f"{NODE}: images must be an IMAGE batch (frames, height, width, "
                             f"3 or 4 channels), got {shape}")
    return images


def _checked_mask(mask, frames: torch.Tensor) -> torch.Tensor | None:
    count, height, width = frames.shape[:3]
    if mask is None:
        if frames.shape[-1] != 4:
            raise NodeInputError(
                f"{NODE}: no alpha to save: connect a mask (e.g. Video Matte's masks) or images "
                "with 4 channels (Video Matte's cutout_rgba)")
        return None
    if not isinstance(mask, torch.Tensor):
        raise NodeInputError(f"{NODE}: mask must be a MASK tensor, got {type(mask).__name__}")
    mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
    if mask.ndim != 3 or tuple(mask.shape) != (count, height, width):
        raise NodeInputError(
            f"{NODE}: the mask ({' x '.join(map(str, mask.shape))}) does not match the frames "
            f"({count} x {height} x {width}, frames x height x width): connect the mask made from "
            "these frames, one per frame at their size (Video Matte's masks output)")
    return mask


def _free_name(prefix: str, width: int, height: int, spec, still: bool) -> tuple[Path, str]:
    """(folder, name): the next counter whose clip, still or sequence folder is free."""
    output = folder_paths.get_output_directory()
    folder, filename, counter, _, _ = folder_paths.get_save_image_path(
        prefix, output, width, height)
    # A clip is name_00001_.mov as core's Save Video names it, a still name_00001_.png as Save
    # Image does (ComfyUI's counter reads the digits up to the next "_"); a sequence of several
    # frames is the folder name_00001.
    ending = "_" if still or not spec.sequence else ""
    suffix = "" if spec.sequence else spec.suffix

    def taken(number: int) -> bool:
        stem = os.path.join(folder, f"{filename}_{number:05}{ending}")
        return os.path.exists(stem + suffix) or os.path.exists(stem + spec.suffix)

    while taken(counter):
        counter += 1
    return Path(folder), f"{filename}_{counter:05}{ending}{suffix}"


def _frames_reporting(frames: torch.Tensor, bar) -> Iterator[torch.Tensor]:
    """One frame (1, H, W, C) at a time, with progress and ComfyUI's cancel button."""
    for index in range(frames.shape[0]):
        mm.throw_exception_if_processing_interrupted()
        yield frames[index:index + 1]
        bar.update_absolute(index + 1, frames.shape[0])


def _audio(audio) -> tuple[torch.Tensor, int] | None:
    """ComfyUI AUDIO {"waveform": (B, C, S), "sample_rate"} -> (first item's (C, S), rate)."""
    if audio is None:
        return None
    try:
        return audio["waveform"][0], int(audio["sample_rate"])
    except (KeyError, TypeError, IndexError) as error:
        raise NodeInputError(f"{NODE}: audio must be an AUDIO value (from Get Video Components "
                             "or Load Audio)") from error


def _ui(written: MattesWritten, frames: torch.Tensor,
        mask: torch.Tensor | None) -> dict:
    output = Path(folder_paths.get_output_directory())
    relative = written.path.relative_to(output).as_posix()
    summary = (f"{written.format}: {written.frames} frame{'s' * (written.frames != 1)}, "
               f"{written.width}x{written.height}, {_DEPTHS[written.bit_depth]}")
    line = f"{summary}, {relative}"
    files = [{"filename": f.name, "subfolder": _subfolder(f.parent, output), "type": "output"}
             for f in written.files]
    return {"images": [_preview(frames, mask, written.format)], "text": [line],
            "birefnet_metrics": [f"{summary}\n{relative}"],      # two lines on the node
            "matte_files": files}


def _subfolder(folder: Path, output: Path) -> str:
    relative = folder.relative_to(output).as_posix()
    return "" if relative == "." else relative


def _preview(frames: torch.Tensor, mask: torch.Tensor | None, format: str) -> dict:
    """The first frame as an RGBA PNG (grey for matte_only) in the temp folder."""
    first = frames[0].float().clamp(0, 1).cpu()
    alpha = (mask[0] if mask is not None else first[..., 3]).float().clamp(0, 1).cpu()
    if format == "matte_only":
        array, mode = alpha.numpy(), "L"
    else:
        rgb = first[..., :3] if first.shape[-1] != 1 else first.expand(-1, -1, 3)
        array, mode = torch.cat([rgb, alpha[..., None]], dim=-1).numpy(), "RGBA"
    image = Image.fromarray(np.rint(array * 255).astype(np.uint8), mode)
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    name = f"birefnet_{NODE}_{uuid.uuid4().hex[:12]}.png"
    image.save(os.path.join(folder, name), compress_level=1)
    return {"filename": name, "subfolder": "", "type": "temp"}
