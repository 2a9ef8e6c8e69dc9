"""The training objective of the BiRefNet paper: per-pixel losses on every supervised decoder
stage, a BCE on the outward-reference gradient maps, and an optional classification term.

Conventions follow the official training code, so that numbers (and gradients) agree with it:

- the pixel losses take probabilities (sigmoid of the logits) and a ground truth in [0, 1];
- every stage prediction is bilinearly resized (aligned corners) to the ground truth's size;
- the weighted losses are *summed* over the stages, coarse to fine;
- the IoU loss is summed over the batch (not averaged), the other losses are means;
- the BCE clamps its logarithms at -100, as ``torch.nn.BCELoss`` does.

Every function computes in float32 with autocast switched off: the losses are reductions whose
bf16/fp16 results would be too coarse, and some (BCE) refuse to run under autocast.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F

# Active pixel losses and their weights per task, as in the official config. COD and HRSOD
# use the DIS5K weights; General-2K the General ones.
TASK_LAMBDAS: dict[str, dict[str, float]] = {
    "DIS5K": {"bce": 30.0, "iou": 0.5, "ssim": 10.0},
    "General": {"bce": 30.0, "iou": 0.5, "mae": 100.0, "ssim": 10.0},
    "Matting": {"bce": 30.0, "mae": 100.0, "ssim": 10.0},
}
TASK_ALIASES = {"COD": "DIS5K", "HRSOD": "DIS5K", "General-2K": "General"}
CLASSIFICATION_WEIGHT = 5.0      # lambda of the cross-entropy on auxiliary class predictions
GRADIENT_WEIGHT = 1.0            # weight of the gradient-branch BCE in the total loss


def task_lambdas(task: str) -> dict[str, float]:
    """A fresh copy of the pixel-loss weights of ``task`` (DIS5K, General, Matting, ...)."""
    name = TASK_ALIASES.get(task, task)
    if name not in TASK_LAMBDAS:
        known = sorted((*TASK_LAMBDAS, *TASK_ALIASES))
        raise ValueError(f"unknown task {task!r}; choose one of {known}")
    return dict(TASK_LAMBDAS[name])


def region_only_lambdas(lambdas: Mapping[str, float], task: str,
                        region_epoch: int = 1) -> dict[str, float]:
    """The weights in the last epochs of training, which favour region losses.

    The official loop rescales the weights at the start of each of those epochs, so the factors
    compound: at the ``region_epoch``-th of them (1-based), for every task but Matting, BCE is
    off, IoU is scaled by 0.5**k and MAE by 0.9**k (SSIM kept). Matting keeps BCE and MAE and
    scales SSIM and MSE by 0.9**k.
    """
    if region_epoch < 1:
        raise ValueError(f"region_epoch counts from 1, got {region_epoch}")
    k = region_epoch
    if TASK_ALIASES.get(task, task) == "Matting":
        factors = {"mae": 1.0, "mse": 0.9 ** k, "ssim": 0.9 ** k}
    else:
        factors = {"bce": 0.0, "ssim": 1.0, "iou": 0.5 ** k, "mae": 0.9 ** k}
    return {name: weight * factors.get(name, 1.0) for name, weight in lambdas.items()}


@contextmanager
def _full_precision(device: torch.device):
    """Switch autocast off for the device type, so the losses run in the dtype given."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


# ------------------------------------------------------------------------------- pixel losses

def bce_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of probabilities (logs clamped at -100, as nn.BCELoss)."""
    return F.binary_cross_entropy(probs, target)


def iou_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of 1 - soft IoU, each sample's IoU over all its pixels."""
    dims = tuple(range(1, probs.dim()))
    intersection = (probs * target).sum(dim=dims)                          # (B,)
    union = target.sum(dim=dims) + probs.sum(dim=dims) - intersection      # (B,)
    return (1.0 - intersection / union).sum()


@lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """A (1, 1, size, size) normalised Gaussian window, float32 on the CPU."""
    taps = torch.tensor([math.exp(-((i - size // 2) ** 2) / (2 * sigma ** 2))
                         for i in range(size)], dtype=torch.float32)
    taps = taps / taps.sum()
    return torch.outer(taps, taps)[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of two (B, C, H, W) maps in [0, 1] (Gaussian window, zero
    padding, constants (0.01)^2 and (0.03)^2)."""
    channels = a.shape[1]
    window = _gaussian_window(window_size, sigma).to(a.device, a.dtype)
    window = window.expand(channels, 1, window_size, window_size)
    pad = window_size // 2

    def local_mean(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=pad, groups=channels)

    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mean_a ** 2
    var_b = local_mean(b * b) - mean_b ** 2
    covariance = local_mean(a * b) - mean_a * mean_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    numerator = (2 * mean_a * mean_b + c1) * (2 * covariance + c2)
    denominator = (mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2)
    return (numerator / denominator).mean()


def ssim_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - (1 + SSIM) / 2: SSIM in [-1, 1] mapped to a loss in [0, 1]."""
    return 1.0 - (1.0 + ssim(probs, target)) / 2.0


def mae_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(probs, target)


def mse_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(probs, target)


def structure_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boundary-weighted BCE + weighted IoU on *logits* (the MVANet structure loss).

    Pixels whose 31x31 neighbourhood mean differs from their label (near edges) weigh up to 6x.
    """
    weight = 1 + 5 * torch.abs(F.avg_pool2d(target, 31, stride=1, padding=15) - target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted_bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))    # (B, C)
    probs = torch.sigmoid(logits)
    intersection = (probs * target * weight).sum(dim=(2, 3))
    union = ((probs + target) * weight).sum(dim=(2, 3))
    weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
    return (weighted_bce + weighted_iou).mean()


# Losses on probabilities, by the names the lambdas use. "structure" takes logits (see
# pixel_loss), so it is listed apart.
PROBABILITY_LOSSES = {"bce": bce_loss, "iou": iou_loss, "ssim": ssim_loss, "mae": mae_loss,
                      "mse": mse_loss}
LOSS_NAMES = (*PROBABILITY_LOSSES, "structure")


def _check_lambdas(lambdas: Mapping[str, float]) -> None:
    unknown = sorted(set(lambdas) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(f"unknown pixel losses {unknown}; known: {list(LOSS_NAMES)}")


def pixel_loss(stage_logits: Sequence[torch.Tensor], target: torch.Tensor,
               lambdas: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted pixel losses summed over the stages.

    stage_logits: (B, 1, h_i, w_i) logits, any sizes (resized bilinearly, aligned corners, to
    the target's); target: (B, 1, H, W) in [0, 1]. Returns the total (a scalar tensor) and each
    loss's weighted value averaged over the stages (floats, for logging). Losses with a zero
    weight are skipped. The structure loss, should it be weighted, gets the logits (the
    official loop would pass it probabilities and apply the sigmoid twice).
    """
    _check_lambdas(lambdas)
    active = {name: weight for name, weight in lambdas.items() if weight}
    target = target.float()
    total = target.new_zeros(())
    parts = {name: 0.0 for name in active}
    with _full_precision(target.device):
        for logits in stage_logits:
            logits = logits.float()
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                                       align_corners=True)
            probs = torch.sigmoid(logits)
            for name, weight in active.items():
                value = (structure_loss(logits, target) if name == "structure"
                         else PROBABILITY_LOSSES[name](probs, target)) * weight
                total = total + value
                parts[name] += value.item() / len(stage_logits)
    return total, parts


# ----------------------------------------------------------------------- auxiliary losses

def gradient_loss(gradient_logits: Sequence[torch.Tensor],
                  gradient_labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """BCE between the gradient branch's maps and their labels, summed over the stages.

    Predictions (B, 1, h_i, w_i) are resized to their label's (B, 1, H, W) size; both are passed
    through a sigmoid first (the labels are unbounded: an image Laplacian times a mask).
    """
    if len(gradient_logits) != len(gradient_labels):
        raise ValueError("one gradient label per gradient prediction is needed")
    total = None
    with _full_precision(gradient_labels[0].device):
        for logits, label in zip(gradient_logits, gradient_labels):
            logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear",
                                   align_corners=True)
            value = bce_loss(torch.sigmoid(logits), torch.sigmoid(label.float()))
            total = value if total is None else total + value
    return total


def classification_loss(class_logits: Sequence[torch.Tensor | None], labels: torch.Tensor,
                        weight: float = CLASSIFICATION_WEIGHT) -> torch.Tensor:
    """Weighted cross-entropy of auxiliary (B, classes) predictions, summed over the heads
    (heads given as None are skipped); labels: (B,) class indices."""
    total = labels.new_zeros((), dtype=torch.float32)
    with _full_precision(labels.device):
        for logits in class_logits:
            if logits is not None:
                total = total + F.cross_entropy(logits.float(), labels) * weight
    return total
