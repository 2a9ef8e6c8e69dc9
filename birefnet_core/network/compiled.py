"""``compile_model``: BiRefNet's forward through ``torch.compile``, never an error for the user.

What is compiled: the backbone (``model.bb``), where the time between the matrix products
goes (LayerNorm, GELU, residual adds, the window shuffles: traced in Swin's padded form so
that inductor fuses them). The decoder stays eager: its cost is the deformable convolutions'
blocked loop (its block count grows with the image; unrolled it makes huge graphs) and large
convolutions that oneDNN runs at full speed either way. On the CPU inductor's freezing is on
(weights become constants: packed matrix kernels with their activations fused), so a
compiled model must not have its weights changed afterwards. The backbone runs at two sizes
per forward (the image and its half): two graphs per working resolution.

A compile or compiled-run failure (no C++ compiler, an unsupported operator, a backend bug)
logs one warning and the model runs eagerly from then on; an error the eager forward raises
too (bad input) is the eager error, and out-of-memory errors pass through untouched so that
callers can halve their batch. Each new input size compiles anew (first-call cost); the
detail path's tiles share one size, Segment's sizes vary with its resolution.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


class SafeCompiledForward:
    """A module's forward routed through ``torch.compile`` with an eager fallback."""

    def __init__(self, module: nn.Module, eager: Callable[..., torch.Tensor], *,
                 mode: str | None = None) -> None:
        self.eager = eager
        self.failed: str | None = None          # why compiling was given up, once it was
        device = next(module.parameters()).device
        options = {"freezing": True} if device.type == "cpu" else None
        self.compiled = torch.compile(eager, mode=mode, dynamic=False, options=options)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.failed is not None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
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
    backbone.forward = SafeCompiledForward(backbone, type(backbone).forward.__get__(backbone),
                                           mode=mode)
    return model


def compile_state(model: nn.Module) -> str:
    """"off", "on" or "fell back (reason)" for a model, for info lines and logs."""
    forward = model.bb.__dict__.get("forward")
    if not isinstance(forward, SafeCompiledForward):
        return "off"
    return "on" if forward.failed is None else f"fell back to eager ({forward.failed})"
