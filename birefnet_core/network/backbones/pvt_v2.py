"""Pyramid Vision Transformer v2 (the "improved" PVT with overlapping patch embeddings).

Attention keys and values come from a spatially reduced map (``sr`` convolution, stride
``sr_ratio``); the MLP has a depth-wise 3x3 convolution. Parameter names follow the official
checkpoints (``patch_embed1..4``, ``block1..4``, ``norm1..4``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cpu_kernels import FastLinear
from ..variants import PvtV2Config

_BLOCK_EPS = 1e-6   # the block and stage norms; patch-embedding and reduction norms keep 1e-5


class DWConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        x = x.transpose(1, 2).reshape(batch, channels, height, width)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = FastLinear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = FastLinear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class SpatialReductionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = FastLinear(dim, dim)
        self.kv = FastLinear(dim, dim * 2)
        self.proj = FastLinear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, H*W, C)."""
        batch, tokens, channels = x.shape
        head_dim = channels // self.num_heads
        q = self.q(x).view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = x.transpose(1, 2).reshape(batch, channels, height, width)
            x = self.norm(self.sr(reduced).flatten(2).transpose(1, 2))   # (B, N', C)
        kv = self.kv(x).view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])           # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))


class PvtBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride, patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        """(B, C_in, H, W) -> tokens (B, H'*W', C) and (H', W')."""
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class PyramidVisionTransformerV2(nn.Module):
    """(B, 3, H, W) -> four maps at strides 4, 8, 16 and 32."""

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__()
        dims = config.embed_dims
        self.channels = dims
        in_channels = (3,) + tuple(dims[:3])
        for i in range(4):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            self.add_module(f"patch_embed{i + 1}",
                            OverlapPatchEmbed(in_channels[i], dims[i], patch, stride))
            self.add_module(f"block{i + 1}", nn.ModuleList(
                PvtBlock(dims[i], config.num_heads[i], config.mlp_ratios[i], config.sr_ratios[i])
                for _ in range(config.depths[i])))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dims[i], eps=_BLOCK_EPS))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch = x.shape[0]
        outputs = []
        for i in range(1, 5):
            x, height, width = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, height, width)
            x = getattr(self, f"norm{i}")(x)
            x = x.view(batch, height, width, -1).permute(0, 3, 1, 2)   # channels-last view
            outputs.append(x)
        return outputs
