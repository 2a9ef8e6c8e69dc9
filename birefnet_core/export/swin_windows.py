"""Swin's shifted windows written for tracing at a symbolic size.

The eager Swin (``network.backbones.swin``) precomputes, per feature-map size, one gather that
pads, shifts and partitions the tokens, cached by size: fast, but a table of indices for one
size, which a graph exported for any size cannot hold. While exporting, each Swin stage runs
this equivalent form instead: zero padding to window multiples, ``roll``, window partition,
attention, the inverse steps and a crop. It computes the same function (padding slots are
zero vectors after ``norm1`` in both) and is checked against the eager model by the export
tests through onnxruntime.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..network.backbones.swin import (SwinBlock, SwinStage, shifted_window_mask,
                                      window_merge, window_partition)


def _block_forward(block: SwinBlock, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x: (B, H*W, C) -> (B, H*W, C), as ``SwinBlock.forward`` with its window layout."""
    batch, tokens, channels = x.shape
    window, shift = block.window, block.shift
    shortcut = x
    x = block.norm1(x).view(batch, height, width, channels)
    pad_h, pad_w = -height % window, -width % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))                          # (B, Hp, Wp, C)
    padded_h, padded_w = height + pad_h, width + pad_w
    mask = None
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        mask = shifted_window_mask(padded_h, padded_w, window, shift, x.device)
    windows = block.attn(window_partition(x, window), mask)           # (B*nW, N, C)
    x = window_merge(windows, window, padded_h, padded_w)             # (B, Hp, Wp, C)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + x[:, :height, :width].reshape(batch, tokens, channels)
    return x + block.mlp(block.norm2(x))


def _stage_forward(stage: SwinStage, x: torch.Tensor, height: int, width: int):
    """``SwinStage.forward`` with ``_block_forward`` for its blocks."""
    for block in stage.blocks:
        x = _block_forward(block, x, height, width)
    if stage.downsample is None:
        return x, x, height, width
    return x, stage.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


@contextmanager
def exportable_swin(model: nn.Module) -> Iterator[None]:
    """Within the block, every Swin stage of ``model`` uses the traceable window form."""
    stages = [m for m in model.modules() if isinstance(m, SwinStage)]
    for stage in stages:
        stage.forward = lambda x, h, w, stage=stage: _stage_forward(stage, x, h, w)
    try:
        yield
    finally:
        for stage in stages:
            del stage.forward
