"""Which BiRefNet variant a state dict was saved from, read off its key names and shapes."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from ..network.variants import BACKBONES, VARIANTS, BiRefNetVariant, PvtV2Config, SwinConfig
from .checkpoint import describe_state_dict


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
        raise CheckpointError("cannot tell which BiRefNet backbone this state dict holds "
                              f"(supported: {', '.join(BACKBONES)}). It looks like: "
                              f"{describe_state_dict(state_dict)}")
    variant = VARIANTS[name]
    squeeze_in = _shape(state_dict, "squeeze_module.0.conv_in.weight")
    channels = variant.encoder_channels
    expected_in = channels[3] + sum(channels[3 - variant.context_features:3])
    if squeeze_in is None or squeeze_in[1] != expected_in:
        raise CheckpointError(
            f"this {name} checkpoint has a squeeze block of input width "
            f"{None if squeeze_in is None else squeeze_in[1]}, not the released {expected_in} "
            "(multi-scale input 'cat' with 3 context features). It looks like: "
            f"{describe_state_dict(state_dict)}")
    return variant
