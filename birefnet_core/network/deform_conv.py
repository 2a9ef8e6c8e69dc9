"""Modulated deformable convolution (DCNv2) in plain PyTorch.

``deform_conv2d`` computes what ``torchvision.ops.deform_conv2d`` computes (bilinear sampling
with zeros outside the image, one offset group) using only a weighted gather (``embedding_bag``)
and a matrix product, so it runs in float32, bfloat16 and float16 on any device and needs no
compiled extension.

Layout: the input is read channels-last; the samples of all taps for a block of output pixels
form one matrix that a single matrix product turns into outputs (im2col with bilinear
sampling). Memory stays at one block's columns (a few MB on the CPU, at most 128 MB on a GPU),
whatever the image size.

While a graph is being exported (``torch.export``, ONNX) the blocks, whose count depends on the
image size, would be unrolled at one size; the export path instead samples each kernel row
with one ``grid_sample`` (standard ONNX GridSample: bilinear, zeros outside) and contracts it
with a 1x1 convolution, so the graph holds only standard operators and any size.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# Bytes of sampled columns per block on the CPU: small enough to stay in cache while they are
# weighted and multiplied (measured on the CPU: 4 MB blocks ran 1.5x faster than 32 MB ones).
_COLUMN_BYTES = 4 << 20
_PLAN_SAMPLES = 1 << 20          # CPU: sampling points whose corners are planned in one go
# On a GPU (CUDA, MPS) every block is a few kernel launches whatever its size, and a cache-sized
# block is far too little work per launch: blocks there are as large as this memory budget for
# the columns allows (one block for most decoder levels at 1024²; ``bench/bench_dispatch.py``
# counts the ops), and each block's corners are planned with it.
_DEVICE_COLUMN_BYTES = 128 << 20


def block_rows(device: torch.device, taps: int, channels: int,
               element_size: int) -> tuple[int, int]:
    """(output pixels per block, output pixels per corner plan) for this device."""
    row_bytes = taps * channels * element_size
    if device.type == "cpu":
        block = max(64, _COLUMN_BYTES // row_bytes)
        return block, block * max(1, _PLAN_SAMPLES // (block * taps))
    block = max(64, _DEVICE_COLUMN_BYTES // row_bytes)
    return block, block


def _tap_positions(offset: torch.Tensor, kernel_h: int, kernel_w: int, stride: int,
                   padding: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling coordinates (B, K, Ho, Wo) in input pixels (y, x), float32."""
    batch, _, out_h, out_w = offset.shape
    taps = kernel_h * kernel_w
    device = offset.device
    tap_y = (torch.arange(kernel_h, device=device) * dilation).repeat_interleave(kernel_w)
    tap_x = (torch.arange(kernel_w, device=device) * dilation).repeat(kernel_h)
    base_y = torch.arange(out_h, device=device) * stride - padding
    base_x = torch.arange(out_w, device=device) * stride - padding
    offset = offset.float().view(batch, taps, 2, out_h, out_w)
    pos_y = offset[:, :, 0] + (base_y.view(1, 1, -1, 1) + tap_y.view(1, -1, 1, 1))
    pos_x = offset[:, :, 1] + (base_x.view(1, 1, 1, -1) + tap_x.view(1, -1, 1, 1))
    return pos_y, pos_x


