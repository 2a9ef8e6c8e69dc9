"""Synthetic BiRefNet weights built from the parity manifests (no checkpoint is ever downloaded).

The values follow the recipe of the parity fixtures (tests/fixtures, copied from
shared/parity): every float tensor is drawn from its own NumPy generator seeded with the CRC32
of its key, then scaled by the kind of tensor. Integer buffers are left to the model.
"""
from __future__ import annotations

import json
import math
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Masks of the same images computed in other batch sizes or chunks: the CPU kernels may order
# sums differently per batch size (and AVX2 and AVX-512 differently again), which moves float32
# logits of size ~1 by rounding only; the parity fixtures show two wholly different float32
# orderings (ours and the official code) agreeing to 3e-6 in logits, and a mask moves by at most
# a quarter of its logit (sigmoid' <= 1/4). 1e-5 on the mask (4e-5 in logits) covers that.
SAME_MASK = 1e-5

BACKBONES = ("swin_v1_t", "swin_v1_s", "swin_v1_b", "swin_v1_l",
             "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b5")


@lru_cache(maxsize=None)
def manifest(backbone: str) -> dict:
    return json.loads((FIXTURES / f"manifest_{backbone}.json").read_text())


def _value_for(key: str, shape: list[int]) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([0, zlib.crc32(key.encode())]))
    noise = rng.standard_normal(shape, dtype=np.float64) if shape else rng.standard_normal()
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        value = 1.0 + 0.1 * np.abs(noise)
    elif leaf == "running_mean":
        value = 0.1 * noise
    elif leaf == "bias" or "relative_position_bias_table" in key:
        value = 0.02 * noise
    elif len(shape) <= 1:
        value = 1.0 + 0.1 * noise
    else:
        value = noise / math.sqrt(int(np.prod(shape[1:])))
    return np.asarray(value, dtype=np.float32)


@lru_cache(maxsize=2)
def _cached_float_weights(backbone: str) -> dict[str, torch.Tensor]:
    weights = {}
    for key, spec in manifest(backbone)["keys"].items():
        if spec["dtype"].startswith("float"):
            weights[key] = torch.from_numpy(_value_for(key, spec["shape"]))
    return weights


def synthetic_float_weights(backbone: str) -> dict[str, torch.Tensor]:
    """Only the float tensors of the manifest: what a checkpoint must carry at the least.

    The dict is new on every call; its tensors are shared with a small cache, so callers must
    not modify them in place.
    """
    return dict(_cached_float_weights(backbone))


def synthetic_state_dict(backbone: str, model_buffers: dict[str, torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
    """A full state dict: the synthetic floats plus integer buffers as a checkpoint holds them.

    ``model_buffers`` supplies integer buffers (from a built model's own state dict); without it
    they are zeros of the manifest's shape, as BatchNorm counters are in released files.
    """
    state = synthetic_float_weights(backbone)
    for key, spec in manifest(backbone)["keys"].items():
        if spec["dtype"].startswith("float"):
            continue
        if model_buffers is not None and key in model_buffers:
            state[key] = model_buffers[key].clone()
        else:
            state[key] = torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
    return state


def parity_fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"parity_{name}.npz") as data:
        return {k: data[k] for k in data.files}


def parity_fixture_names() -> list[str]:
    return sorted(p.stem[len("parity_"):] for p in FIXTURES.glob("parity_*.npz"))
