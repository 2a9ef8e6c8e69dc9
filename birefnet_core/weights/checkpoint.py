"""Reading BiRefNet checkpoint files safely and checking their contents against a model.

A checkpoint arrives as a Hugging Face ``model.safetensors`` file or as a PyTorch ``.pth`` file
(zip-based or legacy pickle), possibly wrapped in a training container and carrying the key
prefixes of ``DataParallel`` (``module.``) or ``torch.compile`` (``_orig_mod.``). Everything here
turns such a file into one flat CPU state dict, or into a :class:`CheckpointError` that says what
the file is and what to do. Pickles are only ever read with ``weights_only=True``: nothing in a
file can run code.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors_file

from ..errors import CheckpointError

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "params")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
WHOLE_DICT_PREFIXES = ("birefnet.", "model.")
BIREFNET_PREFIXES = ("bb.", "decoder.", "squeeze_module.")

_MAX_CONTAINER_DEPTH = 6
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_HEAD_BYTES = 64
_LISTED = 5
# Phrases of torch's weights-only unpickler when a file asks for Python objects beyond tensors.
_CODE_MARKERS = ("GLOBAL", "call reduce", "Can only create new object", "Can only build",
                 "must be imported")
_TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue",
                      "(1)", "(2)")
_PLAIN_TENSORS_ADVICE = (
    "BiRefNet checkpoints are plain tensors: use the model's .safetensors file, or a plain "
    "state dict saved with torch.save(model.state_dict(), path).")
_SWIN_BY_EMBED_DIM = {128: "Swin-B", 192: "Swin-L"}
_PVT_BY_DIM_AND_DEPTH = {(32, 2): "PVT-v2-b0", (64, 2): "PVT-v2-b1", (64, 6): "PVT-v2-b2",
                         (64, 18): "PVT-v2-b3", (64, 27): "PVT-v2-b4", (64, 40): "PVT-v2-b5"}


# ----------------------------------------------------------------------------- reading files

def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict on the CPU.

    The format is recognised from the file's first bytes (the extension only matters when they
    match nothing). Training containers such as ``{"model": ..., "epoch": 3}`` are unwrapped.
    """
    file = Path(path)
    size = _readable_size(file)
    head = _read_head(file)
    kind = _sniff_format(head)
    if kind is None:
        raise _unrecognised_file_error(file, head, size)
    if kind == "safetensors":
        loaded: object = _load_safetensors(file, size)
    else:
        loaded = _load_torch_pickle(file, size)
    tensors = _find_tensor_dict(loaded, depth=0)
    if not tensors:
        raise CheckpointError(
            f"{file} holds no tensors ({_summarise_object(loaded)}). It is not a model "
            "checkpoint; point to the BiRefNet .safetensors or .pth file instead.")
    return tensors


def _readable_size(file: Path) -> int:
    if not file.exists():
        raise CheckpointError(
            f"Checkpoint file not found: {file}. Check the path, or download the model first.")
    if file.is_dir():
        raise CheckpointError(
            f"{file} is a folder, not a checkpoint file; point to the .safetensors or .pth "
            "file inside it.")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{file} is empty (0 bytes): the download or copy failed; download it again.")
    return size


def _read_head(file: Path) -> bytes:
    try:
        with open(file, "rb") as stream:
            return stream.read(_HEAD_BYTES)
    except OSError as error:
        raise CheckpointError(f"{file} cannot be read ({error}); check its permissions.") from error


def _sniff_format(head: bytes) -> str | None:
    """'safetensors', 'torch' (zip or legacy pickle) or None, from the first bytes of a file."""
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        header_length = int.from_bytes(head[:8], "little")
        if 0 < header_length <= _MAX_SAFETENSORS_HEADER:
            return "safetensors"
    return None


def _corrupt_error(file: Path, size: int, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{file} cannot be read: the file is truncated or corrupt ({size} bytes); download it "
        f"again. (Detail: {detail})")


def _unrecognised_file_error(file: Path, head: bytes, size: int) -> CheckpointError:
    if head.startswith(b"version https://git-lfs"):
        return CheckpointError(
            f"{file} is a Git LFS pointer ({size} bytes), not the weights themselves; fetch "
            "the real file (git lfs pull) or download it from the model page.")
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return CheckpointError(
            f"{file} is a web page ({size} bytes), not a checkpoint: the download saved an "
            "error or login page; download the file itself again.")
    return _corrupt_error(file, size, "it starts like neither a safetensors nor a PyTorch file")


def _load_safetensors(file: Path, size: int) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_file(str(file), device="cpu")
    except MemoryError:
        raise
    except Exception as error:  # the parser of an untrusted file: any failure means corrupt
        raise _corrupt_error(file, size, f"{type(error).__name__}: {error}") from error