def _sampling_grid(offset: torch.Tensor, kernel_h: int, kernel_w: int, stride: int,
                   padding: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling coordinates (B*Ho*Wo, K) in input pixels, float32, rows = output pixels."""
    pos_y, pos_x = _tap_positions(offset, kernel_h, kernel_w, stride, padding, dilation)
    taps = kernel_h * kernel_w
    return (pos_y.permute(0, 2, 3, 1).reshape(-1, taps),                   # (B*Ho*Wo, K)
            pos_x.permute(0, 2, 3, 1).reshape(-1, taps))


def _exporting() -> bool:
    """True while torch.export or the ONNX exporter traces the model."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def deform_conv2d_by_grid_sample(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                                 bias: torch.Tensor | None = None, *, stride: int = 1,
                                 padding: int = 0, dilation: int = 1,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """``deform_conv2d`` from standard operators, for exported graphs (same arguments).

    Per kernel row: one bilinear ``grid_sample`` (zeros outside: torchvision's rule) of all
    that row's taps, stacked along the height, (B, C, kw*Ho, Wo), which is (B, C*kw, Ho, Wo)
    without a copy; modulated, then a 1x1 convolution with that row's weights. The row results
    are summed. Sampling runs in float32 whatever x's dtype, so half-precision graphs keep
    exact sampling positions. Transient memory: one row's samples, C*kw*Ho*Wo per image.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    pos_y, pos_x = _tap_positions(offset, kernel_h, kernel_w, stride, padding, dilation)
    # grid_sample's align_corners=False coordinates: pixel p is at (2p + 1) / size - 1.
    grid = torch.stack(((2 * pos_x + 1) / width - 1, (2 * pos_y + 1) / height - 1), dim=-1)
    source = x.float()
    out = None
    for row in range(kernel_h):
        taps = slice(row * kernel_w, (row + 1) * kernel_w)
        row_grid = grid[:, taps].reshape(batch, kernel_w * out_h, out_w, 2)
        samples = F.grid_sample(source, row_grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)                     # (B, C, kw*Ho, Wo)
        samples = samples.view(batch, channels, kernel_w, out_h, out_w)
        if mask is not None:
            samples = samples * mask[:, None, taps].float()
        row_weight = weight[:, :, row].reshape(out_channels, channels * kernel_w, 1, 1)
        part = F.conv2d(samples.reshape(batch, channels * kernel_w, out_h, out_w).to(x.dtype),
                        row_weight)
        out = part if out is None else out + part
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """A (O, C, kh, kw) convolution weight as the (O, kh*kw*C) matrix, taps major, that
    multiplies a block of sampled columns (transposed)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _padded_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*(H+2)*(W+2), C): the image with a one-pixel zero border, one row per
    pixel. Corners that fall on the border read zero, which is torchvision's rule for corners
    outside the image."""
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))             # (B, H+2, W+2, C)
    return padded.reshape(-1, padded.shape[-1])


def _corner_plan(pos_y: torch.Tensor, pos_x: torch.Tensor, modulation: torch.Tensor | None,
                 image_start: torch.Tensor, height: int, width: int, dtype: torch.dtype):
    """For (n, K) sampling positions: the padded-row index of each point's four corners
    (n, K, 4: top-left, top-right, bottom-left, bottom-right) and their bilinear weights
    (n, K, 4), zero for points outside the image (torchvision's rule: y <= -1, y >= H,
    x <= -1 or x >= W sample zero; corners past the edge land on the zero border). The
    modulation is folded into the weights."""
    y0, x0 = torch.floor(pos_y), torch.floor(pos_x)
    fy, fx = pos_y - y0, pos_x - x0
    valid = (y0 >= -1) & (y0 <= height - 1) & (x0 >= -1) & (x0 <= width - 1)
    scale = valid.to(fy.dtype) if modulation is None else modulation * valid
    row_y, row_x = y0.clamp(-1, height - 1) + 1, x0.clamp(-1, width - 1) + 1
    index = image_start.dtype
    if (height + 2) * (width + 2) < 1 << 24:      # exact in float32: one pass fewer
        top_left = image_start + (row_y * (width + 2) + row_x).to(index)
    else:
        top_left = image_start + row_y.to(index) * (width + 2) + row_x.to(index)
    # (0, 1, W+2, W+3), made where top_left lives (a torch.tensor here would be a host to
    # device copy in every call on a GPU)
    step = torch.arange(4, dtype=index, device=top_left.device)
    corner_step = step % 2 + step // 2 * (width + 2)
    corners = top_left.unsqueeze(-1) + corner_step                          # (n, K, 4)
    gy, gx = (1 - fy) * scale, fy * scale
    weights = torch.stack((gy * (1 - fx), gy * fx, gx * (1 - fx), gx * fx), dim=-1)
    return corners, weights.to(dtype)


def _sample_columns(rows: torch.Tensor, corners: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (n, K*C) of the padded rows: per point, the weighted sum of its four
    corner rows. ``embedding_bag`` gathers and sums in one pass (one write of the columns,
    accumulating in float32), where separate gathers and multiply-adds took five passes and
    cost as much as the matrix product itself in bfloat16."""
    n, taps, _ = corners.shape
    if rows.device.type in ("cpu", "cuda"):
        samples = F.embedding_bag(corners.reshape(-1, 4), rows, mode="sum",
                                  per_sample_weights=weights.reshape(-1, 4))
    else:           # devices without a weighted embedding_bag (MPS): gather, weight, sum
        gathered = rows.index_select(0, corners.reshape(-1).long()).view(n * taps, 4, -1)
        samples = (gathered * weights.reshape(-1, 4, 1)).sum(dim=1)
    return samples.view(n, taps * rows.shape[1])


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, *, stride: int = 1, padding: int = 0,
                  dilation: int = 1, mask: torch.Tensor | None = None,
                  epilogue: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  block_product: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """Deformable convolution.

    x: (B, C, H, W); offset: (B, 2*kh*kw, Ho, Wo) as (dy, dx) pairs per tap, taps row-major;
    weight: (O, C, kh, kw); mask: (B, kh*kw, Ho, Wo) or None. Returns (B, O, Ho, Wo) in
    channels-last memory format. ``epilogue``, if given, maps each block of outputs (n, O) to
    (n, P) (an activation and a projection, say) and the result is (B, P, Ho, Wo): the full
    O-channel output is then never held. ``block_product``, if given, maps each block's
    sampled columns (n, K*C), taps major, straight to that result: a faster kernel for the
    product with ``weight`` and ``bias`` followed by ``epilogue`` (the exported graph still
    uses those two).

    All taps of a block of output pixels are sampled into one (pixels, K*C) matrix, which one
    matrix product turns into outputs; blocks are sized for the device (``block_rows``: on the
    CPU the columns stay near 4 MB and corner indices and weights are computed for many blocks
    at once, a plan of about 1M samples; elsewhere blocks fill a 128 MB budget).
    While a graph is exported, ``deform_conv2d_by_grid_sample`` computes it instead.
    """
    if _exporting():
        out = deform_conv2d_by_grid_sample(x, offset, weight, bias, stride=stride,
                                           padding=padding, dilation=dilation, mask=mask)
        if epilogue is None:
            return out
        batch, _, out_h, out_w = out.shape                   # (B*Ho*Wo, O) rows -> (n, P)
        rows = epilogue(out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]))
        return rows.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)
    return _deform_conv2d_blocked(x, offset, weight, bias, stride, padding, dilation, mask,
                                  epilogue, block_product)


