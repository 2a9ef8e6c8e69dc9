"""BiRefNet variants: one frozen dataclass per configuration, a small registry, and detection.

Every released checkpoint shares the decoder design (multi-scale input concatenated, three
context features, one ``BasicDecBlk`` squeeze block, ``ASPPDeformable`` attention, split
decoder input patches, BatchNorm); they differ in the backbone. ``detect_variant`` reads the
backbone and configuration from key names and shapes alone.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .errors import CheckpointError


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


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    tensor = state_dict.get(key)
    return None if tensor is None else tuple(tensor.shape)


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict
               if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    return max(indices) + 1 if indices else 0


def _detect_backbone(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    swin_embed = _shape(state_dict, "bb.patch_embed.proj.weight")
    if swin_embed is not None:
        stage3_depth = _count_blocks(state_dict, "bb.layers.2.blocks.")
        window_table = _shape(state_dict, "bb.layers.0.blocks.0.attn.relative_position_bias_table")
        for name, cfg in BACKBONES.items():
            if (isinstance(cfg, SwinConfig) and cfg.embed_dim == swin_embed[0]
                    and cfg.depths[2] == stage3_depth
                    and window_table == ((2 * cfg.window_size - 1) ** 2, cfg.num_heads[0])):
                return name
        return None
    pvt_embed = _shape(state_dict, "bb.patch_embed1.proj.weight")
    if pvt_embed is not None:
        depths = tuple(_count_blocks(state_dict, f"bb.block{i}.") for i in range(1, 5))
        for name, cfg in BACKBONES.items():
            if (isinstance(cfg, PvtV2Config) and cfg.embed_dims[0] == pvt_embed[0]
                    and cfg.depths == depths):
                return name
    return None


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> BiRefNetVariant:
    """The variant a (remapped) state dict was saved from, from key names and shapes alone.

    Raises CheckpointError when the backbone is not one BiRefNet was released with or the
    decoder layout is not the released one (for instance files from before May 2024).
    """
    name = _detect_backbone(state_dict)
    if name is None:
        from .checkpoint import describe_state_dict
        raise CheckpointError("cannot tell which BiRefNet backbone this state dict holds "
                              f"(supported: {', '.join(BACKBONES)}). It looks like: "
                              f"{describe_state_dict(state_dict)}")
    variant = VARIANTS[name]
    squeeze_in = _shape(state_dict, "squeeze_module.0.conv_in.weight")
    channels = variant.encoder_channels
    expected_in = channels[3] + sum(channels[3 - variant.context_features:3])
    if squeeze_in is None or squeeze_in[1] != expected_in:
        from .checkpoint import describe_state_dict
        raise CheckpointError(
            f"this {name} checkpoint has a squeeze block of input width "
            f"{None if squeeze_in is None else squeeze_in[1]}, not the released {expected_in} "
            "(multi-scale input 'cat' with 3 context features). It looks like: "
            f"{describe_state_dict(state_dict)}")
    return variant
