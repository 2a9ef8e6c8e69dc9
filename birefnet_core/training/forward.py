"""BiRefNet's training-mode forward and loss, beside (never inside) the inference forward.

``training_forward`` runs the modules of a ``BiRefNet`` the way the official network runs
while it trains: BatchNorm in whatever mode the modules are in (batch statistics after
``model.train()``), the ASPP dropout (p = 0.5) in training mode, and the side outputs the
inference forward skips: the multi-stage supervision maps (``conv_ms_spvn_*``) and the gradient
branch's predictions (``gdt_convs_pred_*``) with their labels. ``training_loss`` combines the
paper's objective as the official training loop does.

The model must be un-fused (``load_model(..., fuse=False)``): folded BatchNorm cannot train and
its state dict has no BatchNorm keys. Not reproduced: the backbones' stochastic depth (the
official PVT/Swin drop a residual branch at random with rates 0.1/0.2 during training).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..network.blocks import ASPPDeformable, BasicDecBlk
from ..network.decoder import Decoder, resize
from ..network.model import BiRefNet
from .losses import (
    GRADIENT_WEIGHT,
    classification_loss,
    gradient_loss,
    pixel_loss,
    region_only_lambdas,
    task_lambdas,
)

ASPP_DROPOUT = 0.5       # the official ASPPDeformable ends with nn.Dropout(0.5)
_LAPLACIAN_SIZE = 5      # the official gradient labels use a 5x5 Laplacian


@dataclass
class TrainingOutputs:
    """What one training forward produces (B = batch, H x W = input size)."""

    stage_logits: list[torch.Tensor]      # (B,1,H/32..), (B,1,H/16..), (B,1,H/8..), (B,1,H,W)
    gradient_logits: list[torch.Tensor]   # gradient-branch maps at H/32, H/16, H/8
    gradient_labels: list[torch.Tensor]   # their labels, each (B, 1, H, W)


@dataclass
class TrainingLoss:
    total: torch.Tensor                   # scalar to back-propagate
    parts: dict[str, float]               # weighted values for logging: bce, iou, ..., gradient


# ------------------------------------------------------------------------- gradient labels

def image_laplacian(images: torch.Tensor) -> torch.Tensor:
    """The 5x5 Laplacian of the channel mean: (B, C, H, W) -> (B, 1, H, W).

    Kernel: ones with -24 at the centre, divided by 48 (the sum of its absolute values);
    borders reflected. This is what the official code computes for its gradient labels.
    """
    grey = images.mean(dim=1, keepdim=True)
    size = _LAPLACIAN_SIZE
    kernel = torch.ones(1, 1, size, size, dtype=grey.dtype, device=grey.device)
    kernel[..., size // 2, size // 2] = 1 - size * size
    kernel = kernel / (2 * (size * size - 1))
    padded = F.pad(grey, (size // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kernel)


# --------------------------------------------------------------- blocks in training mode

def _batch_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(x), except that a training BatchNorm seeing one value per channel (a batch of one
    pooled vector, which batch statistics cannot normalise) uses its running statistics. The
    official network has no BatchNorm at all when trained with batches of one."""
    if isinstance(norm, nn.BatchNorm2d) and norm.training and x.shape[0] * x[0, 0].numel() == 1:
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0.0, norm.eps)
    return norm(x)


def aspp_forward(aspp: ASPPDeformable, x: torch.Tensor) -> torch.Tensor:
    """ASPPDeformable as the official module computes it, with every branch materialised (the
    inference path's fused projection assumes eval-mode BatchNorm): (B, C, h, w) -> same."""
    branches = [F.relu(branch.bn(branch.atrous_conv(x)))
                for branch in (aspp.aspp1, *aspp.aspp_deforms)]             # (B, 256, h, w) each
    pool, conv, norm, _ = aspp.global_avg_pool
    pooled = F.relu(_batch_norm(norm, conv(pool(x))))                      # (B, 256, 1, 1)
    branches.append(pooled.expand(-1, -1, *x.shape[-2:]))
    out = F.relu(aspp.bn1(aspp.conv1(torch.cat(branches, dim=1))))
    return F.dropout(out, ASPP_DROPOUT, training=aspp.training)


def decoder_block_forward(block: BasicDecBlk, x: torch.Tensor) -> torch.Tensor:
    """conv -> BN -> ReLU -> ASPPDeformable (training form) -> conv -> BN."""
    x = F.relu(block.bn_in(block.conv_in(x)))
    return block.bn_out(block.conv_out(aspp_forward(block.dec_att, x)))


def _check_unfused(model: BiRefNet) -> None:
    if not isinstance(model.decoder.decoder_block4.bn_in, nn.BatchNorm2d):
        raise ValueError("this model's BatchNorm layers are folded; load it with "
                         "load_model(..., fuse=False) to train it")


# -------------------------------------------------------------------------- the forward

@dataclass
class _SideOutputs:
    stage_logits: list[torch.Tensor]
    gradient_logits: list[torch.Tensor]


