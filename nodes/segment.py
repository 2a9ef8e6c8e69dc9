"""BiRefNetSegment: images -> soft masks, RGBA cutouts and a composite on a colour."""
from __future__ import annotations

import torch

from ..birefnet_core import estimate_foreground, segment_region
from ..birefnet_core.inference.region import GUIDE_THRESHOLD
from .preview import with_preview
from .runtime import (
    interrupt_aware_progress,
    loaded_model,
    model_errors,
    per_image,
    run_model,
    settings_problem,
)
from .tensors import (
    broadcast_batches,
    check_same_size,
    color_image,
    image_to_nchw,
    mask_to_nchw,
    nchw_to_image,
    nchw_to_mask,
    NodeInputError,
    parse_color,
)

NODE = "BiRefNetSegment"


def finish_masks(masks: torch.Tensor, threshold: float, invert: bool) -> torch.Tensor:
    if threshold > 0:
        masks = (masks >= threshold).to(masks.dtype)
    return 1.0 - masks if invert else masks


class BiRefNetSegment:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("BIREFNET_MODEL", {"tooltip": "From BiRefNet Loader."}),
            "image": ("IMAGE", {"tooltip": "Images of any size; RGBA and grayscale are accepted "
                                           "(alpha is ignored)."}),
            "resolution": ("INT", {
                "default": 0, "min": 0, "max": 4096, "step": 32,
                "tooltip": "Working resolution (square, multiple of 32). 0: the model's own "
                           "(1024, 2048 for HR models, 2560x1440 for lite-2K)."}),
            "batch_size": ("INT", {
                "default": 4, "min": 1, "max": 64,
                "tooltip": "Images per forward pass; halved automatically if memory runs out "
                           "(the result does not change)."}),
            "threshold": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "0 keeps the soft mask (recommended). Above 0, the mask becomes "
                           "binary at this value."}),
            "invert": ("BOOLEAN", {"default": False, "tooltip": "Keep the background instead."}),
            "background_color": ("STRING", {
                "default": "#FFFFFF", "tooltip": "Colour behind the subject in the composite "
                                                 "output: #RRGGBB or R, G, B."}),
        }, "optional": {
            "refine_edges": ("BOOLEAN", {
                "default": False,
                "tooltip": "Estimate the subject's own colours at soft edges (multilevel "
                           "foreground estimation), so the cutout and composite have no halo "
                           "of the old background. The mask itself is unchanged."}),
            "guide": ("MASK", {
                "tooltip": "Which subject to cut out: a rough mask of it (drawn in the mask "
                           "editor, from a SAM or box selector). The model runs on the "
                           "subject's box at its full resolution and the result stays near "
                           "the guide."}),
        }}

    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "cutout_rgba", "composite")
    OUTPUT_TOOLTIPS = ("Soft subject mask (1 = subject).",
                       "The image with the mask as alpha (4 channels): save as PNG for "
                       "transparency.",
                       "The subject over background_color.")
    FUNCTION = "run"
    CATEGORY = "BiRefNet"
    DESCRIPTION = "Cut the subject out of each image with BiRefNet."

    @classmethod
    def VALIDATE_INPUTS(cls, resolution=0, background_color="#FFFFFF", **_):
        return settings_problem(resolution, background_color, NODE)

    def run(self, model, image, **options) -> dict:
        outputs = self.segment(model, image, **options)
        return with_preview(NODE, outputs, image, outputs[1])

    def segment(self, model, image, resolution, batch_size, threshold, invert, background_color,
                refine_edges=False, guide=None):
        color = parse_color(background_color, NODE)
        rgb = image_to_nchw(image, NODE)
        masks = run_model(model, rgb, resolution, batch_size, NODE) if guide is None else \
            guided_masks(model, rgb, guide, resolution)
        masks = finish_masks(masks, threshold, invert)
        if refine_edges:
            rgb = per_image(NODE, estimate_foreground, rgb, masks)
        rgb = rgb.to(masks.device)
        cutout = torch.cat([rgb, masks], dim=1)
        composite = rgb * masks + color_image(color, rgb) * (1.0 - masks)
        return nchw_to_mask(masks), nchw_to_image(cutout), nchw_to_image(composite)


# Load Image's MASK output for a photo without a painted mask is a 64x64 placeholder of zeros.
EMPTY_GUIDE = (f"{NODE}: the guide mask is empty (nothing marks the subject; a Load Image whose "
               "photo has no painted mask gives an empty 64x64 one): paint the subject in the "
               "mask editor (right-click the Load Image node, Open in MaskEditor, save), or "
               "connect a mask from SAM3 Detect or another selector; or disconnect guide to cut "
               "out the whole image's subject")


def guided_masks(model, rgb: torch.Tensor, guide: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 3, H, W) and a MASK guide -> masks of the guided subject (B, 1, H, W)."""
    subject = mask_to_nchw(guide, NODE)
    if not bool((subject > GUIDE_THRESHOLD).any()):          # before the size: any size
        raise NodeInputError(EMPTY_GUIDE)
    check_same_size(NODE, rgb, subject)
    subject = broadcast_batches(NODE, image=rgb, guide=subject)["guide"]
    network = loaded_model(model, resolution, NODE)
    with model_errors(NODE, "image"):
        return segment_region(network, rgb, subject, resolution=resolution or None,
                              progress=interrupt_aware_progress())
