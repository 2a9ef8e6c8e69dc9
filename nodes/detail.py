"""BiRefNetDetail: masks at a large photo's own pixel scale (boundary tiles, bounded memory)."""
from __future__ import annotations

import torch

from ..birefnet_core import refine_detail
from .preview import with_preview
from .runtime import interrupt_aware_progress, loaded_model, model_errors, resolution_problem
from .tensors import (
    broadcast_batches,
    check_same_size,
    image_to_nchw,
    mask_to_nchw,
    nchw_to_image,
    nchw_to_mask,
)

NODE = "BiRefNetDetail"


class BiRefNetDetail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("BIREFNET_MODEL", {"tooltip": "From BiRefNet Loader."}),
            "image": ("IMAGE", {"tooltip": "Photos of any size: 4K, 6K, 8K. They stay in "
                                           "system memory; only one batch of tiles goes to "
                                           "the GPU."}),
            "scale": ("FLOAT", {
                "default": 1.0, "min": 0.25, "max": 2.0, "step": 0.05,
                "tooltip": "Tile pixels per image pixel. 1.0: the model sees every pixel of "
                           "the photo (finest detail). Lower is faster and coarser."}),
            "band": ("INT", {
                "default": 0, "min": 0, "max": 1024,
                "tooltip": "Pixels around the coarse mask's uncertain edge that may change. "
                           "0: three working pixels of the coarse pass."}),
            "overlap": ("FLOAT", {
                "default": 0.25, "min": 0.0, "max": 0.5, "step": 0.05,
                "tooltip": "Fraction of a tile shared with its neighbours, blended smoothly "
                           "so no seam shows."}),
            "max_tiles": ("INT", {
                "default": 128, "min": 1, "max": 4096,
                "tooltip": "At most this many tiles per image; above it the scale is lowered "
                           "until they fit (bounds the time)."}),
            "batch_size": ("INT", {
                "default": 0, "min": 0, "max": 64,
                "tooltip": "Tiles per forward pass; halved automatically if memory runs out. "
                           "0: auto (1 on the CPU, where batches measured no faster; on a "
                           "GPU as many as its free memory holds, up to 8)."}),
            "resolution": ("INT", {
                "default": 0, "min": 0, "max": 4096, "step": 32,
                "tooltip": "Working resolution of the coarse pass (made only when no mask is "
                           "connected) and of each tile. 0: the model's own."}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "The coarse mask to refine (from BiRefNet Segment). "
                                         "Without it the node makes it itself."}),
        }}

    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "cutout_rgba")
    OUTPUT_TOOLTIPS = ("The mask at the image's own detail; it differs from the coarse mask "
                       "only near its edge.",
                       "The image with that mask as alpha (4 channels): save as PNG.")
    FUNCTION = "run"
    CATEGORY = "BiRefNet"
    DESCRIPTION = ("Bring a large photo's mask to the photo's own pixel scale: the model runs "
                   "again on tiles along the subject's edge (hair, fur, lace) and they are "
                   "blended into the coarse mask.")

    @classmethod
    def VALIDATE_INPUTS(cls, resolution=0, **_):
        return resolution_problem(resolution, NODE) or True

    def run(self, model, image, **options) -> dict:
        outputs = self.refine(model, image, **options)
        return with_preview(NODE, outputs, image, outputs[1])

    def refine(self, model, image, scale, band, overlap, max_tiles, batch_size, resolution,
               mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = image_to_nchw(image, NODE)
        coarse = None
        if mask is not None:
            coarse = mask_to_nchw(mask, NODE)
            check_same_size(NODE, rgb, coarse)
            parts = broadcast_batches(NODE, image=rgb, mask=coarse)
            rgb, coarse = parts["image"], parts["mask"].contiguous()
        network = loaded_model(model, resolution, NODE, batch=int(batch_size) or 1)
        with model_errors(NODE, "tile"):
            masks = refine_detail(
                network, rgb, coarse, resolution=resolution or None,
                tile_size=resolution or None, scale=float(scale),
                band=int(band) or None, overlap=float(overlap), max_tiles=int(max_tiles),
                batch_size=int(batch_size) or None, progress=interrupt_aware_progress())
        cutout = torch.cat([rgb.to(masks.device), masks], dim=1)
        return nchw_to_mask(masks), nchw_to_image(cutout)
