"""BiRefNet variants: one frozen dataclass per configuration and a small registry.

Every released checkpoint shares the decoder design (multi-scale input concatenated, three
context features, one ``BasicDecBlk`` squeeze block, ``ASPPDeformable`` attention, split
decoder input patches, BatchNorm); they differ in the backbone. Telling the variant of a
checkpoint from its keys is the weights package's job (``weights.detect``).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int
    mlp_ratio: float = 4.0

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(4))


@dataclass(frozen=True)
class PvtV2Config:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.embed_dims


BackboneConfig = SwinConfig | PvtV2Config

BACKBONES: dict[str, BackboneConfig] = {
    "swin_v1_t": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_v1_s": SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_v1_b": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swin_v1_l": SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
    "pvt_v2_b0": PvtV2Config((32, 64, 160, 256), (2, 2, 2, 2)),
    "pvt_v2_b1": PvtV2Config((64, 128, 320, 512), (2, 2, 2, 2)),
    "pvt_v2_b2": PvtV2Config((64, 128, 320, 512), (3, 4, 6, 3)),
    "pvt_v2_b5": PvtV2Config((64, 128, 320, 512), (3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
}


@dataclass(frozen=True)
class BiRefNetVariant:
    """The architecture of one checkpoint family (everything needed to build the network)."""

    backbone_name: str
    context_features: int = 3          # encoder stages fused into the deepest one
    squeeze_blocks: int = 1            # BasicDecBlk blocks after the fusion
    decoder_channels: int = 64         # inner width of decoder and squeeze blocks
    aspp_channels: int = 256           # width of each ASPPDeformable branch
    aspp_kernel_sizes: tuple[int, ...] = (1, 3, 7)
    gradient_channels: int = 16        # width of the outward-reference (gradient) branch
    input_patch_channels: int = 64     # inner width of the inward-reference blocks
    input_patch_grids: tuple[int, ...] = field(default=(32, 16, 8, 4, 1))  # grid per decoder stage

    @property
    def backbone(self) -> BackboneConfig:
        return BACKBONES[self.backbone_name]

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        """Channels of the four encoder outputs after multi-scale concatenation (x1..x4)."""
        return tuple(2 * c for c in self.backbone.stage_channels)


VARIANTS: dict[str, BiRefNetVariant] = {name: BiRefNetVariant(name) for name in BACKBONES}


def get_variant(name: str) -> BiRefNetVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown BiRefNet variant {name!r}; known: {', '.join(VARIANTS)}") from None
