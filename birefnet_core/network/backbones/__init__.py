"""Backbones BiRefNet was released with: Swin v1 (t/s/b/l) and PVT v2 (b0/b1/b2/b5)."""
from __future__ import annotations

import torch.nn as nn

from ..variants import BackboneConfig, SwinConfig
from .pvt_v2 import PyramidVisionTransformerV2
from .swin import SwinTransformer


def build_backbone(config: BackboneConfig) -> nn.Module:
    """A backbone mapping (B, 3, H, W) to four feature maps at strides 4, 8, 16, 32."""
    if isinstance(config, SwinConfig):
        return SwinTransformer(config)
    return PyramidVisionTransformerV2(config)
