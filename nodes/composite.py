"""BiRefNetComposite: a foreground and its mask over a background image or colour."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.model_management as mm

from .tensors import (NodeInputError, broadcast_batches, check_same_size, color_image,
                      image_to_nchw, mask_to_nchw, nchw_to_image, parse_color)

NODE = "BiRefNetComposite"
FITS = ("cover", "stretch", "center")


def fit_background(background: torch.Tensor, height: int, width: int, fit: str) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, height, width).

    cover: scale to cover, keeping the aspect ratio, and crop the middle; stretch: scale to the
    size, ignoring the aspect ratio; center: no scaling, crop or pad around the middle. Padding
    is NaN, for the caller to fill with its colour.
    """
    bg_h, bg_w = background.shape[-2:]
    if fit == "stretch":
        return _resize(background, height, width)
    if fit == "cover":
        scale = max(height / bg_h, width / bg_w)
        scaled_h, scaled_w = max(height, round(bg_h * scale)), max(width, round(bg_w * scale))
        background = _resize(background, scaled_h, scaled_w)
        bg_h, bg_w = scaled_h, scaled_w
    top, left = (bg_h - height) // 2, (bg_w - width) // 2
    pad = (max(0, -left), max(0, width - bg_w + left), max(0, -top), max(0, height - bg_h + top))
    background = F.pad(background, pad, value=float("nan"))          # NaN marks the padding
    top, left = max(0, top), max(0, left)
    return background[..., top:top + height, left:left + width]


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (height, width):
        return x
    shrinking = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                         antialias=shrinking).clamp(0, 1)


class BiRefNetComposite:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "foreground": ("IMAGE", {"tooltip": "The image the subject comes from (or a "
                                                    "decontaminated foreground)."}),
                "mask": ("MASK", {"tooltip": "The subject's mask (1 = subject)."}),
                "background_fit": (list(FITS), {
                    "default": "cover",
                    "tooltip": "How a background image of another size is fitted: cover "
                               "(scale and crop the middle), stretch, or center (no scaling; "
                               "uncovered parts get background_color)."}),
                "background_color": ("STRING", {
                    "default": "#FFFFFF",
                    "tooltip": "Used when no background image is connected (and for uncovered "
                               "parts with center): #RRGGBB or R, G, B."}),
            },
            "optional": {
                "background": ("IMAGE", {"tooltip": "A background image or batch; one image is "
                                                    "used for every frame."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("foreground x mask + background x (1 - mask).",)
    FUNCTION = "composite"
    CATEGORY = "BiRefNet"
    DESCRIPTION = "Place the cut-out subject over a new background image or colour."

    def composite(self, foreground, mask, background_fit, background_color, background=None):
        if background_fit not in FITS:
            raise NodeInputError(f"{NODE}: background_fit must be one of {', '.join(FITS)}")
        color = parse_color(background_color, NODE)
        device = mm.intermediate_device()
        fg = image_to_nchw(foreground, NODE).to(device)
        alpha = mask_to_nchw(mask, NODE).to(device)
        check_same_size(NODE, fg, alpha)
        height, width = fg.shape[-2:]
        fill = color_image(color, fg)
        if background is None:
            bg = fill.expand(1, 3, height, width)
        else:
            bg = fit_background(image_to_nchw(background, NODE).to(device), height, width,
                                background_fit)
            bg = torch.where(torch.isnan(bg), fill.expand_as(bg), bg)
        parts = broadcast_batches(NODE, foreground=fg, mask=alpha, background=bg)
        out = parts["foreground"] * parts["mask"] + parts["background"] * (1 - parts["mask"])
        return (nchw_to_image(out),)
