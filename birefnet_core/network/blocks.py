"""Convolutional blocks of the BiRefNet decoder: deformable ASPP, decoder, lateral and
inward-reference blocks. Module and parameter names follow the official checkpoints.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cpu_kernels import PackedGroup, PackedLinear, can_pack, wants_cpu_kernel
from .deform_conv import DeformableConv2d

BlockProduct = Callable[[torch.Tensor], torch.Tensor]


class DeformableBranch(nn.Module):
    """Deformable convolution -> BatchNorm -> ReLU (one ASPP branch)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, out_channels, kernel_size,
                                            padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.atrous_conv(x)))

    def projected(self, x: torch.Tensor, projection: torch.Tensor,
                  block_product: BlockProduct | None = None) -> torch.Tensor:
        """``conv1x1(forward(x), projection)`` for a (P, O) projection, computed block by block
        inside the deformable convolution: the O-channel branch output is never held.
        ``block_product``: the same function of a block's sampled columns by faster kernels."""
        def finish(block: torch.Tensor) -> torch.Tensor:                  # (n, O) -> (n, P)
            return F.relu(_per_channel(self.bn, block)) @ projection.t()
        return self.atrous_conv(x, epilogue=finish, block_product=block_product)


def _per_channel(norm: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """An eval-mode BatchNorm2d (or the Identity left after folding) applied to (n, C) rows."""
    if isinstance(norm, nn.BatchNorm2d):
        return F.batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0.0, norm.eps)
    return norm(rows)


class ASPPDeformable(nn.Module):
    """Atrous-spatial-pyramid pooling with deformable branches of kernel 1, 1, 3 and 7 plus an
    image-level branch, fused by a 1x1 convolution: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, branch_channels: int = 256,
                 kernel_sizes: tuple[int, ...] = (1, 3, 7)) -> None:
        super().__init__()
        self.branch_channels = branch_channels
        self.aspp1 = DeformableBranch(channels, branch_channels, 1)
        self.aspp_deforms = nn.ModuleList(
            DeformableBranch(channels, branch_channels, k) for k in kernel_sizes)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(branch_channels * (2 + len(kernel_sizes)), channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        # Per deformable branch: its kernel (bias and ReLU inside) and its slice of conv1 as
        # packed oneDNN kernels, made at the first CPU forward of a folded model once
        # enable_cpu_kernels allowed it (cpu_packing).
        self.packed: PackedGroup | None = None           # ((kernel, projection), ...)
        self.cpu_packing = False

    def branches(self) -> tuple[DeformableBranch, ...]:
        return (self.aspp1, *self.aspp_deforms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv1 over the concatenated branches equals the sum of its per-branch slices applied
        # to each branch, and each deformable branch applies its slice block by block: neither
        # the 5x-wide concatenation nor a full branch output is ever held in memory.
        projections = self.conv1.weight.flatten(1).split(self.branch_channels, dim=1)
        out = None
        for branch, projection, product in zip(self.branches(), projections,
                                                self._packed_products(x)):
            part = branch.projected(x, projection, product)
            out = part if out is None else out + part
        pooled = self.global_avg_pool(x).flatten(1) @ projections[-1].t()   # (B, C)
        out = out + pooled[:, :, None, None]
        if self.conv1.bias is not None:                                    # after folding
            out = out + self.conv1.bias.view(1, -1, 1, 1)
        return F.relu(self.bn1(out))

    def _sources(self, branch: DeformableBranch) -> tuple[torch.Tensor, ...]:
        """The tensors a branch's packed kernels are made from."""
        conv = branch.atrous_conv.regular_conv
        return tuple(t for t in (conv.weight, conv.bias, self.conv1.weight) if t is not None)

    def pack_cpu_kernels(self) -> bool:
        """Pack every branch's kernel and projection (folded models only: the branch's
        BatchNorm must already be inside its convolution's bias)."""
        self.cpu_packing = True
        self.packed = None
        weight = self.conv1.weight
        if not can_pack(weight) or any(not isinstance(b.bn, nn.Identity) for b in self.branches()):
            return False
        projections = weight.flatten(1).split(self.branch_channels, dim=1)
        self.packed = PackedGroup(
            (PackedLinear(b.atrous_conv.kernel_matrix(), b.atrous_conv.regular_conv.bias,
                          self._sources(b)),
             PackedLinear(projection, None, self._sources(b)))
            for b, projection in zip(self.branches(), projections))
        return True

    def check_cpu_kernels(self) -> None:
        """Drop the kernels if any branch's sources changed (checked_kernels' entry check)."""
        if self.packed is not None and not all(
                kernel.stamp.verify(self._sources(branch))
                for branch, (kernel, _) in zip(self.branches(), self.packed)):
            self.packed = None

    def packed_kernel_count(self) -> int:
        return 0 if self.packed is None else 2 * len(self.packed)

    def release_caches(self) -> None:
        self.packed = None

    def _apply(self, fn, recurse: bool = True):
        self.packed = None                    # moved or cast: the packs describe old tensors
        return super()._apply(fn, recurse)

    def _packed_products(self, x: torch.Tensor) -> list[BlockProduct | None]:
        """Per branch: sampled columns -> projected ReLU output by the packed kernels, or None
        where they cannot run (not enabled or unfolded, another device or dtype, autograd on
        the input or any parameter (the offsets' too), changed weights)."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return [None] * len(self.branches())
        if x.device.type != "cpu":
            self.packed = None                # a stale pack must not outlive a move
        if not wants_cpu_kernel(x, tuple(self.parameters())):
            return [None] * len(self.branches())
        if self.packed is not None and not all(
                kernel.usable(x, self._sources(branch))
                for branch, (kernel, _) in zip(self.branches(), self.packed)):
            self.packed = None                # stale: made again below
        if self.packed is None and not (self.cpu_packing and x.dtype == self.conv1.weight.dtype
                                        and self.pack_cpu_kernels()):
            return [None] * len(self.branches())
        return [lambda columns, k=kernel, p=projection: p(k(columns, "relu"))
                for kernel, projection in self.packed]


class BasicDecBlk(nn.Module):
    """conv3x3 -> BN -> ReLU -> ASPPDeformable -> conv3x3 -> BN."""

    def __init__(self, in_channels: int, out_channels: int, inner_channels: int = 64,
                 aspp_channels: int = 256, aspp_kernel_sizes: tuple[int, ...] = (1, 3, 7)) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, inner_channels, 3, 1, 1)
        self.bn_in = nn.BatchNorm2d(inner_channels)
        self.dec_att = ASPPDeformable(inner_channels, aspp_channels, aspp_kernel_sizes)
        self.conv_out = nn.Conv2d(inner_channels, out_channels, 3, 1, 1)
        self.bn_out = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_in(self.conv_in(x)))
        return self.bn_out(self.conv_out(self.dec_att(x)))


class BasicLatBlk(nn.Module):
    """The 1x1 lateral connection from an encoder stage to the decoder."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Two 3x3 convolutions without activation: the inward-reference (image patch) block."""

    def __init__(self, in_channels: int, out_channels: int, inner_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner_channels, 3, 1, 1)
        self.conv_out = nn.Conv2d(inner_channels, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