@torch.compiler.disable          # compiled models run this loop eagerly: see network/compiled.py
def _deform_conv2d_blocked(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None, stride: int, padding: int, dilation: int,
                           mask: torch.Tensor | None,
                           epilogue: Callable[[torch.Tensor], torch.Tensor] | None,
                           block_product: Callable[[torch.Tensor], torch.Tensor] | None
                           ) -> torch.Tensor:
    """``deform_conv2d`` block by block (its docstring has the contract)."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    taps = kernel_h * kernel_w
    rows = _padded_rows(x)
    kernel = tap_major(weight).t()                                        # (K*C, O)
    pos_y, pos_x = _sampling_grid(offset, kernel_h, kernel_w, stride, padding, dilation)
    modulation = None
    if mask is not None:
        modulation = mask.float().permute(0, 2, 3, 1).reshape(-1, taps)
    pixels, total = out_h * out_w, batch * out_h * out_w
    # Row indices in int32 where they fit: half the index traffic of int64, which the corner
    # plan writes and embedding_bag reads for every sample.
    index = torch.int32 if rows.shape[0] < 1 << 31 else torch.int64
    image_start = ((torch.arange(total, device=x.device) // pixels)
                   * ((height + 2) * (width + 2))).to(index)
    reshaped = epilogue is not None or block_product is not None
    out = None if reshaped else x.new_empty(total, out_channels)
    block, plan_rows = block_rows(x.device, taps, channels, x.element_size())
    direct = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, offset, weight, bias, mask)))
    for plan_start in range(0, total, plan_rows):
        part = slice(plan_start, min(plan_start + plan_rows, total))
        corners, weights = _corner_plan(
            pos_y[part], pos_x[part], None if modulation is None else modulation[part],
            image_start[part, None], height, width, x.dtype)
        for start in range(0, corners.shape[0], block):
            stop = min(start + block, corners.shape[0])
            columns = _sample_columns(rows, corners[start:stop], weights[start:stop])
            target = slice(plan_start + start, plan_start + stop)
            if direct and not reshaped:       # straight into the output, no copy (autograd
                if bias is None:              # forbids this while it records)
                    torch.mm(columns, kernel, out=out[target])
                else:
                    torch.addmm(bias, columns, kernel, out=out[target])
                continue
            if block_product is not None:
                result = block_product(columns)
            else:
                result = columns @ kernel if bias is None else torch.addmm(bias, columns, kernel)
                result = result if epilogue is None else epilogue(result)
            if out is None:
                out = x.new_empty(total, result.shape[1])
            out[target] = result
    return out.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)


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
        self.offsets_and_modulator: nn.Conv2d | None = None    # set by fuse_offset_convs

    @torch.no_grad()
    def fuse_offset_convs(self) -> None:
        """Compute offsets and modulator with one convolution (they read the same input with
        the same geometry); the two official convolutions stay for their checkpoint keys."""
        conv = nn.Conv2d(self.offset_conv.in_channels,
                         self.offset_conv.out_channels + self.modulator_conv.out_channels,
                         self.offset_conv.kernel_size, self.stride, self.padding)
        conv.weight.copy_(torch.cat((self.offset_conv.weight, self.modulator_conv.weight)))
        conv.bias.copy_(torch.cat((self.offset_conv.bias, self.modulator_conv.bias)))
        self.offsets_and_modulator = conv.to(self.offset_conv.weight.device).requires_grad_(False)

    def _offsets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets (B, 2*k*k, H, W) and modulator (B, k*k, H, W) in (0, 2)."""
        if self.offsets_and_modulator is None:
            return self.offset_conv(x), 2.0 * torch.sigmoid(self.modulator_conv(x))
        both = self.offsets_and_modulator(x)
        split = self.offset_conv.out_channels
        return both[:, :split], 2.0 * torch.sigmoid(both[:, split:])

    def forward(self, x: torch.Tensor,
                epilogue: Callable[[torch.Tensor], torch.Tensor] | None = None,
                block_product: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
        offset, modulator = self._offsets(x)
        return deform_conv2d(x, offset, self.regular_conv.weight, self.regular_conv.bias,
                             stride=self.stride, padding=self.padding, mask=modulator,
                             epilogue=epilogue, block_product=block_product)

    def kernel_matrix(self) -> torch.Tensor:
        """The regular convolution's weight as an (O, K*C) matrix (``tap_major``)."""
        return tap_major(self.regular_conv.weight)
