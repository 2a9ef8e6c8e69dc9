"""Swin Transformer v1, detection style, as BiRefNet uses it.

Differences from the classification Swin: feature maps are padded to window multiples (so any
size works), patch merging happens at the end of a stage, and every stage output gets its own
LayerNorm (``norm0``..``norm3``). Parameter names follow the official checkpoints.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cpu_features import swin_chunk_rows
from ..cpu_kernels import FastLinear
from ..variants import SwinConfig

_MASKED = -1.0e4
# Rows (tokens) a block processes at a time on the CPU: each chunk's windows go through
# norm, qkv, attention and projection (then the MLP through its rows) while their
# intermediates are still in cache; a 65536x96 -> 288 product ran at 95 GFLOP/s whole and at
# 217 in 4067-row pieces (``python bench/bench_cpu_paths.py --kernels``). Whole forward, Swin-T
# float32 at 1024², on/off (``--switch chunks``): 3.67-3.82 s against 3.87-3.97 s. The size
# follows the CPU's L2 and thread count (``cpu_features.swin_chunk_rows``: 4096 rows on the
# 2-core Zen 4 where it was tuned); an int here overrides it (0: no chunks), for benchmarks.
CPU_CHUNK_ROWS: int | None = None


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into the (2w-1)^2 bias table for every pair of tokens of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)          # (2, N)
    delta = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return delta[..., 0] * (2 * window - 1) + delta[..., 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B * nW, window * window, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(height: int, width: int, window: int, shift: int,
                        device: torch.device) -> torch.Tensor:
    """(nW, N, N) additive mask, 0 within a region and -1e4 across, for shifted windows.

    height and width are the padded sizes; the regions are those of the cyclic shift.
    """
    return _mask_of(_region_labels(height, width, window, shift, device))


def _region_labels(height: int, width: int, window: int, shift: int,
                   device: torch.device | None = None) -> torch.Tensor:
    """(nW, N) region of the cyclic shift each slot of each window belongs to."""
    region = torch.zeros(1, height, width, 1, device=device)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for top, bottom in bounds:
        for left, right in bounds:
            region[:, top:bottom, left:right, :] = label
            label += 1
    return window_partition(region, window).squeeze(-1)                   # (nW, N)


def _mask_of(labels: torch.Tensor) -> torch.Tensor:
    """(n, N) region labels -> (n, N, N) additive mask."""
    different = labels.unsqueeze(1) != labels.unsqueeze(2)
    # A large finite value rather than -inf: the softmax weight is exactly 0 either way, and
    # attention kernels need not guard against rows of -inf.
    return torch.zeros(different.shape, device=labels.device).masked_fill(different, _MASKED)


@dataclass(frozen=True)
class WindowLayout:
    """Where every window slot reads its token (and so where its result lands), on the host.

    Padding to window multiples, the cyclic shift and the window partition together are one
    gather (``gather``: slot -> token) followed by zeroing the padding slots (``pad_slots``);
    the other slots hold every token once, so the inverse writes each of them back to
    ``gather[slot]``. Only the windows along the shift's seams (the last row and column of
    windows) have a non-zero shifted-window mask: ``seam_windows`` and ``seam_mask`` are
    those; ``mask`` builds the full (nW, N, N) one on demand (references and tests only).
    """
    gather: torch.Tensor              # (nW * N,) long
    pad_slots: torch.Tensor           # (P,) long, slots that hold padding
    seam_windows: torch.Tensor | None  # (nS,) long, None without shift
    seam_mask: torch.Tensor | None     # (nS, N, N)
    padded: tuple[int, int, int, int]  # padded height, padded width, window, shift

    @property
    def mask(self) -> torch.Tensor | None:
        return None if self.seam_windows is None else shifted_window_mask(*self.padded, "cpu")


def window_layout(height: int, width: int, window: int, shift: int,
                  device: torch.device | None = None) -> WindowLayout:
    """The layout of an (height, width) token map, built on the host (CPU tensors: the index
    work and its ``nonzero`` never synchronise a device). ``device`` is accepted for older
    callers and ignored: ``window_chunks`` moves what a forward needs."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    tokens = torch.arange(height * width).view(1, height, width, 1)
    grid = F.pad(tokens, (0, 0, 0, padded_w - width, 0, padded_h - height), value=height * width)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    gather = window_partition(grid, window).reshape(-1)
    real = gather < height * width
    slots = torch.arange(gather.numel())
    seams = seam_mask = None
    if shift:
        labels = _region_labels(padded_h, padded_w, window, shift)        # (nW, N)
        seams = labels.ne(labels[:, :1]).any(dim=1).nonzero().flatten()  # mixed regions
        seam_mask = _mask_of(labels[seams])                               # (nS, N, N)
    return WindowLayout(gather.masked_fill(~real, 0), slots[~real], seams, seam_mask,
                        (padded_h, padded_w, window, shift))


