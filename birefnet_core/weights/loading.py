"""``load_model``: a checkpoint file or state dict -> an eval-mode BiRefNet, strictly."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..network.compiled import compile_model
from ..network.cpu_kernels import enable_cpu_kernels
from ..network.folding import fold_batchnorm
from ..network.int8 import quantize_linears_int8
from ..network.model import BiRefNet
from .checkpoint import cast_floats, check_state_dict, read_checkpoint, remap_state_dict
from .detect import detect_variant
from .known_models import IMAGENET_MEAN, IMAGENET_STD, choose_patch_order, find_known_model

logger = logging.getLogger(__name__)

# How input images are normalised before the network, by name: (mean, std) per channel.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),   # every released model
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),    # files that carry the normalisation inside
    "half": ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),    # the very first checkpoints (ep480/ep580)
}
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model needs to be fed correctly, and where it came from."""

    variant: str                       # backbone name, e.g. "swin_v1_l"
    patch_order: str                   # "current" or "legacy"
    resolution: tuple[int, int]        # default working (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str                        # file path, or "<state dict>"
    known_model: str | None = None     # name in KNOWN_MODELS when recognised
    int8: bool = False                 # the backbone's linear layers are dynamic int8


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype}")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}") from None


def _check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: tensor {key!r} contains NaN or infinity, so the "
                                  "file is damaged; download it again")


def load_model(source: str | os.PathLike | Mapping[str, torch.Tensor], *,
               device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
               patch_order: str = "auto", normalization: str = "imagenet",
               resolution: int | tuple[int, int] | None = None, fuse: bool = True,
               compile: bool = False) -> BiRefNet:
    """Build BiRefNet for a checkpoint and load it strictly.

    source: a ``.safetensors``/``.pth``/``.pt``/``.bin`` path or a state dict (official keys,
    optionally under ``module.``/``_orig_mod.`` prefixes). patch_order: "auto" (by what is known
    of the file, else "current"), "current" or "legacy". normalization: a key of
    NORMALIZATIONS. resolution: the default working size for ``predict`` (else the known
    model's, else 1024x1024). dtype: float32/fp32, float16/fp16, bfloat16/bf16, or "int8"
    (CPU only: float32 with the backbone's linear layers dynamically quantised). compile:
    run the forward through torch.compile (network/compiled.py: falls back to eager with a
    log line where compiling fails). Returns an eval-mode model without gradients;
    ``model.info`` (ModelInfo) says how it must be fed.
    """
    int8 = isinstance(dtype, str) and dtype.lower() == "int8"
    if int8 and torch.device(device).type != "cpu":
        raise ValueError(f"dtype int8 runs on the CPU only, not on {device}; use fp16 or bf16")
    torch_dtype = torch.float32 if int8 else resolve_dtype(dtype)
    if isinstance(source, Mapping):
        state, identifier, label = dict(source), None, "<state dict>"
    else:
        identifier = os.fspath(source)
        label = identifier
        state = read_checkpoint(identifier)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}")
    state = remap_state_dict(state)
    variant = detect_variant(state)
    order = choose_patch_order(patch_order, identifier)
    model = BiRefNet(variant, order)
    expected = model.state_dict()
    # Integer buffers (Swin's relative-position index, BatchNorm counters) are the model's own.
    own_buffers = {k: v for k, v in expected.items() if not v.is_floating_point()}
    weights = {k: v for k, v in state.items() if k not in own_buffers}
    check_state_dict({k: v.shape for k, v in expected.items() if k not in own_buffers}, weights,
                     source=label)
    _check_finite(weights, label)
    model.load_state_dict({**cast_floats(weights, torch.float32), **own_buffers}, strict=True)
    model.eval().requires_grad_(False)
    if fuse:
        fold_batchnorm(model)
        model.to(memory_format=torch.channels_last)
    model.to(device=torch.device(device), dtype=torch_dtype)
    if int8:
        quantize_linears_int8(model)
    if fuse:
        enable_cpu_kernels(model)           # packed at the first CPU forward, if there is one
    if compile:
        compile_model(model)
    known = find_known_model(identifier)
    if resolution is None:
        size = known.resolution if known is not None else (1024, 1024)
    else:
        size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    mean, std = NORMALIZATIONS[normalization]
    model.info = ModelInfo(variant=variant.backbone_name, patch_order=order,
                           resolution=tuple(size), mean=mean, std=std, source=label,
                           known_model=known.name if known is not None else None, int8=int8)
    logger.info("loaded BiRefNet %s from %s (patch order %s, %s, %s)", variant.backbone_name,
                label, order, model.info.resolution, normalization)
    return model
