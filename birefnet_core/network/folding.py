"""Inference-time rewrites of a loaded BiRefNet that change its cost, not its function.

``fold_batchnorm`` merges every eval-mode BatchNorm into the convolution before it (including
the deformable convolutions, which are linear in their weights), so the forward pass makes no
separate normalisation passes, and gives each deformable convolution one convolution for its
offsets and modulator instead of two. The folded model computes the same function up to float
rounding; its state dict no longer has BatchNorm keys, so save checkpoints from an unfolded
model (``load_model(..., fuse=False)``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import ASPPDeformable, BasicDecBlk, DeformableBranch
from .deform_conv import DeformableConv2d
from .model import BiRefNet


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Identity:
    """conv's weights absorb norm's affine transform; returns the Identity that replaces norm."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)              # (O,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
    return nn.Identity()


def fold_batchnorm(model: BiRefNet) -> BiRefNet:
    """Fold all BatchNorm layers of an eval-mode model into their convolutions and merge the
    offset convolutions, in place."""
    if model.training:
        raise RuntimeError("BatchNorm can only be folded in eval mode")
    for module in list(model.modules()):
        if isinstance(module, BasicDecBlk):
            module.bn_in = _fold(module.conv_in, module.bn_in)
            module.bn_out = _fold(module.conv_out, module.bn_out)
        elif isinstance(module, DeformableBranch):
            module.bn = _fold(module.atrous_conv.regular_conv, module.bn)
        elif isinstance(module, DeformableConv2d):
            module.fuse_offset_convs()
        elif isinstance(module, ASPPDeformable):
            module.global_avg_pool[2] = _fold(module.global_avg_pool[1], module.global_avg_pool[2])
            module.bn1 = _fold(module.conv1, module.bn1)
    decoder = model.decoder
    for level in (4, 3, 2):
        gate = getattr(decoder, f"gdt_convs_{level}")
        gate[1] = _fold(gate[0], gate[1])
    return model
