"""Video matting: batched forward passes over a stream of frames, temporal stabilisation, and
optional per-frame edge refinement, in memory bounded by the batch rather than the clip.

    masks = matte_video(model, frames, batch_size=8, stabilize=0.5)        # (T, 1, H, W)
    for frame, mask in stream_mattes(model, frame_iterator, stabilize=0.5):  # one at a time
        ...
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from ..errors import InputError
from ..matting.refine import refine_mask
from .batching import Progress, iter_predictions
from .temporal import TemporalStabilizer

__all__ = ["auto_batch_size", "auto_batch_size_on", "matte_video", "stream_mattes"]

Frames = torch.Tensor | Iterable[torch.Tensor]    # (T, 3, H, W) or (3, H, W) frames in [0, 1]


def matte_video(model: nn.Module, frames: Frames, *, batch_size: int | None = None,
                stabilize: float = 0.0, resolution: int | tuple[int, int] | None = None,
                method: str = "median", refine: dict | None = None,
                output_device: torch.device | str | None = None,
                progress: Progress | None = None) -> torch.Tensor:
    """Masks (T, 1, H, W) in [0, 1] for a clip; see stream_mattes for the arguments.

    Only the masks are kept. When the frames have a length (a tensor, a list, a video reader
    with ``__len__``) the result is allocated once and filled; from a plain generator the masks
    are collected and stacked at the end (briefly twice their size).
    """
    pairs = stream_mattes(model, frames, batch_size=batch_size, stabilize=stabilize,
                          resolution=resolution, method=method, refine=refine,
                          output_device=output_device, progress=progress)
    count = len(frames) if hasattr(frames, "__len__") else None
    masks: list[torch.Tensor] = []
    result = None
    for index, (_, mask) in enumerate(pairs):
        if count is None:
            masks.append(mask)
            continue
        if result is None:
            result = mask.new_empty((count, *mask.shape))
        result[index] = mask
    if count is None and masks:
        result = torch.stack(masks)
    if result is None:
        raise InputError("the video has no frames")
    return result


def stream_mattes(model: nn.Module, frames: Frames, *, batch_size: int | None = None,
                  stabilize: float = 0.0, resolution: int | tuple[int, int] | None = None,
                  method: str = "median", refine: dict | None = None,
                  output_device: torch.device | str | None = None,
                  progress: Progress | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (frame (3, H, W), mask (1, H, W)) for every frame, in order.

    frames: a (T, 3, H, W) tensor or any iterable of (3, H, W) tensors (1 or 4 channels are
    accepted; alpha is ignored), float in [0, 1], all of one size. batch_size frames go through
    the network per pass (halved automatically on out-of-memory; the masks do not change);
    None or 0 picks one: see auto_batch_size.
    stabilize: 0 = each frame's own mask, exactly as ``predict`` gives it; up to 1 = strongest
    temporal smoothing (method "median" or "ema", see birefnet_core.temporal). refine: keyword
    arguments for ``refine_mask`` applied to each frame after stabilisation (None = off).
    Masks and frames come out on ``output_device`` (default: where the frames were).
    progress(done, total) runs after every pass (total 0 when the stream has no length) and
    may raise to stop; the pass in flight is the last one run.
    """
    if isinstance(frames, torch.Tensor) and frames.ndim != 4:
        raise InputError(f"frames must be a (T, C, H, W) tensor or an iterable of (C, H, W) "
                         f"frames, got a tensor of shape {tuple(frames.shape)}")
    stabilizer = TemporalStabilizer(stabilize, method)
    for chunk, masks in iter_predictions(model, frames, resolution=resolution,
                                         batch_size=batch_size or auto_batch_size(model), output_device=output_device,
                                         progress=progress):
        chunk = chunk.to(masks.device)
        for frame, mask in zip(chunk, masks):
            rgb = frame.expand(3, -1, -1) if frame.shape[0] == 1 else frame[:3]
            yield from _refined(stabilizer.push(rgb, mask), refine)
    yield from _refined(stabilizer.flush(), refine)


def auto_batch_size(model: nn.Module) -> int:
    """Frames per pass when none is given: 1 on the CPU, 4 on an accelerator.

    On the CPU batching does not pay: bench/bench_video.py measured Swin-T at 1024² at 0.319
    frames/s one frame per pass and 0.260 four per pass (the activations of four frames no
    longer stay in cache), at 512² 1.280 and 1.206. On a GPU a batch keeps the device
    busy between kernel launches and host transfers, which single frames leave idle.
    """
    return auto_batch_size_on(next(model.parameters()).device)


def auto_batch_size_on(device: torch.device | str) -> int:
    """``auto_batch_size`` for a model that will run on ``device`` (before it is moved there)."""
    return 1 if torch.device(device).type == "cpu" else 4


def _refined(pairs: list[tuple[torch.Tensor, torch.Tensor]],
             refine: dict | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for frame, mask in pairs:
        if refine:
            mask = refine_mask(frame[None], mask[None], **refine)[0]
        yield frame, mask
