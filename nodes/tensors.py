"""Conversions and checks at the node boundary: ComfyUI IMAGE (B, H, W, C) and MASK (B, H, W)
on one side, birefnet_core's NCHW tensors on the other. Nothing else in the pack converts.
"""
from __future__ import annotations

import re

import torch


class NodeInputError(ValueError):
    """Bad input to a node; the message starts with the node's name and says what to do."""


def image_to_nchw(image: torch.Tensor, node: str) -> torch.Tensor:
    """IMAGE (B, H, W, C) float in [0, 1], C in 1/3/4 -> (B, 3, H, W) float32 (alpha dropped)."""
    if not isinstance(image, torch.Tensor):
        raise NodeInputError(f"{node}: the image input must be an IMAGE tensor, got "
                             f"{type(image).__name__}")
    if image.ndim == 3:                                   # a single H, W, C image
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise NodeInputError(f"{node}: an IMAGE must have shape (batch, height, width, channels), "
                             f"got {tuple(image.shape)}")
    batch, height, width, channels = image.shape
    if batch == 0:
        raise NodeInputError(f"{node}: the image batch is empty; connect a node that outputs at "
                             "least one image")
    if height < 1 or width < 1:
        raise NodeInputError(f"{node}: the image has no pixels ({height}x{width})")
    if channels not in (1, 3, 4):
        raise NodeInputError(f"{node}: images must have 1, 3 or 4 channels, got {channels}; is a "
                             "MASK connected where an IMAGE belongs?")
    image = image.float() if image.is_floating_point() else image.float() / 255.0
    if not torch.isfinite(image).all():
        raise NodeInputError(f"{node}: the image contains NaN or infinite values; check the node "
                             "that produced it")
    nchw = image.permute(0, 3, 1, 2)
    if channels == 1:
        nchw = nchw.expand(-1, 3, -1, -1)
    return nchw[:, :3].clamp(0.0, 1.0)


def nchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> IMAGE (B, H, W, C)."""
    return x.permute(0, 2, 3, 1).contiguous()


def mask_to_nchw(mask: torch.Tensor, node: str) -> torch.Tensor:
    """MASK (B, H, W) or (H, W) -> (B, 1, H, W) float32 in [0, 1]."""
    if not isinstance(mask, torch.Tensor):
        raise NodeInputError(f"{node}: the mask input must be a MASK tensor, got "
                             f"{type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[-1] == 1:           # (B, H, W, 1) from some packs
        mask = mask[..., 0]
    if mask.ndim != 3 or mask.shape[0] == 0:
        raise NodeInputError(f"{node}: a MASK must have shape (batch, height, width), got "
                             f"{tuple(mask.shape)}")
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise NodeInputError(f"{node}: the mask contains NaN or infinite values")
    return mask.clamp(0.0, 1.0).unsqueeze(1)


def nchw_to_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> MASK (B, H, W)."""
    return x[:, 0].contiguous()


def broadcast_batches(node: str, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Repeat batch-1 tensors to the common batch size; other mismatches are errors."""
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    batch = max(sizes.values())
    wrong = {name: n for name, n in sizes.items() if n not in (1, batch)}
    if wrong:
        listing = ", ".join(f"{name} {n}" for name, n in sizes.items())
        raise NodeInputError(f"{node}: batch sizes do not match ({listing}); give every input "
                             f"the same number of frames, or one frame to use for all")
    return {name: t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t
            for name, t in tensors.items()}


def check_same_size(node: str, image: torch.Tensor, mask: torch.Tensor) -> None:
    if tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
        raise NodeInputError(
            f"{node}: the mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
            f"{image.shape[-1]}x{image.shape[-2]} (width x height); use the mask made from this "
            "image, or resize one of them first")


_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


def parse_color(text: str, node: str) -> tuple[float, float, float]:
    """'#RRGGBB', '#RGB' (with or without '#') or 'R, G, B' (0-255) -> RGB floats in [0, 1]."""
    value = str(text).strip()
    match = _HEX.match(value)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(2 * d for d in digits)
        return tuple(int(digits[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    parts = [p.strip() for p in value.split(",")]
    if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return tuple(int(p) / 255.0 for p in parts)
    raise NodeInputError(f"{node}: cannot read the colour {text!r}; write it as #RRGGBB (for "
                         "example #00FF00) or as R, G, B with values 0-255")


def color_image(color: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    """A (1, 3, 1, 1) colour tensor on like's device and dtype, for broadcasting."""
    return torch.tensor(color, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
