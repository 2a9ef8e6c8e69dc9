"""Find a checkpoint on disk, or fetch an official one from Hugging Face into the models folder.

Nothing here touches the network at import time. A download happens only inside
:func:`resolve_checkpoint`, only for a known model name, and only when the file is not already in
the models folder. The environment is read at call time:

``BIREFNET_MODELS_DIR``
    Where downloaded checkpoints are kept (see :func:`default_models_dir`).
``HF_ENDPOINT``
    The Hugging Face server (default ``https://huggingface.co``), e.g. a mirror.
``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``)
    When true (``1``, ``yes``, ``on``, ``true``), never download.
``HF_TOKEN``
    Access token, read by ``huggingface_hub`` itself; needed for gated models (RMBG-2.0).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelNotAvailableError
from .known_models import KNOWN_MODELS, KnownModel

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "BIREFNET_MODELS_DIR"
DEFAULT_ENDPOINT = "https://huggingface.co"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_TEMP_PREFIX = ".download-"
_METADATA_TIMEOUT_S = 10.0


def default_models_dir() -> Path:
    """The folder where named models are looked for and downloaded to.

    ``$BIREFNET_MODELS_DIR`` if that variable is set (``~`` is expanded); otherwise a
    ``birefnet`` folder in the user's cache: ``%LOCALAPPDATA%\\birefnet`` on Windows,
    ``~/.cache/birefnet`` on Linux and macOS. The folder is not created here.
    """
    configured = os.environ.get(MODELS_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        local_app_data = os.environ.get("LOCALAPPDATA", "").strip()
        base = Path(local_app_data) if local_app_data else Path.home() / "AppData" / "Local"
        return base / "birefnet"
    return Path.home() / ".cache" / "birefnet"


def hub_endpoint() -> str:
    """The Hugging Face server to download from: ``$HF_ENDPOINT`` now, else the public hub."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no downloads, now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE_VALUES


def download_url(model: KnownModel, endpoint: str | None = None) -> str:
    """The address of a known model's checkpoint file on the hub (``main`` revision)."""
    base = (endpoint or hub_endpoint()).rstrip("/")
    return f"{base}/{model.repo_id}/resolve/main/{model.filename}"


def lookup_known_model(name: str) -> KnownModel | None:
    """A known model by its exact name or repo id, else by a unique case-insensitive match."""
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name]
    for model in KNOWN_MODELS.values():
        if name == model.repo_id:
            return model
    folded = name.casefold()
    matches = [m for m in KNOWN_MODELS.values()
               if folded in (m.name.casefold(), m.repo_id.casefold())]
    # Two names for one file (BiRefNet-massive, BiRefNet-DIS5K-TR_TEs) are one match.
    return matches[0] if len({(m.repo_id, m.filename) for m in matches}) == 1 else None


def resolve_checkpoint(name_or_path: str | os.PathLike, models_dir: str | os.PathLike | None = None,
                       *, download: bool = True) -> Path:
    """The local file of a checkpoint, downloading an official one if needed and allowed.

    - An existing file is returned as it is.
    - A known model name (``"BiRefNet_HR"``) or its repo id (``"ZhengPeng7/BiRefNet_HR"``) gives
      ``models_dir/<Name>.safetensors`` (the extension is the repository file's: ``ToonOut.pth``).
      If that file is missing it is downloaded from
      ``$HF_ENDPOINT`` into a temporary folder inside ``models_dir`` and moved into place in one
      step, so an interrupted download never leaves a partial file under the final name.
    - ``models_dir`` defaults to :func:`default_models_dir`.

    Raises :class:`ModelNotAvailableError` when the file cannot be had: offline
    (``HF_HUB_OFFLINE``), ``download=False``, no connection, access refused (gated models need an
    accepted licence and ``HF_TOKEN``), not found, an unknown name, or a path that does not exist.
    The message names the file to fetch by hand and where to save it.
    """
    text = os.fspath(name_or_path)
    if not text.strip():
        raise ModelNotAvailableError("No model given: pass a known model name or a checkpoint path. "
                                     + _known_names_sentence())
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate
    model = lookup_known_model(text)
    if model is None:
        raise ModelNotAvailableError(_unknown_message(text, candidate))
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    destination = folder / model.local_filename
    if destination.is_file():
        return destination
    if not download:
        raise _not_available(model, destination, "downloading is turned off (download=False)")
    if is_offline():
        raise _not_available(model, destination, "offline mode is on (HF_HUB_OFFLINE is set)")
    return _download(model, destination)


