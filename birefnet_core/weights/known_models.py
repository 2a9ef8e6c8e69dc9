"""The officially released BiRefNet checkpoints: where they live and how they must be fed.

A checkpoint expects the inward-reference patch order it was trained with (see
``decoder.stack_patches``): files released before the official code changed its order on
5 November 2024 use ``"legacy"``, later ones ``"current"``. Each entry also records the working
resolution the model was trained at and the input normalisation it expects.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from ..network.decoder import PATCH_ORDERS

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class KnownModel:
    name: str                      # the name users type: "BiRefNet_HR"
    repo_id: str                   # Hugging Face repository
    filename: str                  # file inside the repository
    resolution: tuple[int, int]    # working (height, width)
    patch_order: str               # "legacy" or "current"
    backbone: str                  # for the docs and sanity checks
    licence: str
    gated: bool = False            # needs an accepted licence and a token on Hugging Face
    note: str = ""

    @property
    def local_filename(self) -> str:
        """The name the file gets in the models folder (unique per model)."""
        return f"{self.name}.safetensors"


def _official(name, resolution, order, backbone="swin_v1_l", note=""):
    return KnownModel(name=name, repo_id=f"ZhengPeng7/{name}", filename="model.safetensors",
                      resolution=resolution, patch_order=order, backbone=backbone,
                      licence="MIT", note=note)


_SQUARE_1K, _SQUARE_2K = (1024, 1024), (2048, 2048)

KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in (
    _official("BiRefNet", _SQUARE_1K, "legacy", note="general use (July 2024)"),
    _official("BiRefNet_lite", _SQUARE_1K, "legacy", "swin_v1_t", "general use, Swin-T"),
    _official("BiRefNet_lite-2K", (1440, 2560), "legacy", "swin_v1_t", "general use, 2560x1440"),
    _official("BiRefNet_HR", _SQUARE_2K, "current", note="general use at 2048x2048 (Feb 2025)"),
    _official("BiRefNet-matting", _SQUARE_1K, "legacy", note="trimap-free matting (Oct 2024)"),
    _official("BiRefNet_HR-matting", _SQUARE_2K, "current", note="matting at 2048x2048 (Feb 2025)"),
    _official("BiRefNet-portrait", _SQUARE_1K, "legacy", note="portrait matting"),
    _official("BiRefNet_dynamic", _SQUARE_1K, "current",
              note="trained at 256..2304 (Mar 2025); any multiple of 32 works"),
    _official("BiRefNet_512x512", (512, 512), "current",
              note="low resolution; release date not documented, so the default order"),
    _official("BiRefNet-DIS5K", _SQUARE_1K, "legacy", note="paper benchmark model (DIS)"),
    _official("BiRefNet-HRSOD", _SQUARE_1K, "legacy", note="paper benchmark model (HRSOD)"),
    _official("BiRefNet-COD", _SQUARE_1K, "legacy", note="paper benchmark model (COD)"),
    KnownModel(name="RMBG-2.0", repo_id="briaai/RMBG-2.0", filename="model.safetensors",
               resolution=_SQUARE_1K, patch_order="legacy", backbone="swin_v1_l",
               licence="CC BY-NC 4.0 (non-commercial)", gated=True,
               note="BRIA's retraining of BiRefNet; accept the licence on Hugging Face first"),
)}

# File names of the released .pth files (GitHub releases / Google Drive) and of community
# fine-tunes, matched case-insensitively against the file's base name.
_FILENAME_ORDERS: tuple[tuple[str, str], ...] = (
    (r"toonout", "current"),
    (r"(^|[-_ ])hr([-_. ]|$)|birefnet_hr", "current"),        # BiRefNet_HR, HR-matting, General-HR
    (r"dynamic", "current"),
    (r"birefnet[-_]?lite|swin_v1_tiny|lite-2k", "legacy"),
    (r"rmbg[-_]?2", "legacy"),
    (r"birefnet-(general|matting|portrait|dis5k|hrsod|cod|massive|legacy)", "legacy"),
    (r"general-epoch_244|dis-epoch|cod-epoch|hrsod-epoch|ep480|ep580|massive", "legacy"),
    # Names other ComfyUI packs give the same official files (General.safetensors, ...).
    (r"^(general|general-lite|general-lite-2k|portrait|matting|dis|hrsod|cod|dis-tr_tes)\.",
     "legacy"),
    (r"background_removal", "legacy"),
)


def find_known_model(identifier: str | os.PathLike | None) -> KnownModel | None:
    """The known model that a name, repo id or file path refers to, if any.

    A path inside a Hugging Face cache (``models--ZhengPeng7--BiRefNet_HR``) or a file named
    after a model (``BiRefNet_HR.safetensors``, as the downloader saves it) is recognised.
    """
    if identifier is None:
        return None
    text = str(identifier)
    if text in KNOWN_MODELS:
        return KNOWN_MODELS[text]
    for model in KNOWN_MODELS.values():
        if text == model.repo_id:
            return model
    cache_dir = re.search(r"models--([^/\\]+?)--([^/\\]+)", text)
    if cache_dir:
        repo_id = f"{cache_dir.group(1)}/{cache_dir.group(2)}"
        return next((m for m in KNOWN_MODELS.values() if m.repo_id == repo_id), None)
    stem = os.path.splitext(os.path.basename(text))[0]
    return KNOWN_MODELS.get(stem)


def choose_patch_order(requested: str, identifier: str | os.PathLike | None = None) -> str:
    """Resolve ``"auto"`` to the order a file was trained with; pass explicit choices through.

    Unknown files get ``"current"``, the order of today's official code. The choice and its
    reason are logged so that a user who sees odd masks knows what to override.
    """
    if requested in PATCH_ORDERS:
        return requested
    if requested != "auto":
        raise ValueError(f"patch_order must be 'auto', 'current' or 'legacy', not {requested!r}")
    known = find_known_model(identifier)
    if known is not None:
        order, reason = known.patch_order, f"known model {known.name}"
    else:
        order, reason = _order_from_filename(identifier)
    logger.info("BiRefNet patch order %r for %s (%s); pass patch_order='current' or 'legacy' "
                "to override", order, identifier if identifier is not None else "a state dict",
                reason)
    return order


def _order_from_filename(identifier) -> tuple[str, str]:
    if identifier is not None:
        base = os.path.basename(str(identifier)).lower()
        parent = os.path.basename(os.path.dirname(str(identifier))).lower()
        for pattern, order in _FILENAME_ORDERS:
            if re.search(pattern, base) or re.search(pattern, parent):
                return order, f"file name matches {pattern!r}"
    return "current", "unknown file: the order of today's official code"
