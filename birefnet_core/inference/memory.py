"""What one forward needs in memory beyond the weights: an estimate to hand to a memory
manager (ComfyUI's ``load_models_gpu(memory_required=...)``) and to size batches by.

    bytes = batch * (height * width * per_pixel * dtype size + per_image) + per_forward

per backbone, device kind (accelerator or CPU) and dtype size (2 bytes: float16 and
bfloat16; 4 bytes: float32). ``per_pixel`` counts dtype-sized elements per input pixel; it
differs a little between the two sizes because some of the work stays float32 whatever the
model's dtype. The coefficients come from bench/bench_memory.py (bench/results/memory.json):
the peak of one network forward's live tensors at 1024² and 2048², and of a batch of two at
1024². ``per_pixel`` is the slope between the two sizes. What the 1024² peak holds beyond
the slope is ``per_image`` where a second image added more than the slope's share (PVT-v2:
325 MiB for the second float16 image, where the slope gives 135) and ``per_forward`` where
it added less (Swin: 208 MiB, the slope's share; its window tables are per size, not per
image). Each is rounded up by about 5 %. Where one size was measured, the family's measured
slope is scaled by the channel widths (noted per row).

Accelerator rows: a fake ``cuda:0`` (FakeTensorMode), live tensor bytes during the forward.
A real GPU adds allocator rounding and cached blocks, and cuDNN/cuBLAS workspaces that are
not tensors; ComfyUI adds its own reserve (``minimum_inference_memory``, 1 GiB at least) on
top of what is asked. CPU rows: the peak resident set over the weights (one process per
measurement); where the CPU was not measured apart, the accelerator's row is used.

Measured peaks, fake cuda:0, batch 1, MiB (float16 / float32):
    swin_v1_t  1024²: 516.0 / 649.0 (bfloat16 532.0); before a change to Swin's window
               tables made during these measurements: 326.3 / 487.4, 2048²: 945.0 / 1560.0
               (kept for the slope)
    swin_v1_l  1024²: 622.7
    pvt_v2_b0  1024²: 253.8 / 511.0    2048²: 658.9
    pvt_v2_b2  1024²: 476.9
Batch of two at 1024², float16, MiB: swin_v1_t 723.7, pvt_v2_b0 578.5.
CPU, peak RSS over the weights, float32, batch 1, MiB:
    pvt_v2_b0  1024²: 462.2    swin_v1_t  1024²: 668.7
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MIB = 2 ** 20


@dataclass(frozen=True)
class Coefficients:
    """``per_pixel`` dtype-sized elements per input pixel, ``image_mib`` MiB per image that
    do not grow with its size, ``forward_mib`` MiB per forward whatever its batch."""
    per_pixel: float
    image_mib: float
    forward_mib: float


Rows = dict[int, Coefficients]          # dtype size in bytes -> coefficients

# Accelerator coefficients, per backbone.
#   swin_v1_t: slope 103.1 (float16) and 89.4 (float32) elements/pixel (before the window
#              table change, which added a per-size amount: 516.0 - 326.3 MiB at 1024²);
#              float16 1024² 532.0 (bfloat16) - 216 = 316 per forward; float32 1024² 649.0
#              - 376 = 273 per forward (320: the 190 MiB gained by float16 on 487.4).
#   swin_v1_l (1024² only): twice swin_v1_t's channels, twice its slope.
#   pvt_v2_b0: float16 slope 67.5 elements/pixel; a second image 578.5 - 253.8 MiB;
#              float32 (1024² only): float16's elements, per-image part doubled (the float16
#              / float32 peaks at 1024² are 1 : 2.01).
#   pvt_v2_b2 (1024² only): twice pvt_v2_b0's channels, twice its slope and per-image part.
ACCELERATOR: dict[str, Rows] = {
    "swin_v1_t": {2: Coefficients(108, 0, 343), 4: Coefficients(94, 0, 320)},
    "swin_v1_l": {2: Coefficients(216, 0, 392), 4: Coefficients(188, 0, 440)},
    "pvt_v2_b0": {2: Coefficients(71, 160, 0), 4: Coefficients(71, 250, 0)},
    "pvt_v2_b2": {2: Coefficients(142, 250, 0), 4: Coefficients(142, 500, 0)},
}
# CPU coefficients, float32 (the CPU's bfloat16 runs the same path). pvt_v2_b0 (462.2 MiB at
# 1024²) lies under its accelerator row, kept. swin_v1_t (668.7 MiB at 1024²: oneDNN's
# scratch and the row chunks' buffers) keeps the slope with a larger per-forward part;
# swin_v1_l twice swin_v1_t's, as on the accelerator.
CPU: dict[str, Rows] = {
    "swin_v1_t": {2: Coefficients(94, 0, 330), 4: Coefficients(94, 0, 330)},
    "swin_v1_l": {2: Coefficients(188, 0, 660), 4: Coefficients(188, 0, 660)},
}
SAME_AS = {"swin_v1_s": "swin_v1_l", "swin_v1_b": "swin_v1_l", "pvt_v2_b1": "pvt_v2_b2",
           "pvt_v2_b5": "pvt_v2_b2"}


def coefficients(variant: str | None, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> Coefficients:
    """The coefficients of a backbone (``ModelInfo.variant``) on a device for a dtype; for a
    variant not known here, those of the largest known (an over-estimate frees more, never
    too little)."""
    size = 2 if dtype.itemsize <= 2 else 4
    name = SAME_AS.get(variant or "", variant)
    if name not in ACCELERATOR:
        name = max(ACCELERATOR, key=lambda known: ACCELERATOR[known][size].per_pixel)
    if torch.device(device).type == "cpu" and name in CPU:
        return CPU[name][size]
    return ACCELERATOR[name][size]


def forward_memory_bytes(variant: str | None, height: int, width: int, dtype: torch.dtype,
                         batch: int, device: torch.device | str) -> int:
    """Estimated peak bytes of one forward of ``batch`` images at (height, width) on
    ``device``, beyond the weights. dtype: the model's (float32, float16 or bfloat16)."""
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"batch, height and width must be positive, got {batch}, {height}, "
                         f"{width}")
    fit = coefficients(variant, device, dtype)
    element = torch.empty((), dtype=dtype).element_size()
    image = height * width * fit.per_pixel * element + fit.image_mib * MIB
    return int(batch * image + fit.forward_mib * MIB)


