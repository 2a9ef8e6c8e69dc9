"""The pack's HTTP route for the web extension: which Loader choices are on disk and which will
be downloaded on first use (and from where)."""
from __future__ import annotations

import logging

from ..birefnet_core.weights.known_models import KNOWN_MODELS
from .model_files import download_folder, local_path, model_choices

logger = logging.getLogger(__name__)


def model_status() -> list[dict]:
    """One entry per Loader choice: name, present, and path or the download it needs."""
    entries = []
    for choice in model_choices():
        found = local_path(choice)
        entry = {"name": choice, "present": found is not None}
        if found is not None:
            entry["path"] = found.path
        elif choice in KNOWN_MODELS:
            model = KNOWN_MODELS[choice]
            entry["download"] = {"repo": model.repo_id, "file": model.filename,
                                 "to": download_folder(), "gated": model.gated}
        entries.append(entry)
    return entries


def register_routes() -> None:
    """Add GET /birefnet/models to the running ComfyUI server, if there is one (importing the
    pack outside a server, as the tests and scripts do, registers nothing)."""
    try:
        from aiohttp import web

        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return

    @server.routes.get("/birefnet/models")
    async def models(_request):
        try:
            return web.json_response({"models": model_status()})
        except Exception as error:          # noqa: BLE001 - report, never break the server
            logger.warning("BiRefNet: model status failed: %s", error)
            return web.json_response({"error": str(error)}, status=500)
