"""BiRefNetSegment: images -> soft masks, RGBA cutouts and a composite on a colour."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

import comfy.model_management as mm
import comfy.utils

from .. import birefnet_core
from .preview import with_preview
from .tensors import (NodeInputError, color_image, image_to_nchw, nchw_to_image, nchw_to_mask,
                      parse_color)

NODE = "BiRefNetSegment"


def interrupt_aware_progress(total: int):
    """A progress callback: updates ComfyUI's bar and stops if the user pressed Cancel."""
    bar = comfy.utils.ProgressBar(total)

    def report(done: int, _total: int) -> None:
        bar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()
    return report


def per_image(node: str, step: Callable[..., torch.Tensor], *batches: torch.Tensor) -> torch.Tensor:
    """step(*images) for each image of equal-length (B, C, H, W) batches, on ComfyUI's torch
    device, with progress and Cancel between images; the results, concatenated, on the
    intermediate device. birefnet_core's errors come out as NodeInputError naming the node."""
    total = batches[0].shape[0]
    device, keep = mm.get_torch_device(), mm.intermediate_device()
    report = interrupt_aware_progress(total)
    mm.throw_exception_if_processing_interrupted()
    results = []
    for index in range(total):
        try:
            result = step(*(batch[index:index + 1].to(device) for batch in batches))
        except birefnet_core.BiRefNetError as error:
            raise NodeInputError(f"{node}: {error}") from error
        results.append(result.to(keep))
        report(index + 1, total)
    return torch.cat(results)


def resolution_problem(resolution: int, node: str) -> str | None:
    if resolution and (resolution < 0 or resolution % 32):
        return (f"{node}: resolution {resolution} is not a multiple of 32; use "
                f"{max(32, round(resolution / 32) * 32)} or 0 for the model's own")
    return None


def run_model(patcher, images: torch.Tensor, resolution: int, batch_size: int,
              node: str) -> torch.Tensor:
    """(B, 3, H, W) on any device -> masks (B, 1, H, W) on ComfyUI's intermediate device."""
    problem = resolution_problem(resolution, node)
    if problem:
        raise NodeInputError(problem)
    mm.load_models_gpu([patcher])
    mm.throw_exception_if_processing_interrupted()
    with model_errors(node, "image"):
        return birefnet_core.batching.predict_batched(
            patcher.model, images, resolution=resolution or None, batch_size=batch_size,
            output_device=mm.intermediate_device(),
            progress=interrupt_aware_progress(images.shape[0]))


@contextmanager
def model_errors(node: str, unit: str) -> Iterator[None]:
    """birefnet_core's errors as NodeInputError naming the node; running out of memory even at
    one ``unit`` per pass (predict halves its batches first) as an error saying what to change."""
    try:
        yield
    except birefnet_core.BiRefNetError as error:
        raise NodeInputError(f"{node}: {error}") from error
    except Exception as error:
        if birefnet_core.batching.is_out_of_memory(error):
            raise RuntimeError(f"{node}: out of memory even at one {unit} per pass; lower the "
                               "resolution, choose dtype fp16/bf16 in the Loader, or free "
                               "memory (Unload models)") from error
        raise


def settings_problem(resolution: int, background_color: str, node: str) -> str | bool:
    """VALIDATE_INPUTS of the nodes that take a resolution and a colour: checked when the
    prompt is queued, before any model is loaded. True, or what is wrong."""
    problem = resolution_problem(resolution, node)
    if problem:
        return problem
    try:
        parse_color(background_color, node)
    except NodeInputError as error:
        return str(error)
    return True


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
                refine_edges=False):
        color = parse_color(background_color, NODE)
        rgb = image_to_nchw(image, NODE)
        masks = finish_masks(run_model(model, rgb, resolution, batch_size, NODE), threshold,
                             invert)
        if refine_edges:
            rgb = per_image(NODE, birefnet_core.estimate_foreground, rgb, masks)
        rgb = rgb.to(masks.device)
        cutout = torch.cat([rgb, masks], dim=1)
        composite = rgb * masks + color_image(color, rgb) * (1.0 - masks)
        return nchw_to_mask(masks), nchw_to_image(cutout), nchw_to_image(composite)
