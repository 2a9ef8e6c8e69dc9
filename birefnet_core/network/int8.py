"""``quantize_linears_int8``: the backbone's linear layers with int8 weights, computed by
PyTorch's dynamically quantised linear kernel (fbgemm/oneDNN on x86, qnnpack on ARM).

Weights are int8 with one scale per output channel (symmetric); each input is quantised on the
fly per tensor (7 bits on x86, the kernel's own range rule). Everything else stays float32.
The int8 weights and scales are ordinary buffers, so state dicts and memory accounting (for
instance ComfyUI's model management) see plain tensors; the kernel's packed form is built on
first use and rebuilt when the buffers change (their identity or content: see
cpu_kernels.SourceStamp), and dropped when the module moves or is cast. It is an opt-in for CPU
users: measured speeds and the mask differences against float32 are in README.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..errors import BiRefNetError
from .cpu_kernels import ACTIVATIONS, SourceStamp


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 x per-output-channel scale; x float32 (..., K)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12)            # (N,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None])
                             .clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self._packed = None
        self._stamp: SourceStamp | None = None

    def _sources(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.weight_int8, self.weight_scale, self.bias) if t is not None)

    def _packed_weight(self):
        sources = self._sources()
        if self._packed is None or not self._stamp.current(sources):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # quantized tensors are marked deprecated
                quantized = torch._make_per_channel_quantized_tensor(
                    self.weight_int8, self.weight_scale.double(),
                    torch.zeros_like(self.weight_scale, dtype=torch.long), 0)
                self._packed = torch.ops.quantized.linear_prepack(quantized, self.bias)
            self._stamp = SourceStamp(sources)
        return self._packed

    def check_cpu_kernels(self) -> None:
        if self._packed is not None and not self._stamp.verify(self._sources()):
            self.release_caches()

    def packed_kernel_count(self) -> int:
        return int(self._packed is not None)

    def release_caches(self) -> None:
        self._packed, self._stamp = None, None

    def _apply(self, fn, recurse: bool = True):
        self.release_caches()                 # moved or cast: the prepack describes old buffers
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        if x.device.type != "cpu":
            raise BiRefNetError("int8 layers run on the CPU only; load the model with "
                                "dtype fp16/bf16 for a GPU")
        rows = x.reshape(-1, self.in_features).float().contiguous()
        out = torch.ops.quantized.linear_dynamic(rows, self._packed_weight(), True)
        return ACTIVATIONS[activation](out.view(*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _probe() -> str | None:
    """None when this PyTorch runs the int8 kernel, else why not."""
    try:
        Int8Linear(nn.Linear(8, 4))(torch.randn(3, 8))
        return None
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        return f"{type(error).__name__}: {error}"


def quantize_linears_int8(model: nn.Module) -> int:
    """Replace every nn.Linear of ``model.bb`` (in place). Returns how many were replaced."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise BiRefNetError("int8 runs on the CPU from a float32 model: load with device='cpu' "
                            "and dtype='int8'")
    problem = _probe()
    if problem is not None:
        raise BiRefNetError(f"this PyTorch cannot run int8 linear layers ({problem}); use "
                            f"dtype bf16 instead")
    targets = [(name, module) for name, module in model.bb.named_modules()
               if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.bb.get_submodule(parent_name) if parent_name else model.bb
        setattr(parent, child, Int8Linear(module))
    return len(targets)
