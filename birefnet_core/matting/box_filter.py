"""Box filters whose cost does not depend on the box size (running sums), for (B, C, H, W).

The window of pixel (y, x) covers rows ``y - size // 2 ... y + (size - 1) - size // 2`` and the
same columns, clipped to the image (a normalised box filter that does not pad).

Speed notes (CPU, measured on 2048x2048x7 float32, 2 threads): allocating a fresh 117 MB
tensor costs more than the arithmetic written into it (an out-of-place add took 35 ms, the same
add into an existing tensor 12 ms: the page faults dominate), so the passes here write into
buffers the caller hands in. Along the last dim a cumulative sum is fast; along rows torch's
CPU cumsum is several times slower, and a sliding window (one vectorised add and subtract per
row) wins. Other devices take the cumulative sum along both dims.
"""
from __future__ import annotations

import torch

from ..errors import InputError

__all__ = ["box_sum", "box_mean", "window_counts"]


def box_mean(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of every clipped ``size`` x ``size`` window of (B, C, H, W), same shape."""
    return box_sum(tensor, size) / window_counts(tensor.shape[-2], tensor.shape[-1], size,
                                                 tensor)


def box_sum(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Sum of every clipped ``size`` x ``size`` window of (B, C, H, W), same shape."""
    work = tensor.clone(memory_format=torch.contiguous_format)
    return box_sum_(work, size, torch.empty_like(work))


def box_sum_(tensor: torch.Tensor, size: int, scratch: torch.Tensor) -> torch.Tensor:
    """box_sum that overwrites ``tensor`` and ``scratch`` (both contiguous, same shape) and
    returns whichever of them holds the result."""
    if size < 1:
        raise InputError(f"box size must be at least 1, got {size}")
    _window_sum_cumulative(tensor, -1, size, scratch)                      # in place, dim -1
    if tensor.device.type == "cpu":
        return _window_sum_sliding_rows(tensor, size, scratch)
    return _window_sum_cumulative(tensor, -2, size, scratch)


def window_counts(height: int, width: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(H, W) number of in-image pixels in each clipped window, dtype/device of ``like``."""
    counts = []
    for length in (height, width):
        first, last = _window_bounds(torch.arange(length, device=like.device), size, length)
        counts.append(last - first)
    return (counts[0].view(-1, 1) * counts[1].view(1, -1)).to(like.dtype)


def _window_bounds(index: torch.Tensor, size: int, length: int) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """First and one-past-last in-range positions of the windows at ``index``."""
    before, after = size // 2, size - 1 - size // 2
    return (index - before).clamp(min=0), (index + after + 1).clamp(max=length)


def _window_sum_cumulative(tensor: torch.Tensor, dim: int, size: int,
                           scratch: torch.Tensor) -> torch.Tensor:
    """Clipped window sums along ``dim``, written back into ``tensor`` (scratch: same shape).

    With the inclusive running sum R, the sum over window [i - before, i + after] is
    R[min(i + after, L - 1)] - R[i - before - 1] (the second term only when i > before).
    Positions are split where either clip starts, so each piece is one slice operation.
    """
    length = tensor.shape[dim]
    before, after = size // 2, size - 1 - size // 2
    running = torch.cumsum(tensor, dim=dim, out=scratch)
    cuts = sorted({0, length, min(length, before + 1), max(0, length - after)})
    for start, stop in zip(cuts, cuts[1:]):
        target = tensor.narrow(dim, start, stop - start)
        if stop + after <= length:
            top = running.narrow(dim, start + after, stop - start)
        else:
            top = running.narrow(dim, length - 1, 1).expand_as(target)
        if start > before:
            torch.sub(top, running.narrow(dim, start - before - 1, stop - start), out=target)
        else:
            target.copy_(top)
    return tensor


def _window_sum_sliding_rows(tensor: torch.Tensor, size: int, out: torch.Tensor) -> torch.Tensor:
    """Clipped window sums along dim -2 into ``out``: each row = previous + entering - leaving."""
    height = tensor.shape[-2]
    before, after = size // 2, size - 1 - size // 2
    torch.sum(tensor[..., :min(after + 1, height), :], dim=-2, out=out[..., 0, :])
    for row in range(1, height):
        if row + after < height:
            torch.add(out[..., row - 1, :], tensor[..., row + after, :], out=out[..., row, :])
        else:
            out[..., row, :].copy_(out[..., row - 1, :])
        if row > before:
            out[..., row, :].sub_(tensor[..., row - before - 1, :])
    return out
