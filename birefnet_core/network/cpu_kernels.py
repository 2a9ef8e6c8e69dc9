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

Packs are made lazily, at a module's first CPU forward (a model loaded on the CPU only to be
moved to a GPU, as ComfyUI's Loader does, never holds any), and dropped when the module moves
or is cast (``_apply``: ``.to``, ``.half``, ComfyUI moving submodules one by one), by
``release_cpu_kernels`` and on any forward off the CPU. A pack is used only while the tensors it
was made from are the same tensors (storage, dtype, device, shape) holding the same values:
parameters made under ``inference_mode`` have no version counter and ``param.data.copy_``
(ComfyUI's ``copy_to_param``) bumps none, so each source carries a content fingerprint
(``_fingerprint``: the wrapping sum of its bit patterns and the sum of its values). A model's
forward checks every fingerprint once (``checked_kernels``); a layer called on its own checks
its own at each call. Packs are not used for inputs or weights that need gradients, inside
traced graphs, and copies and pickles drop them (oneDNN's packed tensors cannot be copied).
Where a build lacks these kernels the probe fails and nothing is packed: the plain layers run.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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
# The integer view whose sum fingerprints a tensor's bits, by element size.
_BIT_VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# Nonzero inside ``checked_kernels``: the number of the forward whose checks packs passed.
_CHECKED_FORWARD: ContextVar[int] = ContextVar("birefnet_checked_forward", default=0)
_FORWARDS = itertools.count(1)


def _identity(tensor: torch.Tensor) -> tuple:
    return tensor.data_ptr(), tensor.dtype, tensor.device, tensor.shape


def _fingerprint(tensor: torch.Tensor) -> tuple[int, int]:
    """(the sum of the bit patterns as 32-bit words, wrapping: any one changed element changes
    it; the bits of the sum of the values in the tensor's own dtype: a uniform scale or a flip
    of signs, which can leave the wrapped word sum unchanged, changes it). Two vectorised
    passes over the tensor and no copy: about 8 ms for 110 MB of float32 weights on 2 cores,
    against 75 ms when the words were summed into 64 bits."""
    flat = tensor.detach().reshape(-1)
    words = flat.view(torch.int32) if flat.numel() * flat.element_size() % 4 == 0 else \
        flat.view(_BIT_VIEWS[flat.element_size()])
    bits = int(words.sum(dtype=torch.int64 if words.element_size() == 8 else torch.int32))
    if not flat.is_floating_point():
        return bits, 0
    return bits, int(flat.sum().view(_BIT_VIEWS[flat.element_size()]))


class SourceStamp:
    """What a kernel was made from: each source tensor's identity and content fingerprint."""

    def __init__(self, sources: tuple[torch.Tensor, ...]) -> None:
        self.identity = tuple(_identity(t) for t in sources)
        self.content = tuple(_fingerprint(t) for t in sources)
        self.checked = _CHECKED_FORWARD.get()      # the checked forward it was made in

    def same_tensors(self, sources: tuple[torch.Tensor, ...]) -> bool:
        return self.identity == tuple(_identity(t) for t in sources)

    def verify(self, sources: tuple[torch.Tensor, ...]) -> bool:
        """Identity and content (one pass over the sources); marks the current forward."""
        if not (self.same_tensors(sources)
                and self.content == tuple(_fingerprint(t) for t in sources)):
            return False
        self.checked = _CHECKED_FORWARD.get()
        return True

    def current(self, sources: tuple[torch.Tensor, ...]) -> bool:
        """Whether the sources are still what the kernel was made from: the content check is
        skipped when this forward's ``checked_kernels`` already made it."""
        forward = _CHECKED_FORWARD.get()
        if forward and self.checked == forward:
            return self.same_tensors(sources)
        return self.verify(sources)


def wants_cpu_kernel(x: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> bool:
    """Whether a packed (CPU inference) kernel may compute this call: a CPU input, no graph
    being traced, and nothing that autograd must differentiate (the input or any source)."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and not (torch.is_grad_enabled()
                     and (x.requires_grad or any(t.requires_grad for t in sources))))


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

    ``sources`` are the tensors ``weight`` and ``bias`` were made from: the kernel is usable
    only while they are unchanged."""

    def __reduce__(self):
        return _not_packed, ()

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 sources: tuple[torch.Tensor, ...]) -> None:
        self.dtype = weight.dtype
        self.out_features = weight.shape[0]
        self.weight = torch.ops.mkldnn._reorder_linear_weight(
            weight.detach().contiguous(), _PACK_ROWS_HINT)
        self.bias = bias.detach() if bias is not None else None
        self.stamp = SourceStamp(sources)

    def usable(self, x: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> bool:
        return (x.dtype == self.dtype and wants_cpu_kernel(x, sources)
                and self.stamp.current(sources))

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
    a packed oneDNN kernel, made at its first CPU forward, once ``enable_cpu_kernels`` allowed
    it."""

    packed: PackedLinear | None = None
    cpu_packing: bool = False                 # set by enable_cpu_kernels (folded models)

    def sources(self) -> tuple[torch.Tensor, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        packed = self._kernel(x)
        if packed is not None:
            return packed(x, activation)
        return ACTIVATIONS[activation](F.linear(x, self.weight, self.bias))

    def _kernel(self, x: torch.Tensor) -> PackedLinear | None:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return None                       # traced graphs: the plain layer, no guards
        sources = self.sources()
        packed = self.packed
        if packed is not None and packed.usable(x, sources):
            return packed
        if x.device.type != "cpu":
            self.packed = None                # a stale pack must not outlive a move
        elif (self.cpu_packing and x.dtype == self.weight.dtype and can_pack(self.weight)
              and wants_cpu_kernel(x, sources)):
            self.packed = PackedLinear(self.weight, self.bias, sources)
            return self.packed
        return None

    def pack_cpu_kernels(self) -> bool:
        self.cpu_packing = True
        self.packed = (PackedLinear(self.weight, self.bias, self.sources())
                       if can_pack(self.weight) else None)
        return self.packed is not None

    def check_cpu_kernels(self) -> None:
        if self.packed is not None and not self.packed.stamp.verify(self.sources()):
            self.packed = None

    def packed_kernel_count(self) -> int:
        return int(self.packed is not None)

    def release_caches(self) -> None:
        self.packed = None

    def _apply(self, fn, recurse: bool = True):
        self.packed = None                    # moved or cast: the pack describes old tensors
        return super()._apply(fn, recurse)


def _kernel_modules(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if hasattr(m, "check_cpu_kernels"))


def enable_cpu_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Let every module with packed kernels (FastLinear, the deformable ASPP) pack them at its
    first CPU forward (``enabled``), or stop and drop them. Returns how many modules."""
    modules = [m for m in model.modules() if hasattr(m, "cpu_packing")]
    for module in modules:
        module.cpu_packing = enabled
        if not enabled:
            module.release_caches()
    return len(modules)


def pack_cpu_kernels(model: nn.Module) -> int:
    """Enable and pack now (benchmarks, tests; models pack at their first CPU forward anyway).
    Returns how many modules were packed (0 where oneDNN's kernels are unavailable)."""
    return sum(bool(module.pack_cpu_kernels()) for module in model.modules()
               if hasattr(module, "pack_cpu_kernels"))


def packed_kernel_count(model: nn.Module) -> int:
    """How many packed kernels (oneDNN linears, int8 prepacks) the model holds now."""
    return sum(module.packed_kernel_count() for module in _kernel_modules(model))


def release_cpu_kernels(model: nn.Module) -> None:
    """Drop every packed kernel (they are made again at the next CPU forward)."""
    for module in _kernel_modules(model):
        module.release_caches()


@contextmanager
def checked_kernels(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """One forward of ``model`` on ``x``: every packed kernel's sources are checked (content
    included) once on entry, stale kernels dropped, and inside the layers trust that check
    while their source tensors stay the same objects. Off the CPU, every pack is dropped."""
    if x.device.type != "cpu":
        if any(m.packed_kernel_count() for m in _kernel_modules(model)):
            release_cpu_kernels(model)
        yield
        return
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        yield
        return
    token = _CHECKED_FORWARD.set(next(_FORWARDS))
    try:
        for module in _kernel_modules(model):
            module.check_cpu_kernels()
        yield
    finally:
        _CHECKED_FORWARD.reset(token)