@dataclass(frozen=True)
class WindowChunk:
    """Consecutive windows of a (batch-flat) layout, processed together. Slot indices are local
    to the chunk; ``gather`` and ``tokens`` index the batch's (B * H * W) token rows."""
    gather: torch.Tensor                      # (n * N,) token each slot reads
    pad_slots: torch.Tensor | None            # (p,) slots holding padding, None if none
    real_slots: torch.Tensor | None           # (r,) slots holding tokens, None if all do
    tokens: torch.Tensor                      # (r,) token each of those slots writes
    seam_windows: torch.Tensor | None         # (s,) windows with a shift mask, None if none
    seam_mask: torch.Tensor | None            # (s, N, N)

    def to(self, device: torch.device) -> "WindowChunk":
        return WindowChunk(*(None if t is None else t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.gather, self.pad_slots, self.real_slots, self.tokens, self.seam_windows,
                self.seam_mask)


def window_chunks(height: int, width: int, window: int, shift: int, device: torch.device,
                  batch: int, rows: int | None) -> tuple[WindowChunk, ...]:
    """The layout of a batch of ``batch`` images cut into chunks of about ``rows`` slots
    (whole windows; ``None``: one chunk), built on the host and moved to ``device`` once."""
    layout = window_layout(height, width, window, shift)
    tokens_per_window = window * window
    slots_per_image = layout.gather.numel()
    windows_per_image = slots_per_image // tokens_per_window
    images = torch.arange(batch)[:, None]
    gather = (layout.gather + height * width * images).reshape(-1)
    real = torch.ones(slots_per_image, dtype=torch.bool)
    real[layout.pad_slots] = False
    real = real.repeat(batch)
    seams = seam_mask = None
    if layout.seam_windows is not None:
        seams = (layout.seam_windows + windows_per_image * images).reshape(-1)
        seam_mask = layout.seam_mask.repeat(batch, 1, 1)
    total = batch * windows_per_image
    step = total if rows is None else max(1, rows // tokens_per_window)
    chunks = []
    for first in range(0, total, step):
        last = min(first + step, total)
        slots = slice(first * tokens_per_window, last * tokens_per_window)
        chunk_real = real[slots]
        padded = not bool(chunk_real.all())
        real_slots = chunk_real.nonzero().flatten() if padded else None
        chunk_seams = chunk_mask = None
        if seams is not None:
            inside = (seams >= first) & (seams < last)
            if bool(inside.any()):
                chunk_seams, chunk_mask = seams[inside] - first, seam_mask[inside]
        chunks.append(WindowChunk(
            gather[slots], (~chunk_real).nonzero().flatten() if padded else None, real_slots,
            gather[slots] if real_slots is None else gather[slots][real_slots],
            chunk_seams, chunk_mask).to(device))
    return tuple(chunks)


StagePlans = tuple[tuple[WindowChunk, ...], tuple[WindowChunk, ...]]   # unshifted, shifted


class WindowPlanCache:
    """A model's window plans on its device, per (size, batch, device, rows): built on the host
    once per key, moved once, the ``capacity`` most recent kept (a forward at one size uses two
    keys: the full and the half-size pass). ``clear`` frees them (``release_caches``)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._plans: OrderedDict[tuple, list[StagePlans]] = OrderedDict()

    def get(self, key: tuple, build: Callable[[], list[StagePlans]]) -> list[StagePlans]:
        plans = self._plans.get(key)
        if plans is None:
            plans = self._plans[key] = build()
            while len(self._plans) > self.capacity:
                self._plans.popitem(last=False)
        self._plans.move_to_end(key)
        return plans

    def clear(self) -> None:
        self._plans.clear()

    def nbytes(self) -> int:
        """Bytes of every cached tensor."""
        return sum(t.numel() * t.element_size()
                   for stages in self._plans.values() for both in stages for chunks in both
                   for chunk in chunks for t in chunk.tensors() if t is not None)

    def __len__(self) -> int:
        return len(self._plans)


def chunk_rows(device: torch.device) -> int | None:
    """Rows per chunk on the CPU: ``CPU_CHUNK_ROWS`` if set (0: none), else the size derived
    from this CPU's caches; one chunk elsewhere (a GPU wants every window in one launch)."""
    if device.type != "cpu":
        return None
    if CPU_CHUNK_ROWS is not None:
        return CPU_CHUNK_ROWS or None
    return swin_chunk_rows()


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for (W, h, N, d) windows; bias (W or 1, h, N, N).

    On the CPU in bfloat16 the two products and the softmax run as separate kernels (as the
    official Swin computes them): PyTorch's fused attention kernel was 1.4-1.5x slower there
    at window sizes (49 tokens, Swin-T; 144, Swin-L). Whole forward at 1024², on/off
    (``python bench/bench_cpu_paths.py --dtype bf16 --switch attention``): Swin-L 7.59-7.67 s
    against 7.82-7.95 s, Swin-T 2.19-2.22 s against 2.22-2.25 s. Elsewhere the fused kernel
    runs."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1)).add_(bias)
        return torch.matmul(scores.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = FastLinear(dim, hidden)
        self.fc2 = FastLinear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x, activation="gelu"))             # exact (erf) GELU


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = FastLinear(dim, dim * 3)
        self.proj = FastLinear(dim, dim)

    def position_bias(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(1, heads, N, N) bias for every token pair of a window, contiguous (attention
        kernels add it to every window: a strided one made bfloat16 adds 10x slower)."""
        n = self.relative_position_index.shape[0]
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = table.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        return bias.to(dtype).contiguous()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                seam_windows: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: additive, (nW, N, N) for every window, or with
        ``seam_windows`` (nS,) (indices into B * nW) (nS, N, N) for those windows only, the
        rest having none; or None. ``bias``: ``position_bias(x.dtype)``, when the caller
        attends many chunks of windows and makes it once."""
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).view(windows, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                    # (B*nW, h, N, d)
        if bias is None:
            bias = self.position_bias(q.dtype)                            # (1, h, N, N)
        if mask is not None and seam_windows is None:                     # (B*nW, h, N, N)
            n_windows = mask.shape[0]
            bias = bias + mask.to(q.dtype).unsqueeze(1)                   # (nW, h, N, N)
            if windows != n_windows:                                      # a batch of images
                bias = bias.repeat(windows // n_windows, 1, 1, 1)
        out = window_attention(q, k, v, bias)
        if seam_windows is not None:
            # Windows off the seams have a zero mask: the shared bias alone was exact there;
            # the seam windows (a row and a column of windows) are computed again with theirs.
            seam_bias = bias + mask.to(q.dtype).unsqueeze(1)              # (nS, h, N, N)
            seams = window_attention(
                q.index_select(0, seam_windows), k.index_select(0, seam_windows),
                v.index_select(0, seam_windows), seam_bias)
            out = out.index_copy(0, seam_windows, seams)
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, channels))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, chunks: tuple[WindowChunk, ...],
                rows_per_chunk: int | None = None) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, H*W, C), the windows of ``chunks`` (see ``window_chunks``)
        one chunk at a time, then the MLP over ``rows_per_chunk`` rows at a time."""
        batch, tokens, channels = x.shape
        rows = x.reshape(-1, channels)                                    # (B*H*W, C)
        out = rows.clone()                         # shortcut + attention, chunk by chunk
        bias = self.attn.position_bias(x.dtype)
        for chunk in chunks:
            windows = self.norm1(rows.index_select(0, chunk.gather))      # (n*N, C)
            if chunk.pad_slots is not None:        # padding tokens are zero vectors
                windows.index_fill_(0, chunk.pad_slots, 0.0)
            windows = self.attn(windows.view(-1, self.window ** 2, channels), chunk.seam_mask,
                                chunk.seam_windows, bias).reshape(-1, channels)
            if chunk.real_slots is not None:
                windows = windows.index_select(0, chunk.real_slots)
            out.index_add_(0, chunk.tokens, windows)
        return self._add_mlp(out, rows_per_chunk).view(batch, tokens, channels)

    def _add_mlp(self, x: torch.Tensor, rows_per_chunk: int | None) -> torch.Tensor:
        """x + mlp(norm2(x)) for (n, C) rows this block owns: in place, a chunk of rows at a
        time, unless autograd records (it needs every chunk's input unchanged)."""
        if rows_per_chunk is None or (torch.is_grad_enabled() and x.requires_grad):
            return x + self.mlp(self.norm2(x))
        for part in x.split(rows_per_chunk):
            part += self.mlp(self.norm2(part))
        return x

    def forward_padded(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The same function written for tracing at any (symbolic) size: zero padding to window
        multiples, ``roll``, window partition, attention, the inverse steps and a crop, where
        ``forward`` uses one precomputed gather per size (a table a traced graph cannot hold).
        Padding slots are zero vectors after ``norm1`` in both."""
        batch, tokens, channels = x.shape
        window, shift = self.window, self.shift
        shortcut = x
        x = self.norm1(x).view(batch, height, width, channels)
        pad_h, pad_w = -height % window, -width % window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))                          # (B, Hp, Wp, C)
        padded_h, padded_w = height + pad_h, width + pad_w
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_h, padded_w, window, shift, x.device)
        windows = self.attn(window_partition(x, window), mask)            # (B*nW, N, C)
        x = window_merge(windows, window, padded_h, padded_w)             # (B, Hp, Wp, C)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + x[:, :height, :width].reshape(batch, tokens, channels)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = FastLinear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = x.shape
        x = x.view(batch, height, width, channels)
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, height: int, width: int,
                plans: StagePlans | None = None):
        """Returns the stage output (B, H*W, C) and the next stage's input and size. ``plans``:
        ``self.window_plans(...)`` for this size and batch (made here when not given)."""
        if torch.compiler.is_compiling():        # torch.compile: the traceable window form
            return self.forward_padded(x, height, width)
        rows = chunk_rows(x.device)
        if plans is None:
            plans = self.window_plans(height, width, x.shape[0], x.device, rows)
        for block in self.blocks:
            x = block(x, plans[1 if block.shift else 0], rows)
        return self._downsample(x, height, width)

    def window_plans(self, height: int, width: int, batch: int, device: torch.device,
                     rows: int | None) -> StagePlans:
        unshifted, shifted = (window_chunks(height, width, self.window, shift, device, batch,
                                            rows) for shift in (0, self.window // 2))
        return unshifted, shifted

    def forward_padded(self, x: torch.Tensor, height: int, width: int):
        """``forward`` with every block's ``forward_padded`` (for traced graphs)."""
        for block in self.blocks:
            x = block.forward_padded(x, height, width)
        return self._downsample(x, height, width)

    def _downsample(self, x: torch.Tensor, height: int, width: int):
        if self.downsample is None:
            return x, x, height, width
        return x, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/4, W/4), padding H and W up to multiples of 4."""
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.patch, 0, -height % self.patch))
        x = self.proj(x)
        batch, channels, out_h, out_w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(batch, channels, out_h, out_w)


class SwinTransformer(nn.Module):
    """(B, 3, H, W) -> four maps (B, C*2^i, H/2^(i+2), W/2^(i+2)), i = 0..3."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.channels = config.stage_channels
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(self.channels[i], config.depths[i], config.num_heads[i],
                      config.window_size, config.mlp_ratio, downsample=i < 3)
            for i in range(4))
        for i, channels in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self.plan_cache = WindowPlanCache()

    def release_caches(self) -> None:
        """Drop the window plans cached on the model's device."""
        self.plan_cache.clear()

    def _apply(self, fn, recurse: bool = True):
        self.release_caches()        # moved or cast: plans for the old device are dead weight
        return super()._apply(fn, recurse)

    def _stage_plans(self, height: int, width: int, batch: int,
                     device: torch.device) -> list[StagePlans | None]:
        """Every stage's window plans for a (height, width) patch map, from the cache."""
        if torch.compiler.is_compiling():
            return [None] * len(self.layers)
        rows = chunk_rows(device)

        def build() -> list[StagePlans]:
            plans, h, w = [], height, width
            for stage in self.layers:
                plans.append(stage.window_plans(h, w, batch, device, rows))
                h, w = (h + 1) // 2, (w + 1) // 2
            return plans
        return self.plan_cache.get((height, width, batch, device, rows), build)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        batch, _, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        outputs = []
        plans = self._stage_plans(height, width, batch, x.device)
        for i, stage in enumerate(self.layers):
            stage_out, x, next_h, next_w = stage(x, height, width, plans[i])
            stage_out = getattr(self, f"norm{i}")(stage_out)
            # A channels-last view: the convolutions downstream prefer that layout.
            outputs.append(stage_out.view(batch, height, width, -1).permute(0, 3, 1, 2))
            height, width = next_h, next_w
        return outputs
