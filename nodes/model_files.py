"""Where BiRefNet files live inside ComfyUI, and how ComfyUI's own node feeds its files.

The pack's folder is ``models/birefnet`` plus whatever ``extra_model_paths.yaml`` adds under the
name ``birefnet``. ComfyUI's own ``background_removal`` folder is listed too, so users of the
core node need no copies; its files are offered as ``background_removal/<file>``.

ComfyUI 0.21.0 (8 May 2026) added a Remove Background node for those files. It reads its
preprocessing from ``comfy/background_removal/birefnet.json``: 0.21.0 ships mean 0 / std 1
(un-normalised input, a bug), later core versions ImageNet mean/std. :func:`core_feed` reads
that file from the running ComfyUI, so the pack follows whichever core version is installed.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import folder_paths

from ..birefnet_core.errors import BiRefNetError
from ..birefnet_core.weights.hub import resolve_checkpoint
from ..birefnet_core.weights.known_models import IMAGENET_MEAN, IMAGENET_STD, KNOWN_MODELS
from .tensors import NodeInputError

logger = logging.getLogger(__name__)
FOLDER = "birefnet"
CORE_FOLDER = "background_removal"
EXTENSIONS = {".safetensors", ".pth", ".pt", ".bin", ".ckpt"}
CORE_CONFIG = ("background_removal", "birefnet.json")     # inside the imported comfy package
CORE_CONFIG_NAME = "ComfyUI's comfy/background_removal/birefnet.json"    # as errors name it
# What core's BackgroundRemovalModel uses when birefnet.json lacks a key (0.21.0 and later).
_CORE_DEFAULTS = {"image_mean": (0.0, 0.0, 0.0), "image_std": (1.0, 1.0, 1.0), "image_size": 1024}


def _model_folders() -> list[tuple[str, str]]:
    """(folder name, absolute folder) of every folder BiRefNet files are taken from."""
    ensure_model_folder()
    return [(name, folder) for name in (FOLDER, CORE_FOLDER)
            if name in folder_paths.folder_names_and_paths
            for folder in folder_paths.get_folder_paths(name)]


def public_name(path: str) -> str:
    """``birefnet/<file>`` (or ``background_removal/<file>``): a file named relative to the
    model folder that holds it, as ``/birefnet/models`` names it; its bare name where no model
    folder holds it. Error texts reach every HTTP client of a server started with --listen,
    so they never carry the server's absolute paths."""
    for name, folder in _model_folders():
        try:
            relative = os.path.relpath(path, folder)
        except ValueError:                       # another drive (Windows)
            continue
        if relative != os.curdir and relative.split(os.sep)[0] != os.pardir:
            return f"{name}/{relative.replace(os.sep, '/')}"
    return os.path.basename(path)


def without_server_paths(text: str, *files: str) -> str:
    """``text`` with ``files`` named by :func:`public_name` and each model folder by its name."""
    for file in files:
        public = public_name(file)
        for form in {file, os.path.abspath(file), os.path.realpath(file)}:
            text = text.replace(form, public)
    for name, folder in sorted(_model_folders(), key=lambda entry: -len(entry[1])):
        for form in {folder, os.path.abspath(folder), os.path.realpath(folder)}:
            text = text.replace(form, name)
    return text


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
    from_core_folder: bool      # a background_removal file: fed as ComfyUI's own node feeds it
    known_name: str | None


@dataclass(frozen=True)
class CoreFeed:
    """How the running ComfyUI's Remove Background node prepares images for its files."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int                   # square working resolution
    source: str                 # birefnet.json's path, or "" where this ComfyUI has none

    def describe(self) -> str:
        if not self.source:
            return "imagenet (this ComfyUI has no birefnet.json of its own)"
        mean = ", ".join(f"{v:g}" for v in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return f"mean ({mean}) std ({std}) from ComfyUI's birefnet.json, as core's node feeds it"


def core_config_path() -> str | None:
    """ComfyUI's own ``comfy/background_removal/birefnet.json``, found through the imported
    ``comfy`` package (whatever tree the server runs from); None where it has none."""
    import comfy

    for folder in getattr(comfy, "__path__", []):
        candidate = os.path.join(folder, *CORE_CONFIG)
        if os.path.isfile(candidate):
            return candidate
    return None


def _triple(config: dict, key: str, name: str) -> tuple[float, float, float]:
    value = config.get(key, _CORE_DEFAULTS[key])
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise NodeInputError(f"BiRefNetLoader: {name}: {key} must be a list of 3 numbers, not "
                             f"{value!r}; repair or reinstall ComfyUI, or choose "
                             "input_normalization imagenet")
    return tuple(float(v) for v in value)


def core_feed() -> CoreFeed:
    """Mean, std and size of the running ComfyUI's birefnet.json (its node's own defaults for
    missing keys); ImageNet at 1024 where this ComfyUI has no such file."""
    path = core_config_path()
    if path is None:
        return CoreFeed(IMAGENET_MEAN, IMAGENET_STD, 1024, "")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        reason = str(error).replace(path, "birefnet.json")
        raise NodeInputError(f"BiRefNetLoader: cannot read {CORE_CONFIG_NAME} ({reason}); "
                             "repair or reinstall ComfyUI, or choose input_normalization "
                             "imagenet") from None
    if not isinstance(config, dict):
        raise NodeInputError(f"BiRefNetLoader: {CORE_CONFIG_NAME} is not a JSON object; repair "
                             "or reinstall ComfyUI, or choose input_normalization imagenet")
    mean = _triple(config, "image_mean", CORE_CONFIG_NAME)
    std = _triple(config, "image_std", CORE_CONFIG_NAME)
    size = config.get("image_size", _CORE_DEFAULTS["image_size"])
    if min(std) <= 0 or not isinstance(size, int) or size <= 0 or size % 32:
        raise NodeInputError(f"BiRefNetLoader: {CORE_CONFIG_NAME}: image_std must be positive and "
                             f"image_size a positive multiple of 32 (got {std}, {size!r}); repair "
                             "or reinstall ComfyUI, or choose input_normalization imagenet")
    return CoreFeed(mean, std, size, path)


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
        try:
            path = resolve_checkpoint(choice, download_folder())   # says what to fetch where
        except BiRefNetError as error:
            raise type(error)(f"{node}: {without_server_paths(str(error))}") from None
        return ResolvedModel(os.fspath(path), False, choice)
    raise NodeInputError(f"{node}: no model file {choice!r} in the birefnet model folders "
                         "(models/birefnet and extra_model_paths.yaml's birefnet entries); put "
                         "the file there and refresh, or pick a known model name")
