"""What this CPU runs fast, found once per process: native bfloat16, and its cache sizes.

Native bfloat16. A CPU that lists bfloat16 instructions (AVX512_BF16 or AMX-BF16 on x86, BF16
on Arm, as PyTorch's cpuinfo reports them) may still run bfloat16 products slower than float32
ones: an Intel Xeon (family 6 model 207) under KVM lists AVX512_BF16, oneDNN picks its
``avx512_core_bf16`` kernels, and a bfloat16 product runs at about half float32's rate (Swin-T
at 1024² four times slower in bfloat16). So the flags only shortlist: the answer is a short
timing probe on one thread, a (1024, 256) x (256, 256) product in float32 and in bfloat16
taking turns ``PROBE_PAIRS`` times, the median of the per-pair ratios of the thread's CPU time
(see ``_product_timer``). bfloat16 counts as native where it ran at least
``MIN_BF16_SPEEDUP`` times float32's rate: on the AMD EPYC (Zen 4) where the CPU paths were
tuned the best bfloat16 product ran 2.2-2.3x float32's and the whole network 1.8x; on the Xeon
0.4-0.7x. ``BIREFNET_CPU_BF16=1`` or ``0`` in the environment sets the answer without a probe.

Cache sizes come from PyTorch's cpuinfo (every OS), else Linux sysfs or macOS sysctl, else
``DEFAULT_L2_BYTES``; they size Swin's CPU row chunk (``swin_chunk_rows``).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

ENVIRONMENT_SWITCH = "BIREFNET_CPU_BF16"
MIN_BF16_SPEEDUP = 1.5
PROBE_PAIRS = 7
PROBE_SHAPE = (1024, 256, 256)           # rows, inputs, outputs of the probe's product
# Zen 4's L2 per core: the size the row chunk was first tuned to (4096 rows at 2 threads).
DEFAULT_L2_BYTES = 1 << 20
# Bytes of each thread's L2 per chunk row: 4096 rows on 2 cores of 1 MiB (Zen 4, measured
# best there); the sweep on the Xeon (2 MiB per core) is in README "Speed on the CPU".
L2_BYTES_PER_ROW = 512
CHUNK_ROWS_RANGE = (2048, 32768)


@dataclass(frozen=True)
class Bfloat16Support:
    """Whether this CPU runs bfloat16 natively, and the evidence (for info lines)."""
    native: bool
    instructions: str | None          # the bfloat16 instruction set listed, or None
    speedup: float | None             # measured bf16 rate / fp32 rate, None if not probed

    @property
    def reason(self) -> str:
        return ("this CPU runs bfloat16 natively" if self.native
                else "this CPU has no native bfloat16")

    @property
    def evidence(self) -> str:
        if self.speedup is None:
            return self.instructions or "no bfloat16 instructions listed"
        return (f"{self.instructions} listed, a bfloat16 product ran at {self.speedup:.2f}x "
                "float32's rate")


class CacheSizes(NamedTuple):
    l2_bytes: int                     # per core
    source: str                       # where the number came from


def bf16_instructions(capabilities: Mapping[str, object], machine: str,
                      mkldnn_bf16: bool) -> str | None:
    """The bfloat16 instruction set a CPU lists (None: none). ``capabilities`` as
    ``torch.cpu.get_capabilities()`` returns them; on Arm PyTorch's own check is used."""
    if capabilities.get("amx_bf16"):
        return "AMX-BF16"
    if capabilities.get("avx512_bf16"):
        return "AVX512_BF16"
    if machine.lower() in ("arm64", "aarch64") and (capabilities.get("bf16") or mkldnn_bf16):
        return "Arm BF16"
    return None


def bf16_speedup(timer: Callable[[torch.dtype], float], pairs: int = PROBE_PAIRS) -> float:
    """Median of ``timer(float32) / timer(bfloat16)`` over ``pairs`` turns (after one each
    to warm up): how many times faster the bfloat16 product ran."""
    timer(torch.float32), timer(torch.bfloat16)
    return statistics.median(timer(torch.float32) / timer(torch.bfloat16) for _ in range(pairs))


