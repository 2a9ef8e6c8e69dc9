"""``segment_region``: BiRefNet on the subject a guide mask points at.

A selector (SAM, GroundingDINO, a mask drawn in the editor, a box) says *which* object; BiRefNet
says *where exactly its edge is*. Each image is cropped to the guide's bounding box plus a
margin, the crop runs at the model's working resolution (a small subject in a large frame gets
all of it), and the mask is pasted back and kept within the guide grown by the same margin, so
nothing else in the frame is cut out.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..errors import InputError
from .predict import check_images, predict
from .tiles import soft_dilation

Progress = Callable[[int, int], None]
GUIDE_THRESHOLD = 0.5           # guide pixels above it mark the subject


def segment_region(model: nn.Module, images: torch.Tensor, guide: torch.Tensor, *,
                   margin: float = 0.1, resolution: int | tuple[int, int] | None = None,
                   progress: Progress | None = None) -> torch.Tensor:
    """Masks (B, 1, H, W) float32 on the images' device, zero outside the grown guide.

    images: (B, C, H, W) float in [0, 1]. guide: (B, 1, H, W) or (1, 1, H, W) (one guide for
    every image); its pixels above 0.5 are the subject, roughly. margin: added on every side
    of the guide's bounding box, as a fraction of the box's longer side (at least 8 pixels);
    the result may reach that far beyond the guide and no further (it fades out over
    the outer third of that distance). progress(done, total):
    after every image; it may raise to stop.
    """
    rgb = check_images(images)
    guide = _check_guide(guide, rgb)
    if not margin >= 0:
        raise InputError(f"margin must be 0 or more (a fraction of the guide's size), got "
                         f"{margin}")
    results = []
    for index in range(rgb.shape[0]):
        subject = guide[min(index, guide.shape[0] - 1), 0] > GUIDE_THRESHOLD   # (H, W) bool
        results.append(_segment_one(model, rgb[index:index + 1], subject, margin, resolution,
                                    index).to(images.device))
        if progress is not None:
            progress(index + 1, rgb.shape[0])
    return torch.cat(results)


def guide_box(subject: torch.Tensor, margin: float) -> tuple[int, int, int, int, int]:
    """(top, left, bottom, right, grow): the bounding box of the (H, W) bool ``subject``
    grown by ``grow`` pixels on every side (clipped to the image), ``grow`` = margin times
    the box's longer side, at least 8. The subject must not be empty."""
    rows = torch.nonzero(subject.any(dim=1))[:, 0]
    cols = torch.nonzero(subject.any(dim=0))[:, 0]
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    grow = max(8, round(margin * max(bottom - top, right - left)))
    height, width = subject.shape
    return (max(0, top - grow), max(0, left - grow), min(height, bottom + grow),
            min(width, right + grow), grow)


def _segment_one(model: nn.Module, image: torch.Tensor, subject: torch.Tensor, margin: float,
                 resolution: int | tuple[int, int] | None, index: int) -> torch.Tensor:
    """(1, 3, H, W) and its (H, W) subject -> (1, 1, H, W)."""
    if not subject.any():
        raise InputError(f"the guide of image {index} is empty (no pixel above "
                         f"{GUIDE_THRESHOLD}); mark the subject on it (paint it in a mask "
                         "editor, or take a selector's mask), or segment without a guide")
    top, left, bottom, right, grow = guide_box(subject, margin)
    crop_mask = predict(model, image[..., top:bottom, left:right], resolution)
    within = soft_dilation(subject[top:bottom, left:right].to(crop_mask.device), grow)
    out = torch.zeros(1, 1, *subject.shape, device=crop_mask.device)
    out[..., top:bottom, left:right] = crop_mask * within
    return out


def _check_guide(guide: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if not isinstance(guide, torch.Tensor) or guide.ndim != 4 or guide.shape[1] != 1:
        shape = tuple(guide.shape) if isinstance(guide, torch.Tensor) else type(guide).__name__
        raise InputError(f"guide must be a mask of shape (B, 1, H, W), got {shape}")
    if not bool((guide > GUIDE_THRESHOLD).any()):        # checked first: at any size
        raise InputError(f"the guide is empty (no pixel above {GUIDE_THRESHOLD}): mark the "
                         "subject on it (paint it in a mask editor, or take a selector's mask), "
                         "or segment without a guide")
    if guide.shape[0] not in (1, images.shape[0]) or guide.shape[-2:] != images.shape[-2:]:
        raise InputError(f"the guide is {tuple(guide.shape)} but the images are "
                         f"{tuple(images.shape)}: give one guide per image (or one for all), "
                         "at the images' size")
    if not guide.is_floating_point() and guide.dtype != torch.bool:
        raise InputError(f"guide must be float in [0, 1] or bool, got {guide.dtype}")
    return guide.float()
