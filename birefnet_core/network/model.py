"""BiRefNet: backbone with multi-scale input, context fusion, squeeze block and decoder."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import build_backbone
from .blocks import BasicDecBlk
from .cpu_kernels import checked_kernels
from .decoder import Decoder, resize
from .variants import BiRefNetVariant


class BiRefNet(nn.Module):
    """ImageNet-normalised images (B, 3, H, W), H and W multiples of 32 -> logits (B, 1, H, W).

    Submodule names (``bb``, ``squeeze_module``, ``decoder``) are those of the official
    checkpoints, which load into this module unchanged.
    """

    def __init__(self, variant: BiRefNetVariant, patch_order: str = "current") -> None:
        super().__init__()
        self.variant = variant
        self.bb = build_backbone(variant.backbone)
        widths = variant.encoder_channels                   # x1..x4 after concatenation
        fused = widths[3] + sum(widths[3 - variant.context_features:3])
        self.squeeze_module = nn.Sequential(*(
            BasicDecBlk(fused if i == 0 else widths[3], widths[3],
                        inner_channels=variant.decoder_channels,
                        aspp_channels=variant.aspp_channels,
                        aspp_kernel_sizes=variant.aspp_kernel_sizes)
            for i in range(variant.squeeze_blocks)))
        self.decoder = Decoder(variant, patch_order)

    @property
    def patch_order(self) -> str:
        return self.decoder.patch_order

    @patch_order.setter
    def patch_order(self, order: str) -> None:
        self.decoder.patch_order = order

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features x1..x4 (strides 4..32): full and half-size backbone passes concatenated,
        with the shallower stages fused into the deepest one."""
        height, width = x.shape[-2:]
        full = self.bb(x)
        half = self.bb(F.interpolate(x, size=(height // 2, width // 2), mode="bilinear",
                                     align_corners=True))
        feats = [torch.cat((f, resize(h, f.shape[-2:])), dim=1) for f, h in zip(full, half)]
        context = [resize(f, feats[3].shape[-2:]) for f in feats[:3]]
        context = context[3 - self.variant.context_features:]
        feats[3] = torch.cat((*context, feats[3]), dim=1)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with checked_kernels(self, x):        # packed CPU kernels: made or checked once here
            x1, x2, x3, x4 = self.encode(x)
            x4 = self.squeeze_module(x4)
            return self.decoder(x, x1, x2, x3, x4)

    def release_caches(self) -> None:
        """Drop what the model keeps between forwards beside its weights (packed CPU kernels,
        per-size tables): every submodule's ``release_caches``. They are made again when
        needed; ComfyUI's unload calls this."""
        for module in self.modules():
            release = getattr(module, "release_caches", None)
            if module is not self and release is not None:
                release()
