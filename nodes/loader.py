"""BiRefNetLoader: a checkpoint -> a model under ComfyUI's model management."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import weakref

import torch

import comfy.model_management as mm
import comfy.model_patcher

from .. import birefnet_core
from ..birefnet_core.network.compiled import compile_state
from ..birefnet_core.network.cpu_features import auto_dtype
from ..birefnet_core.weights.loading import resolve_dtype
from .model_files import (CoreFeed, core_feed, local_path, model_choices, resolve_model,
                          without_server_paths)
from .runtime import BiRefNetPatcher

logger = logging.getLogger(__name__)
NODE = "BiRefNetLoader"

# Patchers handed out and still referenced by ComfyUI's cache: a re-queue with the same file
# and options gets the same model back instead of loading it again.
_LOADED: "weakref.WeakValueDictionary[tuple, comfy.model_patcher.ModelPatcher]" = \
    weakref.WeakValueDictionary()


def _devices(choice: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for a device choice."""
    offload = mm.unet_offload_device()
    if choice == "auto":
        return mm.get_torch_device(), offload
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{NODE}: device 'cuda' was chosen but no CUDA GPU is available; "
                           "choose auto or cpu")
    if choice == "mps" and not (getattr(torch.backends, "mps", None)
                                and torch.backends.mps.is_available()):
        raise RuntimeError(f"{NODE}: device 'mps' was chosen but Apple MPS is not available; "
                           "choose auto or cpu")
    device = torch.device(choice)
    return device, (torch.device("cpu") if device.type == "cpu" else offload)


def _dtype(choice: str, device: torch.device) -> torch.dtype | str:
    if choice == "auto":
        return auto_dtype(device)[0]
    if choice == "int8":
        if device.type != "cpu":
            raise RuntimeError(f"{NODE}: dtype int8 runs on the CPU only, and the device is "
                               f"{device}; choose device cpu, or fp16/bf16 on the GPU")
        return "int8"
    return resolve_dtype(choice)


def _file_stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


class BiRefNetLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_choices(), {
                "tooltip": "A file in models/birefnet (or extra_model_paths.yaml's birefnet "
                           "folders), a file of ComfyUI's background_removal folder, or a known "
                           "official model name, downloaded into models/birefnet on first use."}),
            "device": (["auto", "cpu", "cuda", "mps"], {
                "default": "auto", "tooltip": "auto: ComfyUI's device (GPU when there is one)."}),
            "dtype": (["auto", "fp32", "fp16", "bf16", "int8"], {
                "default": "auto", "tooltip": "auto: fp16 on CUDA; on the CPU bf16 where the "
                "CPU runs bfloat16 natively (a short probe decides; the info output says "
                "which), else fp32; fp32 elsewhere. int8 (CPU only): the backbone's linear "
                "layers quantised on the fly, faster than fp32 on CPUs without native "
                "bfloat16; masks differ slightly from fp32 (see README)."}),
            "patch_order": (["auto", "current", "legacy"], {
                "default": "auto", "tooltip": "The decoder's patch order the checkpoint was "
                "trained with: legacy for models released before November 2024 (BiRefNet, lite, "
                "matting, portrait, RMBG-2.0), current for HR and dynamic. auto decides by file."}),
            "input_normalization": (["auto", "imagenet", "none"], {
                "default": "auto", "tooltip": "How images are normalised before the network. "
                "auto: files of ComfyUI's background_removal folder as ComfyUI's own Remove "
                "Background node feeds them (mean/std/size of its birefnet.json: 0/1 in "
                "0.21.0, ImageNet later; ImageNet where ComfyUI has no such node), ImageNet "
                "for the rest."}),
        }, "optional": {
            "compile": ("BOOLEAN", {
                "default": False, "tooltip": "Run the backbone through torch.compile: the first "
                "run at each new resolution compiles (minutes on a CPU), later runs may be "
                "faster (see README). Falls back to the plain model, with a log line, where "
                "compiling fails (e.g. no C++ compiler)."}),
        }}

    RETURN_TYPES = ("BIREFNET_MODEL", "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The loaded BiRefNet, managed by ComfyUI (moved to the GPU when used, "
                       "offloaded when memory is needed, freed by 'Unload models').",
                       "What was loaded and how it will be fed: variant, patch order, "
                       "normalisation, dtype, device, working resolution.")
    FUNCTION = "load"
    CATEGORY = "BiRefNet"
    DESCRIPTION = "Load a BiRefNet checkpoint (any official model or fine-tune)."

    @classmethod
    def IS_CHANGED(cls, model, **_options):
        found = local_path(model)
        return f"{found.path}:{_file_stamp(found.path)}" if found else model

    def load(self, model, device, dtype, patch_order, input_normalization, compile=False):
        resolved = resolve_model(model, NODE)
        load_device, offload_device = _devices(device)
        torch_dtype = _dtype(dtype, load_device)
        # background_removal files: core's port runs the legacy patch order, at its JSON's size.
        feed = core_feed() if resolved.from_core_folder else None
        order = "legacy" if (patch_order == "auto" and feed is not None) else patch_order
        normalization = input_normalization
        if normalization == "auto":
            normalization = "imagenet" if feed is None else "core"
        key = (resolved.path, _file_stamp(resolved.path), str(load_device), torch_dtype, order,
               normalization, feed, bool(compile))
        patcher = _LOADED.get(key)
        if patcher is None:
            patcher = self._load(resolved, load_device, offload_device, torch_dtype, order,
                                 normalization, feed, bool(compile))
            _LOADED[key] = patcher
        label = feed.describe() if normalization == "core" else normalization
        chosen = auto_dtype(load_device)[1] if dtype == "auto" else None
        return patcher, describe(patcher, label, chosen)

    @staticmethod
    def _load(resolved, load_device, offload_device, dtype, order, normalization,
              feed: CoreFeed | None, compile_model: bool = False):
        start = time.perf_counter()
        try:
            network = birefnet_core.load_model(
                resolved.path, device=offload_device, dtype=dtype, patch_order=order,
                normalization="imagenet" if normalization == "core" else normalization,
                resolution=feed.size if feed is not None else None, compile=compile_model)
        except birefnet_core.BiRefNetError as error:
            raise RuntimeError(
                f"{NODE}: {without_server_paths(str(error), resolved.path)}") from error
        if normalization == "core":
            network.info = dataclasses.replace(network.info, mean=feed.mean, std=feed.std)
        patcher = BiRefNetPatcher(network, load_device=load_device,
                                  offload_device=offload_device)
        logger.info("BiRefNet: loaded %s (%s, patch order %s, normalisation %s, %s) in %.1f s",
                    os.path.basename(resolved.path), network.info.variant, network.patch_order,
                    feed.describe() if normalization == "core" else normalization,
                    str(dtype).removeprefix("torch."), time.perf_counter() - start)
        return patcher


def describe(patcher, normalization: str, auto_choice: str | None = None) -> str:
    """The info line; ``auto_choice``: why dtype auto chose what it did (e.g. "fp32: this
    CPU has no native bfloat16")."""
    network = patcher.model
    info = network.info
    dtype = str(next(network.parameters()).dtype).removeprefix("torch.")
    if info.int8:
        dtype = "float32 with int8 linear layers"
    if auto_choice is not None:
        dtype += f" (dtype auto, {auto_choice})"
    compiled = compile_state(network)
    if compiled != "off":
        dtype += f", torch.compile {compiled}"
    height, width = info.resolution
    return (f"{os.path.basename(info.source)}: {info.variant}, patch order {network.patch_order}, "
            f"input normalisation {normalization}, {dtype} on {patcher.load_device}, "
            f"working resolution {width}x{height}")