def batch_for_budget(variant: str | None, height: int, width: int, dtype: torch.dtype,
                     device: torch.device | str, budget_bytes: int, most: int = 8) -> int:
    """The most images per forward (1 to ``most``) whose estimate fits ``budget_bytes``."""
    one = forward_memory_bytes(variant, height, width, dtype, 1, device)
    two = forward_memory_bytes(variant, height, width, dtype, 2, device)
    per_image, fixed = two - one, 2 * one - two
    return max(1, min(most, (budget_bytes - fixed) // max(1, per_image)))


def free_device_bytes(device: torch.device | str) -> int | None:
    """Free memory on a CUDA device (driver's view: other processes and cached blocks count
    as used), or None where torch cannot tell (the CPU, MPS, others)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


# refine_detail's host maps, bytes per image pixel: the image (3 float32), the coarse mask
# (float32), the blend's two sums (float32), the band (bool) and its weight (float32), the
# refined mask (float32); the band's box sums add two float32 maps while they are made.
DETAIL_HOST_BYTES_PER_PIXEL = 3 * 4 + 4 + 2 * 4 + 1 + 4 + 4 + 2 * 4


def detail_host_bytes(height: int, width: int) -> int:
    """What refine_detail keeps on the host for one (height, width) image, tiles aside."""
    return height * width * DETAIL_HOST_BYTES_PER_PIXEL
