"""Writing mattes that keep their alpha: ProRes 4444, VP9 with alpha, FFV1, 16/8-bit PNG and
float EXR sequences, or the matte alone, from frames that arrive batch by batch.

``write_matte`` converts and encodes one frame at a time (a clip is never held twice) and is
atomic: it writes under a temporary name in the destination folder and renames at the end; on
any error the partial file or folder is removed, so nothing half-written carries the final name.

Sizes: webm_vp9_alpha stores colour at half resolution (4:2:0) and refuses odd widths or
heights (the error says how to fix it); every other format takes any size.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
import uuid
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BiRefNetError, InputError
from .matte_av import ClipWriter, MissingDependencyError, quantise, write_exr
from .png16 import encode_png

__all__ = ["FORMATS", "MatteFormat", "MatteWriteError", "MattesWritten", "MissingDependencyError",
           "write_matte"]


@dataclass(frozen=True)
class MatteFormat:
    name: str
    suffix: str             # the clip's file suffix, or each frame's for a sequence
    sequence: bool          # a folder of numbered frames rather than one file
    bit_depth: int          # per channel as stored (32: float)
    needs_av: bool
    even_size: bool = False  # 4:2:0 chroma: width and height must be even
    grey: bool = False       # the matte alone, one channel


FORMATS = {f.name: f for f in (
    MatteFormat("prores_4444", ".mov", False, 10, True),
    MatteFormat("webm_vp9_alpha", ".webm", False, 8, True, even_size=True),
    MatteFormat("png_sequence_16bit", ".png", True, 16, False),
    MatteFormat("png_sequence_8bit", ".png", True, 8, False),
    MatteFormat("exr_sequence", ".exr", True, 32, True),
    MatteFormat("ffv1_lossless", ".mkv", False, 16, True),
    MatteFormat("matte_only", ".png", True, 16, False, grey=True),
)}


class MatteWriteError(BiRefNetError, OSError):
    """The matte could not be written (disk full, no permission); nothing was left behind."""


@dataclass
class MattesWritten:
    path: Path                  # the clip, or the sequence's folder
    files: list[Path]           # every file written (a clip: itself; a sequence: its frames)
    format: str
    frames: int
    width: int
    height: int
    bit_depth: int


def write_matte(path: str | Path, frames: Any, alpha: Any, *, format: str, fps: float,
                premultiply: bool, audio: tuple[Any, int] | None = None) -> MattesWritten:
    """Write a matted clip or sequence.

    frames: colour as (B, H, W, C) or (H, W, C) float in [0, 1] (numpy or torch; C 3 or 4), or an
    iterable of such batches; None for ``matte_only`` with ``alpha`` given. alpha: (B, H, W) or
    (H, W) in [0, 1] or an iterable of them; None to use the frames' fourth channel.
    path: the clip file (the format's suffix is added if missing) or, for sequences, the folder to
    create (frames inside are ``<folder name>_000000.png`` ...); a sequence of one frame without
    audio (a still) is the single file ``<path><suffix>`` instead. audio: (samples (channels, S)
    float in [-1, 1], sample rate), muxed into clips and written as ``<name>.wav`` beside a
    sequence's frames. Raises InputError for bad input, MissingDependencyError when PyAV is
    needed and missing, MatteWriteError when the disk refuses; never leaves a partial result.
    """
    spec = _format(format)
    _check_fps(fps)
    final = Path(path)
    if not spec.sequence and final.suffix.lower() != spec.suffix:
        final = final.with_name(final.name + spec.suffix)
    for taken in (final, _still_path(final, spec)):
        if taken.exists():
            raise InputError(f"{taken} already exists; write_matte never overwrites: choose "
                             "another name")
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}{final.suffix}")
    target = _Target(spec, temporary, final, fps, _audio_array(audio))
    try:
        for rgba in _rgba_frames(spec, frames, alpha, premultiply):
            target.write(rgba)
        written = target.finish()
    except BaseException as error:
        target.abort()
        if isinstance(error, OSError) and not isinstance(error, BiRefNetError):
            raise MatteWriteError(_os_problem(error, final)) from error
        raise
    return written


def _still_path(final: Path, spec: MatteFormat) -> Path:
    """Where a one-frame sequence goes: a file beside the folder it would have been."""
    return final.with_name(final.name + spec.suffix)


def _format(name: str) -> MatteFormat:
    if name not in FORMATS:
        raise InputError(f"unknown matte format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def _check_fps(fps: float) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 < fps <= 1000):
        raise InputError(f"fps must be a frame rate above 0 (at most 1000), got {fps!r}: set "
                         "it to the clip's rate, e.g. 24, 25, 30 or 29.97 (Get Video Components "
                         "outputs it)")


def _os_problem(error: OSError, final: Path) -> str:
    if error.errno == errno.ENOSPC:
        hint = "the disk is full: free some space or choose an output folder on another disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the folder is not writable: choose another output folder"
    else:
        hint = "check the output folder"
    return (f"could not write {final}: {error.strerror or error}; {hint}. Nothing was left "
            "under that name")


def _audio_array(audio: tuple[Any, int] | None) -> tuple[np.ndarray, int] | None:
    if audio is None:
        return None
    samples, rate = audio
    samples = _numpy(samples).astype(np.float32)
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2 or samples.shape[0] > 8 or int(rate) <= 0:
        raise InputError("audio must be (samples (channels, count), sample rate > 0), got shape "
                         f"{tuple(samples.shape)} at {rate}")
    return np.clip(samples, -1.0, 1.0), int(rate)


# -- frames in ---------------------------------------------------------------------------------
def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):                       # a torch tensor, without importing torch
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def _each_frame(source: Any, frame_ndim: int) -> Iterator[np.ndarray]:
    """Frames of a batch, a single frame, or an iterable of either, one at a time."""
    items = [source] if hasattr(source, "shape") else source
    for item in items:
        if not hasattr(item, "shape"):
            item = np.asarray(item)
        if item.ndim == frame_ndim + 1:
            for index in range(item.shape[0]):
                yield _numpy(item[index])
        elif item.ndim == frame_ndim:
            yield _numpy(item)
        else:
            what = "(B, H, W, C) or (H, W, C)" if frame_ndim == 3 else "(B, H, W) or (H, W)"
            raise InputError(f"expected {'frames' if frame_ndim == 3 else 'alpha'} shaped {what}, "
                             f"got {tuple(item.shape)}")


def _rgba_frames(spec: MatteFormat, frames: Any, alpha: Any,
                 premultiply: bool) -> Iterator[np.ndarray]:
    """(H, W, 4) float32 frames (premultiplied if asked), or (H, W) mattes for matte_only."""
    if frames is None and (alpha is None or not spec.grey):
        raise InputError("no frames given: pass the colour frames (and alpha), or alpha alone "
                         "for matte_only")
    colours: Iterable = _each_frame(frames, 3) if frames is not None else iter(())
    alphas: Iterable | None = _each_frame(alpha, 2) if alpha is not None else None
    size = None
    for index, (colour, matte) in enumerate(_pairs(colours, alphas, frames is None)):
        matte = _alpha_of(colour, matte, index)
        if size is None:
            size = matte.shape
            _check_size(spec, size)
        elif matte.shape != size:
            raise InputError(f"frame {index} is {matte.shape[1]}x{matte.shape[0]} but the clip "
                             f"began at {size[1]}x{size[0]}; every frame must have one size")
        if spec.grey:
            yield matte
            continue
        rgb = _channels(colour, index)
        if rgb.shape[:2] != matte.shape:
            raise InputError(f"frame {index}: the alpha is {matte.shape[1]}x{matte.shape[0]} but "
                             f"the image is {rgb.shape[1]}x{rgb.shape[0]}; connect the mask made "
                             "from these frames")
        yield np.concatenate([rgb * matte[..., None] if premultiply else rgb,
                              matte[..., None]], axis=-1)
    if size is None:
        raise InputError("no frames to write: the batch is empty")


def _pairs(colours: Iterable, alphas: Iterable | None, alpha_only: bool):
    if alpha_only:
        yield from ((None, matte) for matte in alphas)
        return
    if alphas is None:
        yield from ((colour, None) for colour in colours)
        return
    colour_iter, alpha_iter, index = iter(colours), iter(alphas), 0
    while True:
        colour = next(colour_iter, None)
        matte = next(alpha_iter, None)
        if colour is None and matte is None:
            return
        if colour is None or matte is None:
            longer = "alpha" if colour is None else "images"
            raise InputError(f"the images and the alpha differ in length: the {longer} go on "
                             f"past frame {index}; connect a mask with one frame per image")
        yield colour, matte
        index += 1


def _finite01(x: np.ndarray, what: str, index: int) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputError(f"frame {index}: the {what} holds NaN or infinite values; check the "
                         "node that made it")
    return np.clip(x, 0.0, 1.0)


def _alpha_of(colour: np.ndarray | None, matte: np.ndarray | None, index: int) -> np.ndarray:
    if matte is not None:
        return _finite01(matte, "alpha", index)
    if colour is None or colour.shape[-1] != 4:
        raise InputError("no alpha: connect a mask, or images with a fourth (alpha) channel such "
                         "as Video Matte's cutout_rgba")
    return _finite01(colour[..., 3], "alpha", index)


def _channels(colour: np.ndarray, index: int) -> np.ndarray:
    if colour.shape[-1] not in (1, 3, 4):
        raise InputError(f"frame {index}: images must have 1, 3 or 4 channels, got "
                         f"{colour.shape[-1]}")
    rgb = colour[..., :3] if colour.shape[-1] != 1 else np.repeat(colour, 3, axis=-1)
    return _finite01(rgb, "image", index)


def _check_size(spec: MatteFormat, size: tuple[int, int]) -> None:
    height, width = size
    if spec.even_size and (width % 2 or height % 2):
        even = f"{width - width % 2}x{height - height % 2}"
        raise InputError(
            f"{spec.name} stores colour at half resolution (4:2:0) and needs an even width and "
            f"height, but the frames are {width}x{height}: crop or scale them to {even} (or "
            f"{width + width % 2}x{height + height % 2}), or choose prores_4444, ffv1_lossless "
            "or a PNG sequence, which take any size")


# -- files out ---------------------------------------------------------------------------------
class _Target:
    """The temporary file or folder being written, renamed to its final name at the end."""

    def __init__(self, spec: MatteFormat, temporary: Path, final: Path, fps: float,
                 audio: tuple[np.ndarray, int] | None) -> None:
        self.spec, self.temporary, self.final = spec, temporary, final
        self.fps, self.audio = fps, audio
        self.clip: ClipWriter | None = None
        self.count, self.size = 0, (0, 0)
        if spec.sequence:
            temporary.mkdir()

    def write(self, rgba: np.ndarray) -> None:
        self.size = rgba.shape[:2]
        if self.spec.sequence:
            self._write_still(rgba)
        else:
            if self.clip is None:
                self.clip = ClipWriter(self.temporary, self.spec.name, rgba.shape[1],
                                       rgba.shape[0], self.fps, self.audio)
            self.clip.write(rgba)
        self.count += 1

    def _frame_name(self, index: int) -> str:
        return f"{self.final.name}_{index:06d}{self.spec.suffix}"

    def _write_still(self, pixels: np.ndarray) -> None:
        path = self.temporary / self._frame_name(self.count)
        if self.spec.suffix == ".exr":
            write_exr(path, pixels)
            return
        data = encode_png(quantise(pixels, self.spec.bit_depth))
        with open(path, "wb") as file:
            file.write(data)

    def finish(self) -> MattesWritten:
        if self.clip is not None:
            self.clip.close()
        elif self.audio is not None:
            _write_wav(self.temporary / f"{self.final.name}.wav", *self.audio)
        if self.spec.sequence and self.count == 1 and self.audio is None:
            return self._finish_still()
        if self.final.exists():
            _exists(self.final)
        os.replace(self.temporary, self.final)
        files = [self.final] if not self.spec.sequence else \
            [self.final / self._frame_name(i) for i in range(self.count)]
        return self._written(self.final, files)

    def _finish_still(self) -> MattesWritten:
        still = _still_path(self.final, self.spec)
        if still.exists():
            _exists(still)
        os.replace(self.temporary / self._frame_name(0), still)
        self.temporary.rmdir()
        return self._written(still, [still])

    def _written(self, path: Path, files: list[Path]) -> MattesWritten:
        return MattesWritten(path, files, self.spec.name, self.count, self.size[1], self.size[0],
                             self.spec.bit_depth)

    def abort(self) -> None:
        if self.clip is not None:
            self.clip.abort()
        if self.temporary.is_dir():
            shutil.rmtree(self.temporary, ignore_errors=True)
        elif self.temporary.exists():
            try:
                self.temporary.unlink()
            except OSError:
                pass


def _exists(final: Path) -> None:
    raise InputError(f"{final} appeared while the matte was being written; write_matte never "
                     "overwrites: choose another name")


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """(channels, S) float -> 16-bit PCM WAV (standard library only)."""
    pcm = np.rint(samples.T * 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(samples.shape[0])
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm.tobytes())


