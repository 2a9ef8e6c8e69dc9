"""Run ``predict`` over a large batch in chunks, halving the chunk when the device runs out of
memory. Each chunk's masks leave the device as soon as they are made, so device memory is
bounded by the chunk, not the batch.
"""
from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from ..errors import InputError
from .predict import predict

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]   # (done, total); may raise to stop between chunks


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA, MPS and CPU allocators report running out of memory in different ways."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text
                                                or "not enough memory" in text
                                                or "mps backend out of memory" in text)


def release_device_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error so the retry has room."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def predict_batched(model: nn.Module, images: torch.Tensor, *,
                    resolution: int | tuple[int, int] | None = None, batch_size: int = 4,
                    output_device: torch.device | str | None = None,
                    progress: Progress | None = None) -> torch.Tensor:
    """``predict`` over (B, 3, H, W) images, ``batch_size`` at a time -> (B, 1, H, W).

    The images may stay on the CPU: each chunk is moved to the model's device on its own. On
    out-of-memory the chunk size is halved and the same chunk retried (the result does not
    depend on the chunk size); at one image per chunk the error is raised. ``progress`` is
    called after every chunk and may raise (for instance an interrupt) to stop.
    """
    output_device = torch.device(output_device) if output_device is not None else images.device
    masks = [chunk_masks for _, chunk_masks in iter_predictions(
        model, images, resolution=resolution, batch_size=batch_size,
        output_device=output_device, progress=progress)]
    return torch.cat(masks, dim=0)


def iter_predictions(model: nn.Module, frames: Iterable[torch.Tensor], *,
                     resolution: int | tuple[int, int] | None = None, batch_size: int = 4,
                     output_device: torch.device | str | None = "cpu",
                     progress: Progress | None = None,
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``predict`` over a stream of (3, H, W) frames (or a (T, 3, H, W) tensor), yielding
    (frames (n, 3, H, W), masks (n, 1, H, W)) chunk by chunk, in order.

    Only the current chunk is held: device memory is bounded by ``batch_size``, host memory by
    the chunk plus what the caller keeps. Out-of-memory halves the chunk as predict_batched
    does. ``progress(done, total)`` (total: the stream's length, or 0 when unknown) runs
    after every chunk and may raise to stop between chunks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total = len(frames) if hasattr(frames, "__len__") else 0
    device = next(model.parameters()).device
    source = _Chunks(frames)
    while (chunk := source.peek(batch_size)) is not None:
        try:
            masks = predict(model, chunk, resolution, output_device=(
                output_device if output_device is not None else chunk.device))
        except Exception as error:       # noqa: BLE001 - only out-of-memory is handled
            if not is_out_of_memory(error) or batch_size == 1:
                raise
            release_device_memory(device)
            batch_size = max(1, batch_size // 2)
            logger.warning("BiRefNet ran out of memory; retrying with %d image(s) per pass",
                           batch_size)
            continue
        source.advance(chunk.shape[0])
        yield chunk, masks
        if progress is not None:
            progress(source.done, total)


class _Chunks:
    """The next frames of a (T, C, H, W) tensor (slices: no copy) or of an iterable of
    (C, H, W) frames (read ahead only as far as one chunk, then stacked)."""

    def __init__(self, frames: torch.Tensor | Iterable[torch.Tensor]) -> None:
        self.tensor = frames if isinstance(frames, torch.Tensor) else None
        self.source = None if self.tensor is not None else iter(frames)
        self.pending: list[torch.Tensor] = []
        self.done = 0

    def peek(self, count: int) -> torch.Tensor | None:
        """Up to ``count`` frames from the current position, or None at the end."""
        if self.tensor is not None:
            chunk = self.tensor[self.done:self.done + count]
            return chunk if chunk.shape[0] else None
        self.pending.extend(itertools.islice(self.source, max(0, count - len(self.pending))))
        return _stack_frames(self.pending[:count], self.done) if self.pending else None

    def advance(self, count: int) -> None:
        del self.pending[:count]
        self.done += count


def _stack_frames(frames: list[torch.Tensor], first_index: int) -> torch.Tensor:
    """(n, 3, H, W) from n frames of equal size; names the first frame that differs."""
    for offset, frame in enumerate(frames):
        if not isinstance(frame, torch.Tensor) or frame.ndim != 3:
            shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
            raise InputError(f"frame {first_index + offset} must be a (C, H, W) tensor, got "
                             f"{shape}")
        if frame.shape != frames[0].shape:
            raise InputError(f"frame {first_index + offset} is {tuple(frame.shape)} but frame "
                             f"{first_index} is {tuple(frames[0].shape)}: all frames of a video "
                             "must have one size")
    return torch.stack(frames)
