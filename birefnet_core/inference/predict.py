"""``predict``: images of any size in [0, 1] -> soft masks at the same size.

Pre-processing follows the official model cards (torchvision ``Resize`` on a PIL image, i.e.
bilinear with antialiasing when shrinking; ``Normalize`` with the model's mean and std). The
official inference script resizes with OpenCV's INTER_LINEAR instead (no antialiasing); the
difference between the two is measured in the README. The mask is resized back bilinearly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError

DEFAULT_RESOLUTION = (1024, 1024)


def working_size(model: nn.Module, resolution: int | tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) the network runs at: the given one, else the model's default."""
    if resolution is None:
        info = getattr(model, "info", None)
        return tuple(info.resolution) if info is not None else DEFAULT_RESOLUTION
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if len(size) != 2 or any(not isinstance(s, int) or s <= 0 or s % 32 for s in size):
        raise InputError(f"resolution must be a positive multiple of 32 (or a pair of them), "
                         f"got {resolution!r}; for example 1024 or (1440, 2560)")
    return size


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate (B, C, H, W) float images in [0, 1] with C in 1, 3, 4; return (B, 3, H, W)."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor, not {type(images).__name__}")
    if images.ndim != 4:
        raise InputError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if batch == 0 or height == 0 or width == 0:
        raise InputError(f"images must not be empty, got shape {tuple(images.shape)}")
    if channels not in (1, 3, 4):
        raise InputError(f"images must have 1, 3 or 4 channels (alpha is ignored), got {channels}")
    if not images.is_floating_point():
        raise InputError(f"images must be float in [0, 1], got {images.dtype}; divide 8-bit "
                         "images by 255")
    if not torch.isfinite(images).all():
        raise InputError("images contain NaN or infinity")
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    return images[:, :3]


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, antialiased when shrinking (PIL's and torchvision's behaviour)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                         antialias=shrinking)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, C, H, W) -> (images - mean) / std per channel. The statistics stay Python numbers,
    so nothing is copied from the host to the images' device for them."""
    channels = [(images[:, c:c + 1] - m) / s for c, (m, s) in enumerate(zip(mean, std))]
    return torch.cat(channels, dim=1)


def _model_placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def predict(model: nn.Module, images: torch.Tensor,
            resolution: int | tuple[int, int] | None = None, *,
            output_device: torch.device | str | None = None) -> torch.Tensor:
    """Soft masks (B, 1, H, W) in [0, 1], float32 on ``output_device`` (default: the images').

    images: float (B, 3, H, W) in [0, 1] of any size (1 or 4 channels are accepted; alpha is
    ignored). They are resized to the working resolution (a multiple of 32; default: the
    model's own), normalised, segmented, and the mask is resized back to (H, W). Images on the
    host are checked there and moved to the model's device here, once: no check reads device
    memory.
    """
    rgb = check_images(images)
    size = working_size(model, resolution)
    device, dtype = _model_placement(model)
    info = getattr(model, "info", None)
    mean = info.mean if info is not None else (0.485, 0.456, 0.406)
    std = info.std if info is not None else (0.229, 0.224, 0.225)
    with torch.inference_mode():
        x = resize_images(rgb.to(device=device, dtype=torch.float32).clamp(0, 1), size)
        logits = model(normalize(x, mean, std).to(dtype))
        masks = torch.sigmoid(logits.float())
        masks = resize_images(masks, tuple(images.shape[-2:])).clamp(0, 1)
    # A copy made outside inference mode is an ordinary tensor callers may modify in place.
    return masks.to(output_device if output_device is not None else images.device).clone()
