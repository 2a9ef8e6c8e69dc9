"""Prepacked oneDNN linear kernels for the CPU, with GELU or ReLU inside when asked.

PyTorch's ``F.linear`` on the CPU reaches MKL (float32) or oneDNN with the weight reordered on
every call; a weight reordered once (``_reorder_linear_weight``) and run by
``mkldnn._linear_pointwise`` (the kernels ``torch.compile`` uses on the CPU, reached without
compiling) was faster at most of BiRefNet's shapes on a 2-core AVX-512 EPYC (``python
bench/bench_cpu_paths.py --kernels --dtype fp32|bf16``, 2 threads, GFLOP/s, F.linear ->
packed): float32 4067x96->288 202 -> 217, 16384x384->192 172 -> 211, 4096x1536->384 192 ->
225, the deformable 7x7 branch's 334x3136->256 with ReLU 199 -> 225; bfloat16 4067x96->288
379 -> 423, 16384x192->576 375 -> 421. The activation inside the kernel saves a pass over the
output (Swin's GELU, the deformable branches' ReLU).

A packed weight is used only while it still matches the tensors it was made from (same
storage, dtype, device and version), on the CPU, outside autograd and outside traced graphs;
copies and pickles of a model drop it (oneDNN's packed tensors cannot be copied), and
``pack_cpu_kernels`` packs again. Where a build lacks these kernels the probe fails and nothing
is packed: the plain layers run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_PACK_ROWS_HINT = 4096            # oneDNN's packing hint: a typical number of rows per call
ACTIVATIONS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda x: x, "gelu": F.gelu, "relu": F.relu}
# _linear_pointwise's (attribute, scalars, algorithm) for each activation.
_ONEDNN_ACTIVATION = {None: ("none", [], ""), "gelu": ("gelu", [], "none"),
                      "relu": ("relu", [], "")}


def _tensor_key(tensor: torch.Tensor) -> tuple:
    try:
        version = tensor._version
    except RuntimeError:                 # an inference tensor (loaded in inference_mode)
        version = None
    return tensor.data_ptr(), tensor.dtype, tensor.device, version


@cache
def onednn_linear_available(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build runs oneDNN's packed linear with a fused GELU on the CPU."""
    try:
        weight = torch.randn(8, 16, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 4)
        x = torch.randn(4, 16, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "gelu", [], "none")
        expected = F.gelu(x.float() @ weight.float().t())
        return bool(torch.allclose(out.float(), expected, atol=0.05, rtol=0.05))
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        logger.debug("oneDNN packed linear unavailable for %s: %s", dtype, error)
        return False


def can_pack(weight: torch.Tensor) -> bool:
    """Whether a weight of this device and dtype can be packed here."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and onednn_linear_available(weight.dtype))


def _not_packed() -> None:
    return None


class PackedLinear:
    """``x @ weight.T + bias`` (then an activation) as one prepacked oneDNN kernel.

    ``sources`` are the tensors ``weight`` was made from: the kernel is usable only while they
    are unchanged."""

    def __reduce__(self):
        return _not_packed, ()

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 sources: tuple[torch.Tensor, ...]) -> None:
        self.dtype = weight.dtype
        self.out_features = weight.shape[0]
        self.weight = torch.ops.mkldnn._reorder_linear_weight(
            weight.detach().contiguous(), _PACK_ROWS_HINT)
        self.bias = bias.detach() if bias is not None else None
        self.keys = tuple(_tensor_key(t) for t in sources)

    def usable(self, x: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> bool:
        return (x.device.type == "cpu" and x.dtype == self.dtype
                and not torch.compiler.is_compiling()        # traced graphs: the plain layers
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in sources))
                and self.keys == tuple(_tensor_key(t) for t in sources))

    def __call__(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])                                   # (n, K)
        attribute, scalars, algorithm = _ONEDNN_ACTIVATION[activation]
        out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, attribute,
                                                 scalars, algorithm)
        return out.view(*x.shape[:-1], self.out_features)


class PackedGroup(tuple):
    """Packed kernels that belong together (a tuple): copies and pickles drop the whole group."""

    def __reduce__(self):
        return _not_packed, ()


class FastLinear(nn.Linear):
    """``nn.Linear`` (same parameters and checkpoint keys) with an optional activation, run by
    a packed oneDNN kernel once ``pack_cpu_kernels`` has given it one."""

    packed: PackedLinear | None = None

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        packed = self.packed
        if packed is not None and packed.usable(x, (self.weight,)):
            return packed(x, activation)
        return ACTIVATIONS[activation](F.linear(x, self.weight, self.bias))

    def pack_cpu_kernels(self) -> bool:
        self.packed = (PackedLinear(self.weight, self.bias, (self.weight,))
                       if can_pack(self.weight) else None)
        return self.packed is not None


def pack_cpu_kernels(model: nn.Module) -> int:
    """Give every module of a CPU inference model (float32 or bfloat16) that has packed kernels
    (a ``pack_cpu_kernels`` method: FastLinear, the deformable ASPP) its kernels. Returns how
    many modules were packed (0 where oneDNN's kernels are unavailable)."""
    return sum(bool(module.pack_cpu_kernels()) for module in model.modules()
               if hasattr(module, "pack_cpu_kernels"))
