"""BiRefNetVideoMatte: video frames -> stable masks, cutouts and composites, streamed in batches."""
from __future__ import annotations

from collections.abc import Iterator

import torch

import comfy.model_management as mm
import comfy.utils

from .. import birefnet_core
from ..birefnet_core.inference import STABILIZE_METHODS
from ..birefnet_core.inference.video import auto_batch_size_on
from .preview import with_preview
from .runtime import (
    fit_background,
    load_for_forward,
    model_errors,
    resolution_problem,
    settings_problem,
)
from .tensors import NodeInputError, color_image, image_to_nchw, parse_color

NODE = "BiRefNetVideoMatte"


class BiRefNetVideoMatte:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("BIREFNET_MODEL", {"tooltip": "From BiRefNet Loader."}),
            "frames": ("IMAGE", {"tooltip": "Video frames as an image batch (from Load Video / "
                                            "Get Video Components or VideoHelperSuite)."}),
            "resolution": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 32,
                                   "tooltip": "Working resolution (multiple of 32); 0: the "
                                              "model's own."}),
            "batch_size": ("INT", {"default": 0, "min": 0, "max": 64,
                                   "tooltip": "Frames per forward pass; halved automatically if "
                                              "memory runs out (the masks do not change). 0: "
                                              "auto (1 on the CPU, where batches measured "
                                              "slower; 4 on a GPU)."}),
            "stabilize": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "Temporal smoothing of the masks where the scene "
                                               "holds still (less flicker; moving edges do not "
                                               "lag). 0: every frame's own mask."}),
            "stabilize_method": (list(STABILIZE_METHODS), {
                "default": "median",
                "tooltip": "median: strongest flicker removal, looks 1-2 frames ahead; ema: "
                           "uses past frames only."}),
            "refine_edges": ("BOOLEAN", {"default": False,
                                         "tooltip": "Estimate the subject's own colours at soft "
                                                    "edges (no halo of the old background) for "
                                                    "the foreground, cutout and composite."}),
            "background_color": ("STRING", {"default": "#00FF00",
                                            "tooltip": "Behind the subject in the composite "
                                                       "when no background is connected: "
                                                       "#RRGGBB or R, G, B."}),
        }, "optional": {
            "background": ("IMAGE", {"tooltip": "A background image (used for every frame) or "
                                                "one per frame; scaled to cover the frame."}),
        }}

    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE", "IMAGE")
    RETURN_NAMES = ("masks", "foreground", "cutout_rgba", "composite")
    OUTPUT_TOOLTIPS = ("Soft subject masks, one per frame.",
                       "The frames, with the subject's estimated colours at soft edges when "
                       "refine_edges is on.",
                       "foreground with the mask as alpha (4 channels).",
                       "The subject over the background (image or colour).")
    FUNCTION = "run"
    CATEGORY = "BiRefNet"
    DESCRIPTION = ("Cut the subject out of every frame of a video, several frames per pass, with "
                   "temporal stabilisation against flicker.")

    @classmethod
    def VALIDATE_INPUTS(cls, resolution=0, background_color="#00FF00", **_):
        return settings_problem(resolution, background_color, NODE)

    def run(self, model, frames, **options) -> dict:
        outputs = self.matte(model, frames, **options)
        return with_preview(NODE, outputs, frames, outputs[2])

    def matte(self, model, frames, resolution, batch_size, stabilize, stabilize_method,
              refine_edges, background_color, background=None):
        problem = resolution_problem(resolution, NODE)
        if problem:
            raise NodeInputError(problem)
        if isinstance(frames, torch.Tensor) and frames.ndim == 3:
            frames = frames.unsqueeze(0)
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] == 0:
            image_to_nchw(frames, NODE)                                # raises the clear error
        count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
        color = parse_color(background_color, NODE)
        backgrounds = _backgrounds(background, count)
        keep = mm.intermediate_device()
        plain_rgb = (frames.shape[-1] == 3 and frames.dtype == torch.float32
                     and frames.device == keep)
        outputs = _Outputs(count, height, width, keep,
                           reuse_frames=frames if plain_rgb and not refine_edges else None)
        # auto (0) is decided for the device the model is about to run on
        load_for_forward(model, resolution, batch_size or auto_batch_size_on(model.load_device))
        bar = comfy.utils.ProgressBar(count)

        def between_passes(_done: int, _total: int) -> None:
            mm.throw_exception_if_processing_interrupted()

        with model_errors(NODE, "frame"):
            pairs = birefnet_core.stream_mattes(
                model.model, _frames_nchw(frames), batch_size=batch_size,
                stabilize=float(stabilize), resolution=resolution or None,
                method=stabilize_method, output_device=keep, progress=between_passes)
            for index, (frame, mask) in enumerate(pairs):
                if refine_edges:
                    frame = birefnet_core.estimate_foreground(frame[None], mask[None])[0]
                behind = backgrounds.get(index, frame) if backgrounds else \
                    color_image(color, frame)[0]
                outputs.write(index, frame, mask, frame * mask + behind * (1.0 - mask))
                bar.update_absolute(index + 1, count)
        return outputs.result()


