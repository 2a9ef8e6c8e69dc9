"""Where BiRefNet files live inside ComfyUI.

The pack's folder is ``models/birefnet`` plus whatever ``extra_model_paths.yaml`` adds under the
name ``birefnet``. ComfyUI's own ``background_removal`` folder is listed too, so users of the
core node need no copies; its files are offered as ``background_removal/<file>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import folder_paths

from ..birefnet_core.weights.hub import resolve_checkpoint
from ..birefnet_core.weights.known_models import KNOWN_MODELS
from .tensors import NodeInputError

FOLDER = "birefnet"
CORE_FOLDER = "background_removal"
EXTENSIONS = {".safetensors", ".pth", ".pt", ".bin", ".ckpt"}


def ensure_model_folder() -> None:
    """Register models/birefnet with folder_paths, keeping paths the YAML already added."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))
        return
    paths, extensions = entry
    if default not in paths:
        paths.append(default)
    if isinstance(extensions, set):
        extensions.update(EXTENSIONS)
    else:   # an older layout kept a list; rebuild the tuple without dropping any path
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | EXTENSIONS)


def _files(folder: str) -> list[str]:
    if folder not in folder_paths.folder_names_and_paths:
        return []
    return [f for f in folder_paths.get_filename_list(folder)
            if os.path.splitext(f)[1].lower() in EXTENSIONS]


def model_choices() -> list[str]:
    """Local files first, then ComfyUI's background_removal files, then every known model name
    (a known model not on disk is downloaded when the Loader runs)."""
    ensure_model_folder()
    local = _files(FOLDER)
    core = [f"{CORE_FOLDER}/{name}" for name in _files(CORE_FOLDER)]
    return local + core + list(KNOWN_MODELS)


def download_folder() -> str:
    """The first birefnet folder: where named models are downloaded to."""
    ensure_model_folder()
    return folder_paths.get_folder_paths(FOLDER)[0]


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    from_core_folder: bool      # made for ComfyUI's own node: fed un-normalised, legacy order
    known_name: str | None


def local_path(choice: str) -> ResolvedModel | None:
    """The file behind a choice if it is on disk now (no download)."""
    ensure_model_folder()
    if choice.startswith(CORE_FOLDER + "/"):
        path = folder_paths.get_full_path(CORE_FOLDER, choice[len(CORE_FOLDER) + 1:])
        return ResolvedModel(path, True, None) if path else None
    path = folder_paths.get_full_path(FOLDER, choice)
    if path:
        return ResolvedModel(path, False, None)
    if choice in KNOWN_MODELS:
        for folder in folder_paths.get_folder_paths(FOLDER):
            candidate = os.path.join(folder, KNOWN_MODELS[choice].local_filename)
            if os.path.isfile(candidate):
                return ResolvedModel(candidate, False, choice)
    return None


def resolve_model(choice: str, node: str) -> ResolvedModel:
    """The file behind a choice, downloading a known model into models/birefnet if needed."""
    found = local_path(choice)
    if found is not None:
        return found
    if choice in KNOWN_MODELS:
        path = resolve_checkpoint(choice, download_folder())   # raises with what to fetch where
        return ResolvedModel(os.fspath(path), False, choice)
    folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
    raise NodeInputError(f"{node}: no model file {choice!r} in the birefnet folders ({folders}); "
                         "put the file there and refresh, or pick a known model name")