def _load_torch_pickle(file: Path, size: int) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as error:
        message = str(error)
        if any(marker in message for marker in _CODE_MARKERS):
            raise _refused_pickle_error(file, message) from error
        raise _corrupt_error(file, size, _short_detail(message)) from error
    except Exception as error:  # the parser of an untrusted file: any failure means corrupt
        message = str(error)
        if "TorchScript" in message:
            raise CheckpointError(
                f"{file} is a TorchScript archive, not a state dict. {_PLAIN_TENSORS_ADVICE}"
            ) from error
        raise _corrupt_error(file, size, f"{type(error).__name__}: {message}") from error


def _refused_pickle_error(file: Path, message: str) -> CheckpointError:
    wanted = re.search(r"GLOBAL ([\w.]+)", message)
    asks_for = f" (it asks for {wanted.group(1)})" if wanted else ""
    return CheckpointError(
        f"{file} was refused: loading it would run code from the file{asks_for}, and this "
        f"library never does that. {_PLAIN_TENSORS_ADVICE}")


def _short_detail(message: str) -> str:
    """The informative part of torch's long weights-only message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)] or lines[:1]
    return " ".join(kept)[:300]


def _find_tensor_dict(obj: object, depth: int) -> dict[str, torch.Tensor]:
    """The first mapping, searched through the usual container keys, that holds tensors."""
    if not isinstance(obj, Mapping) or depth > _MAX_CONTAINER_DEPTH:
        return {}
    tensors = {key: value.detach() if isinstance(value, torch.nn.Parameter) else value
               for key, value in obj.items()
               if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if tensors:
        return tensors
    for name in CONTAINER_KEYS:
        found = _find_tensor_dict(obj.get(name), depth + 1)
        if found:
            return found
    return {}


def _summarise_object(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(key) for key in list(obj)[:_LISTED])
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


# ----------------------------------------------------------------------------- key names

def remap_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys to the layout of the model; the input is left untouched.

    Strips ``module.`` and ``_orig_mod.`` (in any nesting and order) from the start of every
    key, and a leading ``birefnet.`` or ``model.`` when every key carries it and what remains
    is BiRefNet's layout. Other keys are kept as they are.
    """
    new_names = {key: _strip_wrappers(key) for key in state_dict}
    new_names = _strip_whole_dict_prefix(new_names)
    remapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for old, new in new_names.items():
        if new in remapped:
            raise CheckpointError(
                f"Two tensors of the checkpoint both become {new!r} once the wrapper prefixes "
                f"are removed: {origin[new]!r} and {old!r}. The file mixes wrapped and "
                "unwrapped copies of the weights; save one clean model.state_dict() instead.")
        remapped[new] = state_dict[old]
        origin[new] = old
    return remapped


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _strip_whole_dict_prefix(names: dict[str, str]) -> dict[str, str]:
    """Drop prefixes that every key shares, but only when that reveals BiRefNet's layout."""
    candidate = names
    while candidate:
        prefix = next((p for p in WHOLE_DICT_PREFIXES
                       if all(name.startswith(p) for name in candidate.values())), None)
        if prefix is None:
            return names
        candidate = {old: _strip_wrappers(name[len(prefix):]) for old, name in candidate.items()}
        if _is_birefnet_layout(candidate.values()):
            return candidate
    return names


def _is_birefnet_layout(keys: Iterable[str]) -> bool:
    return all(key.startswith(BIREFNET_PREFIXES) for key in keys)


# ----------------------------------------------------------------------------- descriptions

