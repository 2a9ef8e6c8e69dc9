"""What the nodes share to run birefnet_core inside ComfyUI: ComfyUI's devices, progress bar
and Cancel, birefnet_core's errors turned into messages naming the node, the checks made when a
prompt is queued, and fitting a background to a frame. Tensor conversions at the node boundary
are in ``tensors``; node files hold their node only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils

from ..birefnet_core import BiRefNetError
from ..birefnet_core.inference import is_out_of_memory, predict_batched
from ..birefnet_core.inference.memory import forward_memory_bytes
from ..birefnet_core.inference.predict import working_size
from .tensors import NodeInputError, parse_color


def interrupt_aware_progress(total: int | None = None):
    """A progress callback ``report(done, total)``: updates ComfyUI's bar and stops if the user
    pressed Cancel. Without ``total`` the bar is made on the first call, from the total that
    call gives (for work whose size is known only once it started, as refine_detail's tiles)."""
    bar = None if total is None else comfy.utils.ProgressBar(total)

    def report(done: int, reported_total: int) -> None:
        nonlocal bar
        steps = max(1, total if total is not None else reported_total)
        if bar is None:
            bar = comfy.utils.ProgressBar(steps)
        bar.update_absolute(done, steps)
        mm.throw_exception_if_processing_interrupted()
    return report


class BiRefNetPatcher(comfy.model_patcher.ModelPatcher):
    """ComfyUI's ModelPatcher for a BiRefNet, loaded whole or not at all.

    ComfyUI's partial loading (``--lowvram``, or a GPU too full for the whole model) moves
    module by module and leaves what it does not move on the offload device, for ComfyUI's own
    layers that cast their weights to the device at run time. BiRefNet's layers are plain
    torch modules: a module left behind, or a parameter or buffer its loader does not move
    (the 2024 loader moves only modules with a ``weight``, so Swin's relative-position tables
    stay behind; 0.21.0 moves only modules that fit), is a device mismatch at the forward.
    So every load here is a full load (``model.to(device)``: buffers follow their weights),
    and a partial unload frees nothing, for ComfyUI to unload the whole model instead.
    When the model is unloaded or moved, its caches (packed CPU kernels, Swin's per-size
    window tables; ``BiRefNet.release_caches``) are released.
    """

    def patch_model_lowvram(self, device_to=None, *_args, **_kwargs):   # ComfyUI 2024
        return self.patch_model(device_to)

    def patch_model(self, device_to=None, *args, **kwargs):
        self._release_before_moving(device_to)
        return super().patch_model(device_to, *args, **kwargs)

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False,
             full_load=False):                                             # ComfyUI 0.3+
        self._release_before_moving(device_to)
        return super().load(device_to, lowvram_model_memory=lowvram_model_memory,
                            force_patch_weights=force_patch_weights, full_load=True)

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        return 0

    def _release_before_moving(self, device_to) -> None:
        if device_to is not None and _model_device(self.model) != torch.device(device_to):
            release_model_caches(self.model)

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        result = super().unpatch_model(device_to, unpatch_weights=unpatch_weights)
        if unpatch_weights:
            release_model_caches(self.model)
        return result


def release_model_caches(model) -> None:
    """``model.release_caches()`` where the model has it (BiRefNet does)."""
    release = getattr(model, "release_caches", None)
    if callable(release):
        release()


def _model_device(model) -> torch.device | None:
    parameter = next(model.parameters(), None)
    return None if parameter is None else parameter.device


def loaded_model(patcher, resolution: int, node: str, batch: int = 1):
    """The network of a BIREFNET_MODEL, on ComfyUI's device, once ``resolution`` is checked
    (for nodes that call birefnet_core themselves; run them inside ``model_errors``). ComfyUI
    is told what a forward of ``batch`` images at that resolution needs on the device, so it
    frees other models for it first."""
    problem = resolution_problem(resolution, node)
    if problem:
        raise NodeInputError(problem)
    load_for_forward(patcher, resolution, batch)
    mm.throw_exception_if_processing_interrupted()
    return patcher.model


def load_for_forward(patcher, resolution: int, batch: int) -> None:
    """``load_models_gpu`` with ``memory_required``: the forward's estimated peak
    (birefnet_core.inference.memory) for ``batch`` images at ``resolution`` (0: the model's)."""
    network = patcher.model
    height, width = working_size(network, resolution or None)
    dtype = next(network.parameters()).dtype
    variant = getattr(getattr(network, "info", None), "variant", None)   # None: the largest
    need = forward_memory_bytes(variant, height, width, dtype, batch,
                                torch.device(patcher.load_device))
    mm.load_models_gpu([patcher], memory_required=need)


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
        except BiRefNetError as error:
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
    network = loaded_model(patcher, resolution, node, batch=min(batch_size, images.shape[0]))
    with model_errors(node, "image"):
        return predict_batched(
            network, images, resolution=resolution or None, batch_size=batch_size,
            output_device=mm.intermediate_device(),
            progress=interrupt_aware_progress(images.shape[0]))


@contextmanager
def model_errors(node: str, unit: str) -> Iterator[None]:
    """birefnet_core's errors as NodeInputError naming the node; running out of memory even at
    one ``unit`` per pass (predict halves its batches first) as an error saying what to change."""
    try:
        yield
    except BiRefNetError as error:
        raise NodeInputError(f"{node}: {error}") from error
    except Exception as error:
        if is_out_of_memory(error):
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
