"""BiRefNetRefineEdges: refine a mask against its image and decontaminate the edge colours."""
from __future__ import annotations

import torch

from .. import birefnet_core
from .preview import with_preview
from .runtime import per_image
from .tensors import (
    NodeInputError,
    broadcast_batches,
    check_same_size,
    image_to_nchw,
    mask_to_nchw,
    nchw_to_image,
    nchw_to_mask,
)

NODE = "BiRefNetRefineEdges"
METHODS = ("multilevel", "blur_fusion", "none")


class BiRefNetRefineEdges:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The image the mask was made from."}),
            "mask": ("MASK", {"tooltip": "The mask to refine (1 = subject); one mask serves a "
                                         "whole image batch."}),
            "foreground_method": (list(METHODS), {
                "default": "multilevel",
                "tooltip": "How the subject's colours at soft edges are estimated, removing "
                           "the old background's tint: multilevel (best), blur_fusion (faster), "
                           "or none (the image's own colours)."}),
            "guided_radius": ("INT", {
                "default": 0, "min": 0, "max": 64,
                "tooltip": "Guided filter radius in pixels: the mask's edges follow the image's "
                           "edges within this distance. 0 = off."}),
            "guided_eps": ("FLOAT", {
                "default": 0.001, "min": 1e-6, "max": 1.0, "step": 0.0001,
                "tooltip": "Guided filter smoothing: smaller follows the image's edges more "
                           "closely, larger gives a softer mask."}),
            "grow": ("INT", {
                "default": 0, "min": -64, "max": 64,
                "tooltip": "Grow (positive) or shrink (negative) the mask by this many pixels, "
                           "with a round brush."}),
            "feather": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 64.0, "step": 0.1,
                "tooltip": "Blur the mask's edge (Gaussian sigma in pixels). 0 = off."}),
            "band": ("INT", {
                "default": 0, "min": 0, "max": 256,
                "tooltip": "Above 0, only pixels within this many pixels of the original "
                           "mask's edge may change; the rest keeps the original mask. "
                           "0 = no limit."}),
        }}

    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "foreground", "cutout_rgba")
    OUTPUT_TOOLTIPS = ("The refined mask.",
                       "The subject's estimated colours (the image itself with method none): "
                       "composite it with the refined mask for halo-free edges.",
                       "foreground with the refined mask as alpha (4 channels): save as PNG "
                       "for transparency.")
    FUNCTION = "run"
    CATEGORY = "BiRefNet"
    DESCRIPTION = ("Refine a mask (guided filter, grow/shrink, feather, limited to a band around "
                   "the edge) and estimate the subject's colours at its soft edges.")

    def run(self, image: torch.Tensor, mask: torch.Tensor, **options) -> dict:
        outputs = self.refine(image, mask, **options)
        return with_preview(NODE, outputs, image, outputs[2])

    def refine(self, image: torch.Tensor, mask: torch.Tensor, foreground_method: str,
               guided_radius: int, guided_eps: float, grow: int, feather: float,
               band: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if foreground_method not in METHODS:
            raise NodeInputError(f"{NODE}: foreground_method must be one of {', '.join(METHODS)}, "
                                 f"got {foreground_method!r}")
        rgb, alpha = image_to_nchw(image, NODE), mask_to_nchw(mask, NODE)
        check_same_size(NODE, rgb, alpha)
        parts = broadcast_batches(NODE, image=rgb, mask=alpha)
        options = dict(guided_radius=int(guided_radius), guided_eps=float(guided_eps),
                       grow=int(grow), feather=float(feather), band=int(band))

        def step(rgb_one: torch.Tensor, alpha_one: torch.Tensor) -> torch.Tensor:
            refined = birefnet_core.refine_mask(rgb_one, alpha_one, **options)
            colors = rgb_one if foreground_method == "none" else \
                birefnet_core.estimate_foreground(rgb_one, refined, method=foreground_method)
            return torch.cat([colors, refined], dim=1)

        rgba = per_image(NODE, step, parts["image"], parts["mask"])
        return nchw_to_mask(rgba[:, 3:]), nchw_to_image(rgba[:, :3]), nchw_to_image(rgba)
