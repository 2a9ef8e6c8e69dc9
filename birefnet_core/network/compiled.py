"""``compile_model``: BiRefNet's forward through ``torch.compile``, never an error for the user.

What is compiled: the backbone (``model.bb``), where the time between the matrix products
goes (LayerNorm, GELU, residual adds, the window shuffles: traced in Swin's padded form so
that inductor fuses them). The decoder stays eager: its cost is the deformable convolutions'
blocked loop (its block count grows with the image; unrolled it makes huge graphs) and large
convolutions that oneDNN runs at full speed either way. Options are chosen when a forward
first runs on a device type (one compiled function per device type): on the CPU inductor's
freezing is on (weights become constants: packed matrix kernels with their activations fused;
a ``mode`` is passed as its inductor options, since torch.compile takes a mode or options, not
both), so a compiled CPU model must not have its weights changed afterwards. The backbone runs
at two sizes per forward (the image and its half): two graphs per working resolution.

A compile or compiled-run failure (torch.compile refusing its arguments, no C++ compiler, an
unsupported operator, a backend bug) logs one warning and the model runs eagerly from then on;
an error the eager forward raises too (bad input) is the eager error, and out-of-memory errors
pass through untouched so that callers can halve their batch. Each new input size compiles
anew (first-call cost); the detail path's tiles share one size, Segment's sizes vary with its
resolution.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


def compile_options(mode: str | None, device: torch.device) -> dict:
    """torch.compile's keyword arguments for a forward on ``device``: freezing on the CPU."""
    if device.type != "cpu":
        return {"mode": mode}
    from torch._inductor import list_mode_options     # imported when compiling, not before
    modes = list_mode_options(mode) if mode is not None else {}
    return {"options": {**modes, "freezing": True}}


def _input_device(args: tuple, kwargs: dict) -> torch.device:
    """The device a call computes on: its first tensor argument's."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


class SafeCompiledForward:
    """A module's forward routed through ``torch.compile`` with an eager fallback."""

    def __init__(self, eager: Callable[..., torch.Tensor], *, mode: str | None = None) -> None:
        self.eager = eager
        self.mode = mode
        self.failed: str | None = None          # why compiling was given up, once it was
        self.compiled: dict[str, Callable[..., torch.Tensor]] = {}     # by device type

    def _compiled_for(self, device: torch.device) -> Callable[..., torch.Tensor]:
        compiled = self.compiled.get(device.type)
        if compiled is None:
            compiled = torch.compile(self.eager, dynamic=False,
                                     **compile_options(self.mode, device))
            self.compiled[device.type] = compiled
        return compiled

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.failed is not None:
            return self.eager(*args, **kwargs)
        try:
            return self._compiled_for(_input_device(args, kwargs))(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            out = self.eager(*args, **kwargs)   # bad input raises here, with eager's message
            self.failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
            logger.warning("BiRefNet: torch.compile failed, running eagerly from now on (%s)",
                           self.failed)
            return out


def compile_model(model: nn.Module, *, mode: str | None = None) -> nn.Module:
    """Make ``model(x)`` run its backbone compiled (in place; returns the model). See the
    module docstring. ``mode``: torch.compile's mode (None, "max-autotune", ...)."""
    backbone = model.bb
    backbone.forward = SafeCompiledForward(type(backbone).forward.__get__(backbone), mode=mode)
    return model


def compile_state(model: nn.Module) -> str:
    """"off", "on" or "fell back (reason)" for a model, for info lines and logs."""
    forward = model.bb.__dict__.get("forward")
    if not isinstance(forward, SafeCompiledForward):
        return "off"
    return "on" if forward.failed is None else f"fell back to eager ({forward.failed})"
