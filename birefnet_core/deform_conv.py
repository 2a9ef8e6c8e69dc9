"""Modulated deformable convolution (DCNv2) in plain PyTorch.

``deform_conv2d`` computes what ``torchvision.ops.deform_conv2d`` computes (bilinear sampling
with zeros outside the image, one offset group) using only indexing and a matrix product, so it
runs in float32, bfloat16 and float16 on any device and needs no compiled extension.

Layout: the input is gathered channels-last, one kernel tap at a time; each tap's samples are
multiplied into the output with one matrix product, so memory stays at one tap's columns.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _tap_corners(pos_y: torch.Tensor, pos_x: torch.Tensor, height: int, width: int):
    """Yield (flat index, weight) for the four bilinear corners of each sampling point.

    Corners outside the image get weight 0 (and a safe index), which is torchvision's rule.
    pos_y, pos_x: (B, Ho, Wo) float32 sampling coordinates in input pixels.
    """
    y0 = torch.floor(pos_y)
    x0 = torch.floor(pos_x)
    fy, fx = pos_y - y0, pos_x - x0
    y0, x0 = y0.long(), x0.long()
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            index = (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1))
            yield index, wy * wx * inside


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, *, stride: int = 1, padding: int = 0,
                  dilation: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Deformable convolution.

    x: (B, C, H, W); offset: (B, 2*kh*kw, Ho, Wo) as (dy, dx) pairs per tap, taps row-major;
    weight: (O, C, kh, kw); mask: (B, kh*kw, Ho, Wo) or None. Returns (B, O, Ho, Wo).
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h = (height + 2 * padding - dilation * (kernel_h - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kernel_w - 1) - 1) // stride + 1
    # Sampling grid of the plain convolution, in float32 whatever the input dtype.
    base_y = (torch.arange(out_h, device=x.device, dtype=torch.float32) * stride - padding)
    base_x = (torch.arange(out_w, device=x.device, dtype=torch.float32) * stride - padding)
    offset = offset.float().view(batch, kernel_h * kernel_w, 2, out_h, out_w)
    x_rows = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)     # (B*H*W, C)
    batch_start = (torch.arange(batch, device=x.device) * (height * width)).view(batch, 1, 1)
    taps = weight.permute(2, 3, 1, 0).reshape(kernel_h * kernel_w, channels, out_channels)
    out = x.new_zeros(batch * out_h * out_w, out_channels)
    for tap in range(kernel_h * kernel_w):
        ky, kx = divmod(tap, kernel_w)
        pos_y = base_y.view(1, -1, 1) + ky * dilation + offset[:, tap, 0]          # (B, Ho, Wo)
        pos_x = base_x.view(1, 1, -1) + kx * dilation + offset[:, tap, 1]
        sampled = None
        for index, corner_weight in _tap_corners(pos_y, pos_x, height, width):
            if mask is not None:
                corner_weight = corner_weight * mask[:, tap].float()
            rows = x_rows.index_select(0, (index + batch_start).reshape(-1))
            term = rows * corner_weight.reshape(-1, 1).to(x.dtype)
            sampled = term if sampled is None else sampled + term
        out.addmm_(sampled, taps[tap])                                            # (B*Ho*Wo, O)
    out = out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.contiguous()


class DeformableConv2d(nn.Module):
    """A deformable convolution whose offsets and modulation come from two plain convolutions.

    Module names follow the official checkpoints: offset_conv, modulator_conv, regular_conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, bias: bool = False) -> None:
        super().__init__()
        taps = kernel_size * kernel_size
        self.stride, self.padding = stride, padding
        self.offset_conv = nn.Conv2d(in_channels, 2 * taps, kernel_size, stride, padding)
        self.modulator_conv = nn.Conv2d(in_channels, taps, kernel_size, stride, padding)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                      bias=bias)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)
        nn.init.zeros_(self.modulator_conv.weight)
        nn.init.zeros_(self.modulator_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)                          # (B, 2*k*k, H, W)
        modulator = 2.0 * torch.sigmoid(self.modulator_conv(x))  # (B, k*k, H, W), in (0, 2)
        return deform_conv2d(x, offset, self.regular_conv.weight, self.regular_conv.bias,
                             stride=self.stride, padding=self.padding, mask=modulator)