def _looks_like_path(text: str) -> bool:
    has_separator = "/" in text or "\\" in text or (os.altsep is not None and os.altsep in text)
    return has_separator or text.lower().endswith(CHECKPOINT_SUFFIXES)


def _known_names_sentence() -> str:
    return "Known models: " + ", ".join(KNOWN_MODELS) + "."


def _unknown_message(text: str, candidate: Path) -> str:
    if candidate.is_dir():
        return f"'{text}' is a folder, not a checkpoint file; pass the .safetensors or .pth file."
    if _looks_like_path(text):
        return (f"Checkpoint file '{candidate}' does not exist. Check the path, or pass a known "
                f"model name instead. {_known_names_sentence()}")
    return (f"Unknown model '{text}': it is neither a known model name nor an existing file. "
            f"{_known_names_sentence()}")


def _not_available(model: KnownModel, destination: Path, reason: str,
                   endpoint: str | None = None) -> ModelNotAvailableError:
    """An error that says why, which file to fetch by hand and where to put it."""
    url = download_url(model, endpoint)
    gated = ""
    if model.gated and "licence" not in reason:
        gated = (f" (it is gated: accept its licence at {(endpoint or hub_endpoint()).rstrip('/')}"
                 f"/{model.repo_id} while signed in first)")
    return ModelNotAvailableError(
        f"Model '{model.name}' is not available: {reason}. To install it by hand, download {url}"
        f"{gated} and save it as {destination} - or pass the path of a local checkpoint file "
        "instead.")


def _download(model: KnownModel, destination: Path) -> Path:
    """Fetch the file through huggingface_hub into a temporary folder, then move it into place."""
    endpoint = hub_endpoint()
    try:
        import huggingface_hub
    except ImportError as exc:
        raise _not_available(model, destination, "the huggingface_hub package is not installed "
                             "(pip install huggingface_hub)", endpoint) from exc
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        temp_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=destination.parent))
    except OSError as exc:
        raise _not_available(model, destination, f"cannot write to {destination.parent} ({exc})",
                             endpoint) from exc
    logger.info("Downloading %s from %s to %s", model.name, download_url(model, endpoint),
                destination)
    try:
        fetched = _fetch(huggingface_hub, model, temp_dir, endpoint)
        os.replace(fetched, destination)
    except Exception as exc:  # every failure becomes one clear "fetch it by hand" message
        raise _not_available(model, destination, _failure_reason(exc, model, endpoint),
                             endpoint) from exc
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return destination


def _fetch(hf: Any, model: KnownModel, temp_dir: Path, endpoint: str) -> Path:
    # Ask for the file's metadata first, without retries: with no connection this fails at once
    # instead of after huggingface_hub's back-off, and an HTTP error comes back undisguised.
    url = hf.hf_hub_url(model.repo_id, model.filename, endpoint=endpoint)
    hf.get_hf_file_metadata(url, timeout=_METADATA_TIMEOUT_S, endpoint=endpoint,
                            library_name="birefnet_core")
    fetched = hf.hf_hub_download(model.repo_id, model.filename, local_dir=temp_dir,
                                 endpoint=endpoint, library_name="birefnet_core")
    return Path(fetched)


def _failure_reason(exc: BaseException, model: KnownModel, endpoint: str) -> str:
    """A short, actionable explanation of a failed download."""
    status = _http_status(exc)
    if status in (401, 403) or _in_chain(exc, "GatedRepoError"):
        if model.gated:
            return (f"access was refused (HTTP {status}); {model.name} is gated: sign in at "
                    f"{endpoint}/{model.repo_id}, accept its licence ({model.licence}), then set "
                    f"HF_TOKEN to an access token of that account")
        return (f"access was refused (HTTP {status}); check that HF_TOKEN holds a valid "
                f"access token")
    if status == 404:
        return f"the server has no such file (HTTP 404 from {endpoint})"
    if status is not None:
        return f"the server answered HTTP {status}"
    if _in_chain(exc, "OfflineModeIsEnabled"):
        return ("huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was "
                "imported)")
    return f"could not download from {endpoint} ({type(exc).__name__}: {exc})"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _http_status(exc: BaseException) -> int | None:
    for item in _exception_chain(exc):
        status = getattr(getattr(item, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _in_chain(exc: BaseException, class_name: str) -> bool:
    return any(class_name in (c.__name__ for c in type(item).__mro__)
               for item in _exception_chain(exc))