def _supervised_stage(decoder: Decoder, p: torch.Tensor, level: int,
                      side: _SideOutputs) -> torch.Tensor:
    """Decoder stage output p -> the gated p, recording the stage's supervision map and its
    gradient-branch prediction (logits (B, 1, h, w) each)."""
    side.stage_logits.append(getattr(decoder, f"conv_ms_spvn_{level}")(p))
    features = getattr(decoder, f"gdt_convs_{level}")(p)                    # (B, 16, h, w)
    side.gradient_logits.append(getattr(decoder, f"gdt_convs_pred_{level}")(features))
    attention = torch.sigmoid(getattr(decoder, f"gdt_convs_attn_{level}")(features))
    return p * attention


def _decode(decoder: Decoder, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
            x3: torch.Tensor, x4: torch.Tensor) -> _SideOutputs:
    """The decoder's forward with its training heads run (stage shapes as in Decoder.forward)."""
    side = _SideOutputs([], [])
    p = decoder_block_forward(decoder.decoder_block4, decoder._with_patches(x4, image, 5))
    p = _supervised_stage(decoder, p, 4, side)                              # H/32
    p = resize(p, x3.shape[-2:]) + decoder.lateral_block4(x3)
    p = decoder_block_forward(decoder.decoder_block3, decoder._with_patches(p, image, 4))
    p = _supervised_stage(decoder, p, 3, side)                              # H/16
    p = resize(p, x2.shape[-2:]) + decoder.lateral_block3(x2)
    p = decoder_block_forward(decoder.decoder_block2, decoder._with_patches(p, image, 3))
    p = _supervised_stage(decoder, p, 2, side)                              # H/8
    p = resize(p, x1.shape[-2:]) + decoder.lateral_block2(x1)
    p = decoder_block_forward(decoder.decoder_block1, decoder._with_patches(p, image, 2))
    side.stage_logits.append(decoder._output(p, image))                     # (B, 1, H, W)
    return side


def _gradient_labels(images: torch.Tensor, masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """The image's Laplacian times each mask (resized to the image), (B, 1, H, W) each."""
    laplacian = image_laplacian(images)
    return [laplacian * resize(mask.to(laplacian.dtype), images.shape[-2:]) for mask in masks]


def _check_images(images: torch.Tensor, gts: torch.Tensor | None) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2] % 32 or images.shape[-1] % 32:
        raise InputError(f"image height and width must be multiples of 32, got "
                         f"{tuple(images.shape[-2:])}")
    if gts is not None and (gts.dim() != 4 or gts.shape[:2] != (images.shape[0], 1)):
        raise InputError(f"gts must be (B, 1, H, W) with B = {images.shape[0]}, got "
                         f"{tuple(gts.shape)}")


def training_forward(model: BiRefNet, images: torch.Tensor,
                     gts: torch.Tensor | None = None) -> TrainingOutputs:
    """Run ``model`` on normalised images (B, 3, H, W) and return every training output.

    Gradient labels: with ``gts`` (B, 1, H, W) in [0, 1], the image Laplacian masked by the
    ground truth, as the paper describes; without, masked by each stage's own supervision
    logits (not detached), which is what the official code computes. The modules run in their
    current mode: call ``model.train()`` first to train. In eval mode the finest stage equals
    ``model(images)`` up to float rounding.
    """
    _check_images(images, gts)
    _check_unfused(model)
    x1, x2, x3, x4 = model.encode(images)
    for block in model.squeeze_module:
        x4 = decoder_block_forward(block, x4)
    side = _decode(model.decoder, images, x1, x2, x3, x4)
    masks = [gts] * 3 if gts is not None else side.stage_logits[:3]
    return TrainingOutputs(stage_logits=side.stage_logits,
                           gradient_logits=side.gradient_logits,
                           gradient_labels=_gradient_labels(images, masks))


# ----------------------------------------------------------------------------- the loss

def training_loss(outputs: TrainingOutputs, gts: torch.Tensor, task: str = "General", *,
                  region_only: bool = False, region_epoch: int = 1,
                  lambdas: dict[str, float] | None = None,
                  gradient_weight: float = GRADIENT_WEIGHT,
                  class_logits: list[torch.Tensor | None] | None = None,
                  class_labels: torch.Tensor | None = None) -> TrainingLoss:
    """The official objective: pixel losses over the four stages (task weights, or
    ``lambdas``), plus the gradient-branch BCE, plus the classification loss when class
    predictions and labels are given.

    region_only: the weights of the last epochs (``losses.region_only_lambdas``; the
    ``region_epoch``-th such epoch, counted from 1). The gradient BCE stays, as officially.
    gts: (B, 1, H, W), clamped to [0, 1].
    """
    weights = dict(lambdas) if lambdas is not None else task_lambdas(task)
    if region_only:
        weights = region_only_lambdas(weights, task, region_epoch)
    target = gts.float().clamp(0, 1)
    total, parts = pixel_loss(outputs.stage_logits, target, weights)
    parts["pixel"] = total.item()
    if gradient_weight:
        gradient = gradient_loss(outputs.gradient_logits, outputs.gradient_labels)
        total = total + gradient * gradient_weight
        parts["gradient"] = gradient.item() * gradient_weight
    if class_logits is not None and class_labels is not None:
        classification = classification_loss(class_logits, class_labels)
        total = total + classification
        parts["classification"] = classification.item()
    parts["total"] = total.item()
    return TrainingLoss(total=total, parts=parts)
