"""Exceptions raised by birefnet_core.

Every error a user can cause (a wrong file, a missing download, a bad tensor) is one of these,
with a message that says what is wrong and what to do about it.
"""
from __future__ import annotations


class BiRefNetError(Exception):
    """Base class of every error birefnet_core raises on purpose."""


class CheckpointError(BiRefNetError, ValueError):
    """A checkpoint file or state dict that cannot be loaded as BiRefNet."""


class ModelNotAvailableError(BiRefNetError, FileNotFoundError):
    """A named model that is neither on disk nor downloadable right now."""


class InputError(BiRefNetError, ValueError):
    """An input tensor of the wrong shape, dtype, range or size."""