class _Outputs:
    """The node's output tensors, allocated once and filled frame by frame (no concatenation,
    so the peak is the outputs themselves plus one batch)."""

    def __init__(self, count: int, height: int, width: int, device: torch.device,
                 reuse_frames: torch.Tensor | None) -> None:
        self.masks = torch.empty(count, height, width, device=device)
        self.cutout = torch.empty(count, height, width, 4, device=device)
        self.composite = torch.empty(count, height, width, 3, device=device)
        self.reuse_frames = reuse_frames
        self.foreground = None if reuse_frames is not None else \
            torch.empty(count, height, width, 3, device=device)

    def write(self, index: int, frame: torch.Tensor, mask: torch.Tensor,
              composite: torch.Tensor) -> None:
        """frame (3, H, W), mask (1, H, W), composite (3, H, W) of frame ``index``."""
        self.masks[index] = mask[0]
        self.cutout[index, ..., :3] = frame.permute(1, 2, 0)
        self.cutout[index, ..., 3] = mask[0]
        self.composite[index] = composite.permute(1, 2, 0)
        if self.foreground is not None:
            self.foreground[index] = frame.permute(1, 2, 0)

    def result(self) -> tuple[torch.Tensor, ...]:
        foreground = self.foreground if self.foreground is not None else self.reuse_frames
        return self.masks, foreground, self.cutout, self.composite


def _frames_nchw(frames: torch.Tensor) -> Iterator[torch.Tensor]:
    """Each frame of an IMAGE batch as (3, H, W), checked and converted one at a time (a whole
    clip converted at once would be a second copy of the video)."""
    for index in range(frames.shape[0]):
        try:
            yield image_to_nchw(frames[index:index + 1], NODE)[0]
        except NodeInputError as error:
            raise NodeInputError(f"{error} (frame {index})") from error


def _backgrounds(background: torch.Tensor | None, count: int) -> "_Backgrounds | None":
    if background is None:
        return None
    if background.ndim == 3:
        background = background.unsqueeze(0)
    if background.ndim != 4 or background.shape[0] not in (1, count):
        raise NodeInputError(f"{NODE}: the background must be one image or one per frame "
                             f"({count}), got shape {tuple(background.shape)}")
    return _Backgrounds(background)


class _Backgrounds:
    """Background frames scaled to cover the video frame, one at a time (a single background
    is scaled once)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self._single = images, None

    def get(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """(3, H, W) background for frame ``index``, on like's device."""
        if self.images.shape[0] == 1 and self._single is not None:
            return self._single
        one = image_to_nchw(self.images[index if self.images.shape[0] > 1 else 0:][:1], NODE)
        fitted = fit_background(one.to(like.device), like.shape[-2], like.shape[-1], "cover")[0]
        if self.images.shape[0] == 1:
            self._single = fitted
        return fitted
