"""The BiRefNet decoder: four stages with inward reference (image patches stacked along
channels) and outward reference (gradient attention gates), joined by lateral connections.

Training-only heads (``conv_ms_spvn_*`` for multi-stage supervision, ``gdt_convs_pred_*`` for
gradient prediction) are built so checkpoints load strictly; the inference forward never runs
them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import BasicDecBlk, BasicLatBlk, SimpleConvs
from .variants import BiRefNetVariant

PATCH_ORDERS = ("current", "legacy")


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with aligned corners, as every resize inside BiRefNet; a no-op when the
    size already matches (the interpolation would return the same values)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def stack_patches(image: torch.Tensor, grid_h: int, grid_w: int, order: str) -> torch.Tensor:
    """Cut (B, C, H, W) into a grid_h x grid_w grid and stack the patches along channels.

    ``"current"`` stacks as (c, row, column) -- the official code since 5 November 2024;
    ``"legacy"`` as (column, row, c) -- the order earlier checkpoints were trained with.
    Returns (B, C * grid_h * grid_w, H / grid_h, W / grid_w).
    """
    batch, channels, height, width = image.shape
    patch_h, patch_w = height // grid_h, width // grid_w
    x = image.view(batch, channels, grid_h, patch_h, grid_w, patch_w)
    if order == "current":
        x = x.permute(0, 1, 2, 4, 3, 5)              # b, c, hg, wg, h, w
    elif order == "legacy":
        x = x.permute(0, 4, 2, 1, 3, 5)              # b, wg, hg, c, h, w
    else:
        raise ValueError(f"patch order must be one of {PATCH_ORDERS}, not {order!r}")
    return x.reshape(batch, channels * grid_h * grid_w, patch_h, patch_w)


def _gradient_features(channels: int, inner: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, inner, 3, 1, 1), nn.BatchNorm2d(inner),
                         nn.ReLU(inplace=True))


def _one_by_one(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 1, 1))


class Decoder(nn.Module):
    """features (image, x1, x2, x3, x4) -> logits (B, 1, H, W)."""

    def __init__(self, variant: BiRefNetVariant, patch_order: str = "current") -> None:
        super().__init__()
        self.patch_order = patch_order
        enc = list(reversed(variant.encoder_channels))       # [x4, x3, x2, x1] widths
        stage_out = enc[1:] + [enc[-1] // 2]                 # widths after decoder_block4..1
        patch_out = [c // 8 for c in enc]                    # widths of the patch features
        patch_in = [3 * g * g for g in variant.input_patch_grids]
        block_kwargs = dict(inner_channels=variant.decoder_channels,
                            aspp_channels=variant.aspp_channels,
                            aspp_kernel_sizes=variant.aspp_kernel_sizes)
        inner = variant.input_patch_channels
        for level, (c_in, c_out) in zip((5, 4, 3, 2, 1), zip(patch_in, [patch_out[0]] + patch_out)):
            self.add_module(f"ipt_blk{level}", SimpleConvs(c_in, c_out, inner))
        for i, level in enumerate((4, 3, 2, 1)):
            c_in = enc[i] + patch_out[max(0, i - 1)]
            self.add_module(f"decoder_block{level}", BasicDecBlk(c_in, stage_out[i], **block_kwargs))
        self.conv_out1 = nn.Sequential(nn.Conv2d(stage_out[3] + patch_out[3], 1, 1))
        for i, level in enumerate((4, 3, 2)):
            self.add_module(f"lateral_block{level}", BasicLatBlk(enc[i + 1], stage_out[i]))
        gradient = variant.gradient_channels
        for i, level in enumerate((4, 3, 2)):
            self.add_module(f"conv_ms_spvn_{level}", nn.Conv2d(stage_out[i], 1, 1))  # training
            self.add_module(f"gdt_convs_{level}", _gradient_features(stage_out[i], gradient))
            self.add_module(f"gdt_convs_pred_{level}", _one_by_one(gradient))          # training
            self.add_module(f"gdt_convs_attn_{level}", _one_by_one(gradient))

    def _with_patches(self, x: torch.Tensor, image: torch.Tensor, level: int) -> torch.Tensor:
        """Concatenate the inward reference: the image's patch stack at x's resolution."""
        grid_h, grid_w = image.shape[-2] // x.shape[-2], image.shape[-1] // x.shape[-1]
        patches = stack_patches(image, grid_h, grid_w, self.patch_order)
        patches = resize(patches, x.shape[-2:])
        return torch.cat((x, getattr(self, f"ipt_blk{level}")(patches)), dim=1)

    def _gate(self, p: torch.Tensor, level: int) -> torch.Tensor:
        """The outward reference: features gated by a predicted gradient-attention map."""
        features = getattr(self, f"gdt_convs_{level}")(p)
        return p * torch.sigmoid(getattr(self, f"gdt_convs_attn_{level}")(features))

    def forward(self, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                x3: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        p = self._gate(self.decoder_block4(self._with_patches(x4, image, 5)), 4)   # H/32
        p = resize(p, x3.shape[-2:]) + self.lateral_block4(x3)
        p = self._gate(self.decoder_block3(self._with_patches(p, image, 4)), 3)    # H/16
        p = resize(p, x2.shape[-2:]) + self.lateral_block3(x2)
        p = self._gate(self.decoder_block2(self._with_patches(p, image, 3)), 2)    # H/8
        p = resize(p, x1.shape[-2:]) + self.lateral_block2(x1)
        p = self.decoder_block1(self._with_patches(p, image, 2))                   # H/4
        return self._output(p, image)

    def _output(self, p: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """conv_out1 over [upsampled p, ipt_blk1(image)], computed without full-size features.

        A 1x1 convolution commutes with bilinear resizing (both are linear and the resize
        weights sum to one), so p's share is computed at H/4 and only its one channel is
        upsampled; ipt_blk1's two convolutions and its share of conv_out1 compose into one 5x5
        convolution of the image. The result equals the official formula up to rounding.
        """
        weight, bias = self.conv_out1[0].weight, self.conv_out1[0].bias    # (1, Cp + Ci, 1, 1)
        from_decoder, from_patches = weight.split((p.shape[1], weight.shape[1] - p.shape[1]), 1)
        logits = resize(F.conv2d(p, from_decoder, bias), image.shape[-2:])
        last = self.ipt_blk1.conv_out
        second = torch.einsum("oc,cikl->oikl", from_patches.flatten(1), last.weight)
        second_bias = from_patches.flatten(1) @ last.bias
        return logits + two_convs_as_one(image, self.ipt_blk1.conv1, second, second_bias)


def two_convs_as_one(x: torch.Tensor, first: nn.Conv2d, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """conv3x3(conv3x3(x, first), weight, bias), both zero-padded by one, as one 5x5 conv.

    The composition is exact except on the outermost pixel ring, where the second conv must
    see zeros outside the image rather than the first conv's response to padding; that ring is
    recomputed from thin strips with the two convolutions.
    """
    w1, b1 = first.weight, first.bias                                 # (C, I, 3, 3), (C,)
    composed = w1.new_zeros(weight.shape[0], w1.shape[1], 5, 5)
    for s in range(3):
        for t in range(3):
            composed[:, :, s:s + 3, t:t + 3] += torch.einsum("oc,cikl->oikl", weight[:, :, s, t], w1)
    composed_bias = bias + weight.sum(dim=(2, 3)) @ b1
    out = F.conv2d(x, composed.to(x.dtype), composed_bias.to(x.dtype), padding=2)

    def exact(strip: torch.Tensor) -> torch.Tensor:
        return F.conv2d(first(strip), weight, bias, padding=1)
    out[..., :1, :] = exact(x[..., :4, :])[..., :1, :]
    out[..., -1:, :] = exact(x[..., -4:, :])[..., -1:, :]
    out[..., :, :1] = exact(x[..., :, :4])[..., :, :1]
    out[..., :, -1:] = exact(x[..., :, -4:])[..., :, -1:]
    return out
