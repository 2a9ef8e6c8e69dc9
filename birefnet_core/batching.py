"""Run ``predict`` over a large batch in chunks, halving the chunk when the device runs out of
memory. Each chunk's masks leave the device as soon as they are made, so device memory is
bounded by the chunk, not the batch.
"""
from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch
import torch.nn as nn

from .inference import predict

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
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total = images.shape[0]
    device = next(model.parameters()).device
    output_device = torch.device(output_device) if output_device is not None else images.device
    results: list[torch.Tensor] = []
    start = 0
    while start < total:
        chunk = images[start:start + batch_size]
        try:
            masks = predict(model, chunk.to(device), resolution)
        except Exception as error:       # noqa: BLE001 - only out-of-memory is handled
            if not is_out_of_memory(error) or batch_size == 1:
                raise
            release_device_memory(device)
            batch_size = max(1, batch_size // 2)
            logger.warning("BiRefNet ran out of memory; retrying with %d image(s) per pass",
                           batch_size)
            continue
        results.append(masks.to(output_device))
        start += chunk.shape[0]
        if progress is not None:
            progress(start, total)
    return torch.cat(results, dim=0)