def _product_timer() -> Callable[[torch.dtype], float]:
    """Seconds of the probe's product in a dtype. On one thread, timed by that thread's CPU
    clock (other processes' load does not count: the ratio held at 0.64-0.72 on the Xeon with
    11 runnable processes on its 2 cores, where wall times scattered from 0.03x to 1.4x); on
    Windows, whose thread clock ticks every 15.6 ms, by the wall clock."""
    clock = time.perf_counter if platform.system() == "Windows" else time.thread_time
    rows, inputs, outputs = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator)
    operands = {dtype: (x.to(dtype), weight.to(dtype)) for dtype in (torch.float32,
                                                                     torch.bfloat16)}

    def seconds(dtype: torch.dtype) -> float:
        with torch.inference_mode():
            start = clock()
            F.linear(*operands[dtype])
            return max(clock() - start, 1e-9)
    return seconds


def _measure_speedup() -> float:
    """``bf16_speedup`` of this CPU, on one torch thread (restored after, ~0.3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bf16_speedup(_product_timer())
    finally:
        torch.set_num_threads(threads)


def judge_bf16(instructions: str | None, override: str | None,
               measure: Callable[[], float]) -> Bfloat16Support:
    """The decision from its inputs: the environment switch first, then the instructions
    listed, then the probe (run only where instructions are listed)."""
    if override is not None and override.strip() in ("0", "1"):
        return Bfloat16Support(override.strip() == "1", instructions, None)
    if instructions is None:
        return Bfloat16Support(False, None, None)
    speedup = measure()
    return Bfloat16Support(speedup >= MIN_BF16_SPEEDUP, instructions, speedup)


@cache
def cpu_bf16() -> Bfloat16Support:
    """Whether this CPU runs bfloat16 natively (probed once per process, ~0.3 s)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    mkldnn_bf16 = bool(torch.backends.mkldnn.is_available()
                       and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    instructions = bf16_instructions(capabilities, platform.machine(), mkldnn_bf16)
    return judge_bf16(instructions, os.environ.get(ENVIRONMENT_SWITCH), _measure_speedup)


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """dtype "auto" for a device, and why: float16 on CUDA; on the CPU bfloat16 where it is
    native (Swin-T 1.8x faster on Zen 4, masks within 0.0031 of float32), else float32;
    float32 on every other device."""
    if device.type == "cuda":
        return torch.float16, "fp16: a CUDA GPU"
    if device.type == "cpu":
        support = cpu_bf16()
        return (torch.bfloat16 if support.native else torch.float32,
                f"{'bf16' if support.native else 'fp32'}: {support.reason}")
    return torch.float32, f"fp32: the default on {device.type}"


def _sysfs_l2(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """L2 size from Linux sysfs (index*/level == 2); None where the folder is absent."""
    try:
        for index in sorted(root.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
                return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return None
    return None


def _sysctl_l2() -> int | None:
    """L2 size from macOS sysctl (performance cores first); None elsewhere."""
    if platform.system() != "Darwin":
        return None
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        for name in (b"hw.perflevel0.l2cachesize", b"hw.l2cachesize"):
            value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
            if libc.sysctlbyname(name, ctypes.byref(value), ctypes.byref(size), None, 0) == 0:
                if value.value > 0:
                    return int(value.value)
    except (OSError, AttributeError):
        return None
    return None


def read_cache_sizes(capabilities: Mapping[str, object],
                     fallbacks: tuple[Callable[[], int | None], ...]) -> CacheSizes:
    """The first positive L2 size: PyTorch's cpuinfo, then each fallback, then the default."""
    reported = capabilities.get("l2_cache_size")
    if isinstance(reported, int) and reported > 0:
        return CacheSizes(reported, "cpuinfo")
    for fallback in fallbacks:
        found = fallback()
        if found:
            return CacheSizes(found, fallback.__name__.strip("_").removesuffix("_l2"))
    return CacheSizes(DEFAULT_L2_BYTES, "default")


@cache
def cache_sizes() -> CacheSizes:
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return read_cache_sizes(capabilities, (_sysfs_l2, _sysctl_l2))


def chunk_rows_for(l2_bytes: int, threads: int) -> int:
    """Swin's CPU row chunk: each thread's share of a chunk's rows (their norm, qkv,
    attention and MLP intermediates) sized to its L2, a power of two within
    ``CHUNK_ROWS_RANGE``."""
    rows = max(1, l2_bytes * max(1, threads) // L2_BYTES_PER_ROW)
    low, high = CHUNK_ROWS_RANGE
    return max(low, min(high, 1 << (rows.bit_length() - 1)))


def swin_chunk_rows() -> int:
    """The row chunk for this CPU at the current torch thread count."""
    return chunk_rows_for(cache_sizes().l2_bytes, torch.get_num_threads())


def describe_caches() -> str:
    sizes = cache_sizes()
    return f"L2 {sizes.l2_bytes >> 10} KiB per core ({sizes.source})"
