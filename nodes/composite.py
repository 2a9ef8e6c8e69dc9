"""BiRefNetComposite: a foreground and its mask over a background image or colour."""
from __future__ import annotations

import torch

import comfy.model_management as mm

from .runtime import fit_background
from .tensors import (
    NodeInputError,
    broadcast_batches,
    check_same_size,
    color_image,
    image_to_nchw,
    mask_to_nchw,
    nchw_to_image,
    parse_color,
)

NODE = "BiRefNetComposite"
FITS = ("cover", "stretch", "center")


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
