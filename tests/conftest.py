"""Shared pytest fixtures."""
from __future__ import annotations

import pytest

from tests.comfyui_server import ComfyUIServer, ComfyUIUnavailable, launch


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory) -> ComfyUIServer:
    """A real ComfyUI server with the pack installed, shared by the session (comfyui_server.py).

    It fails (never skips) when no ComfyUI is installed: tests/run.sh installs one.
    """
    try:
        server = launch(tmp_path_factory.mktemp("comfyui"))
    except ComfyUIUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
