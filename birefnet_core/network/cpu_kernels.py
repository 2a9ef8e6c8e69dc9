"""Prepacked oneDNN kernels for the Swin MLPs on the CPU: fc1 with its GELU inside, fc2.

Measured on a 2-core AVX-512 EPYC (one thread, Swin-T stage-1 shapes, 65536 tokens): fc1 then
a separate exact GELU took 159 ms in float32 and 84 ms in bfloat16, the packed fc1 with GELU
inside 101 ms and 55 ms; the packed fc2 (384 -> 96) 49 ms against 67 ms in float32 (no gain in
bfloat16, so fc2 stays PyTorch's there). The kernels are PyTorch's own oneDNN operators (those
``torch.compile`` uses on the CPU), reached without compiling; where a build lacks them the
probe fails and nothing is packed. A packed MLP is used only while it still matches its
layers' weights (same storage, dtype, device and version), in inference, on the CPU.
"""
from __future__ import annotations

import logging
from functools import cache

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

_PACK_ROWS_HINT = 4096            # oneDNN's packing hint: a typical number of tokens


def _weight_key(weight: torch.Tensor) -> tuple:
    try:
        version = weight._version
    except RuntimeError:                 # an inference tensor (loaded in inference_mode)
        version = None
    return weight.data_ptr(), weight.dtype, weight.device, version


@cache
def onednn_linear_available(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build runs oneDNN's packed linear with a fused GELU on the CPU."""
    try:
        weight = torch.randn(8, 16, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 4)
        x = torch.randn(4, 16, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "gelu", [], "none")
        expected = nn.functional.gelu(x.float() @ weight.float().t())
        return bool(torch.allclose(out.float(), expected, atol=0.05, rtol=0.05))
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        logger.debug("oneDNN packed linear unavailable for %s: %s", dtype, error)
        return False


def _not_packed() -> None:
    return None


class PackedMlp:
    """fc2(gelu(fc1(x))) with fc1 (and in float32 fc2) as packed oneDNN kernels.

    Copies and pickles of a model drop these (oneDNN's packed tensors cannot be copied): the
    copy runs the plain layers until ``pack_cpu_kernels`` packs it again."""

    def __reduce__(self):
        return _not_packed, ()

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        self.dtype = fc1.weight.dtype
        self.fc1_weight = torch.ops.mkldnn._reorder_linear_weight(fc1.weight.detach(),
                                                                 _PACK_ROWS_HINT)
        self.fc1_bias = fc1.bias.detach() if fc1.bias is not None else None
        self.pack_fc2 = self.dtype == torch.float32
        self.fc2 = fc2
        if self.pack_fc2:
            self.fc2_weight = torch.ops.mkldnn._reorder_linear_weight(fc2.weight.detach(),
                                                                     _PACK_ROWS_HINT)
            self.fc2_bias = fc2.bias.detach() if fc2.bias is not None else None
        self.keys = (_weight_key(fc1.weight), _weight_key(fc2.weight))

    def usable(self, x: torch.Tensor, fc1_weight: torch.Tensor,
               fc2_weight: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == self.dtype
                and not torch.compiler.is_compiling()        # traced graphs: the plain layers
                and not (torch.is_grad_enabled() and fc1_weight.requires_grad)
                and self.keys == (_weight_key(fc1_weight), _weight_key(fc2_weight)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])                                   # (tokens, C)
        hidden = torch.ops.mkldnn._linear_pointwise(rows, self.fc1_weight, self.fc1_bias,
                                                    "gelu", [], "none")
        if self.pack_fc2:
            out = torch.ops.mkldnn._linear_pointwise(hidden, self.fc2_weight, self.fc2_bias,
                                                     "none", [], "")
        else:
            out = self.fc2(hidden)
        return out.view(*x.shape[:-1], out.shape[-1])


def pack_cpu_kernels(model: nn.Module) -> int:
    """Give every Swin MLP of a CPU inference model (float32 or bfloat16) its packed kernels.
    Returns how many were packed (0 where oneDNN's kernels are unavailable)."""
    from .backbones.swin import Mlp

    packed = 0
    for module in model.modules():
        if not isinstance(module, Mlp) or type(module.fc1) is not nn.Linear:   # int8: as is
            continue
        weight = module.fc1.weight
        if (weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16)
                or not onednn_linear_available(weight.dtype)):
            module.packed = None
            continue
        module.packed = PackedMlp(module.fc1, module.fc2)
        packed += 1
    return packed
