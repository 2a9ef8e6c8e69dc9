"""The pack's HTTP route for the web extension: which Loader choices are on disk and which will
be downloaded on first use (and from where).

Like ComfyUI's own ``/models/<folder>`` routes it names files relative to the model folders,
never by absolute server path: a server started with ``--listen`` answers anyone who can reach
it, and its directory layout is none of their business.
"""
from __future__ import annotations

import logging

from ..birefnet_core.weights.known_models import KNOWN_MODELS
from .model_files import CORE_FOLDER, FOLDER, local_path, model_choices

logger = logging.getLogger(__name__)


def _where(choice: str, known_name: str | None) -> tuple[str, str]:
    """(model folder, file name relative to it) of a choice that is on disk."""
    if choice.startswith(CORE_FOLDER + "/"):
        return CORE_FOLDER, choice[len(CORE_FOLDER) + 1:]
    if known_name is not None:
        return FOLDER, KNOWN_MODELS[known_name].local_filename
    return FOLDER, choice


def model_status() -> list[dict]:
    """One entry per Loader choice: name, present, and where it is (``folder/file``) or the
    download it needs (repository, file, and ``folder/file`` it will be saved as)."""
    entries = []
    for choice in model_choices():
        found = local_path(choice)
        entry = {"name": choice, "present": found is not None}
        if found is not None:
            folder, file = _where(choice, found.known_name)
            entry.update(folder=folder, path=f"{folder}/{file}")
        elif choice in KNOWN_MODELS:
            model = KNOWN_MODELS[choice]
            entry["download"] = {"repo": model.repo_id, "file": model.filename,
                                 "folder": FOLDER, "to": f"{FOLDER}/{model.local_filename}",
                                 "gated": model.gated}
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
            return web.json_response({"error": "model status failed; see the server log"},
                                     status=500)
