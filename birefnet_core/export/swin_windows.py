"""Swin's shifted windows written for tracing at a symbolic size, while exporting.

The eager Swin (``network.backbones.swin``) precomputes, per feature-map size, one gather that
pads, shifts and partitions the tokens, cached by size: fast, but a table of indices for one
size, which a graph exported for any size cannot hold. While exporting, each Swin stage runs
its ``forward_padded`` instead (padding, ``roll``, partition, attention, the inverse steps and
a crop): the same function, checked against the eager model by the export tests through
onnxruntime.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn

from ..network.backbones.swin import SwinStage


@contextmanager
def exportable_swin(model: nn.Module) -> Iterator[None]:
    """Within the block, every Swin stage of ``model`` uses the traceable window form."""
    stages = [m for m in model.modules() if isinstance(m, SwinStage)]
    for stage in stages:
        stage.forward = stage.forward_padded
    try:
        yield
    finally:
        for stage in stages:
            del stage.forward