def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short description of what a (remapped) state dict is, for error messages."""
    keys = list(state_dict)
    count = f"{len(keys)} tensor{'s' if len(keys) != 1 else ''}"
    if not keys:
        return "an empty state dict (no tensors)"
    has_bb = any(key.startswith("bb.") for key in keys)
    has_decoder = any(key.startswith("decoder.") for key in keys)
    if has_bb and has_decoder:
        return _describe_birefnet(state_dict, count)
    if has_bb:
        return (f"only the backbone of a BiRefNet ({_backbone_name(state_dict, 'bb.')}, "
                f"{count}, no decoder)")
    foreign = _describe_foreign(keys)
    if foreign is not None:
        return f"{foreign} ({count}), not a BiRefNet checkpoint"
    bare_backbone = _backbone_name(state_dict, "")
    if bare_backbone != "unknown backbone" and not has_decoder:
        return (f"a bare {bare_backbone} image-classification backbone ({count}) without "
                "BiRefNet's decoder, not a BiRefNet checkpoint")
    first = ", ".join(repr(key) for key in keys[:3])
    return f"not a BiRefNet checkpoint ({count}; first keys {first})"


def _describe_birefnet(state_dict: Mapping[str, torch.Tensor], count: str) -> str:
    backbone = _backbone_name(state_dict, "bb.")
    if "decoder.ipt_blk5.conv1.weight" not in state_dict:
        return (f"an early BiRefNet release from before May 2024 ({backbone} backbone, "
                f"{count}), whose layout no released model uses any more; download the "
                "current file of this model")
    return f"a BiRefNet checkpoint with a {backbone} backbone ({count})"


def _describe_foreign(keys: list[str]) -> str | None:
    """Names the common kinds of checkpoint people mistake for BiRefNet, or None."""
    if any("lora_" in key for key in keys):
        return "a LoRA adapter"
    if any(key.startswith("model.diffusion_model.") for key in keys):
        if any(key.startswith("conditioner.embedders.") for key in keys):
            return "a Stable Diffusion XL checkpoint"
        return "a Stable Diffusion checkpoint"
    if any(key.startswith(("down_blocks.", "time_embedding.")) for key in keys):
        return "a diffusion UNet (diffusers layout)"
    if any(key.startswith(("encoder.down", "decoder.up")) for key in keys):
        return "a VAE (image autoencoder) alone"
    if any(key.startswith("text_model.") or "transformer.text_model" in key for key in keys):
        return "a text encoder (CLIP)"
    return None


def _backbone_name(state_dict: Mapping[str, torch.Tensor], prefix: str) -> str:
    swin_embed = state_dict.get(f"{prefix}patch_embed.proj.weight")
    if f"{prefix}layers.0.blocks.0.attn.relative_position_bias_table" in state_dict:
        dim = _leading_dim(swin_embed)
        if dim == 96:
            deep = _count_indices(state_dict, f"{prefix}layers.2.blocks.") > 6
            return "Swin-S" if deep else "Swin-T"
        return _SWIN_BY_EMBED_DIM.get(dim, "Swin")
    pvt_embed = state_dict.get(f"{prefix}patch_embed1.proj.weight")
    if pvt_embed is not None:
        depth = _count_indices(state_dict, f"{prefix}block3.")
        return _PVT_BY_DIM_AND_DEPTH.get((_leading_dim(pvt_embed), depth), "PVT v2")
    return "unknown backbone"


def _leading_dim(tensor: torch.Tensor | None) -> int | None:
    if tensor is None or tensor.dim() == 0:
        return None
    return int(tensor.shape[0])


def _count_indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {key[len(prefix):].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}
    return len(indices)


# ----------------------------------------------------------------------------- checking

def check_state_dict(expected: Mapping[str, tuple[int, ...] | torch.Size],
                     state_dict: Mapping[str, torch.Tensor], *,
                     source: str = "the checkpoint") -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly the expected keys and shapes."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [key for key in expected if key in state_dict
                  and tuple(state_dict[key].shape) != tuple(expected[key])]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{_count(missing, 'missing key')} ({_first_keys(missing)})")
    if unexpected:
        problems.append(f"{_count(unexpected, 'unexpected key')} ({_first_keys(unexpected)})")
    if mismatched:
        shapes = ", ".join(
            f"{key}: file {tuple(state_dict[key].shape)}, model {tuple(expected[key])}"
            for key in mismatched[:_LISTED])
        more = ", ..." if len(mismatched) > _LISTED else ""
        problems.append(f"{_count(mismatched, 'key')} of another shape ({shapes}{more})")
    raise CheckpointError(
        f"Cannot load {source}, it does not fit this model: {'; '.join(problems)}. "
        f"It looks like: {describe_state_dict(state_dict)}. "
        "Use a BiRefNet checkpoint made for this backbone and release, or choose the model "
        "settings (backbone) that match the file.")


def _count(keys: list[str], noun: str) -> str:
    return f"{len(keys)} {noun}{'s' if len(keys) != 1 else ''}"


def _first_keys(keys: list[str]) -> str:
    listed = ", ".join(keys[:_LISTED])
    return listed + (", ..." if len(keys) > _LISTED else "")


# ----------------------------------------------------------------------------- dtypes

def cast_floats(state_dict: Mapping[str, torch.Tensor],
                dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast every floating tensor to ``dtype``; integer (and bool) tensors are kept as they are."""
    if not dtype.is_floating_point:
        raise ValueError(f"cast_floats needs a floating dtype, got {dtype}")
    return {key: tensor.to(dtype) if tensor.is_floating_point() else tensor
            for key, tensor in state_dict.items()}
