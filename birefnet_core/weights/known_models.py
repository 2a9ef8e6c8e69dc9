"""The released BiRefNet checkpoints: where they live and how they must be fed.

A checkpoint expects the inward-reference patch order it was trained with (see
``decoder.stack_patches``): files released before the official code changed its order on
5 November 2024 use ``"legacy"``, later ones ``"current"`` (fine-tunes: the order of the code
they were trained with). Each entry also records the working resolution the model was trained
at; all of them expect ImageNet normalisation. Sources for every entry are in the README's
Models section.
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
        """The name the file gets in the models folder: the model's name with the extension of
        the file in the repository (unique per model)."""
        suffix = os.path.splitext(self.filename)[1].lower() or ".safetensors"
        return f"{self.name}{suffix}"


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
    _official("BiRefNet-DIS5K-TR_TEs", _SQUARE_1K, "legacy",
              note="DIS5K trained with its test sets too, 'massive' data (2024)"),
    _official("BiRefNet-legacy", _SQUARE_1K, "legacy",
              note="the first general-use weights (May 2024; 'General-legacy')"),
    _official("BiRefNet_lite-matting", _SQUARE_1K, "current", "swin_v1_t",
              note="matting, Swin-T (2025, after the order change)"),
    _official("BiRefNet_dynamic-matting", _SQUARE_1K, "current",
              note="matting, trained at dynamic resolutions (2025); any multiple of 32 works"),
    KnownModel(name="BiRefNet-massive", repo_id="ZhengPeng7/BiRefNet-DIS5K-TR_TEs",
               filename="model.safetensors", resolution=_SQUARE_1K, patch_order="legacy",
               backbone="swin_v1_l", licence="MIT",
               note="the name other packs (rembg) give BiRefNet-DIS5K-TR_TEs: same file"),
    KnownModel(name="RMBG-2.0", repo_id="briaai/RMBG-2.0", filename="model.safetensors",
               resolution=_SQUARE_1K, patch_order="legacy", backbone="swin_v1_l",
               licence="CC BY-NC 4.0 (non-commercial)", gated=True,
               note="BRIA's retraining of BiRefNet; accept the licence on Hugging Face first"),
    KnownModel(name="ToonOut", repo_id="joelseytre/toonout",
               filename="birefnet_finetuned_toonout.pth", resolution=_SQUARE_1K,
               patch_order="current", backbone="swin_v1_l", licence="MIT (data CC BY 4.0)",
               note="anime fine-tune of BiRefNet (Sep 2025, arXiv 2509.06839; code "
                    "MatteoKartoon/BiRefNet)"),
    KnownModel(name="Lucida", repo_id="egeorcun/lucida", filename="model.safetensors",
               resolution=_SQUARE_1K, patch_order="current", backbone="swin_v1_l",
               licence="MIT", note="BiRefNet_HR fine-tune for glass, camouflage, text and "
                                   "effects (2026), trained at 1024x1024"),
    KnownModel(name="Comfy-Org_BiRefNet", repo_id="Comfy-Org/BiRefNet",
               filename="background_removal/birefnet.safetensors", resolution=_SQUARE_1K,
               patch_order="legacy", backbone="swin_v1_l", licence="MIT",
               note="ComfyUI's repackaging (fp16) of BiRefNet for its own node"),
    KnownModel(name="Comfy-Org_Lucida", repo_id="Comfy-Org/BiRefNet",
               filename="background_removal/lucida.safetensors", resolution=_SQUARE_1K,
               patch_order="current", backbone="swin_v1_l", licence="MIT",
               note="ComfyUI's repackaging of Lucida for its own node"),
)}

# File names of the released .pth files (GitHub releases / Google Drive) and of community
# fine-tunes, matched case-insensitively against the file's base name.
_FILENAME_ORDERS: tuple[tuple[str, str], ...] = (
    (r"toonout", "current"),                         # birefnet_finetuned_toonout.pth, ...
    (r"lucida", "current"),                          # lucida.safetensors, lucida-m35-comfy, ...
    (r"(^|[-_ ])hr([-_. ]|$)|birefnet_hr", "current"),        # BiRefNet_HR, HR-matting, General-HR
    (r"dynamic", "current"),                         # BiRefNet_dynamic(-matting), Matting-dynamic
    (r"lite[-_ ]?matting|matting[-_ ]?lite", "current"),      # BiRefNet_lite-matting, Matting-Lite
    (r"birefnet[-_]?lite|swin_v1_tiny|lite-2k", "legacy"),
    (r"rmbg[-_]?2", "legacy"),
    (r"birefnet-(general|matting|portrait|dis5k|hrsod|cod|massive|legacy)", "legacy"),
    (r"general-epoch_244|dis-epoch|cod-epoch|hrsod-epoch|ep480|ep580|massive|tr_tes", "legacy"),
    # Names other ComfyUI packs give the same official files (General.safetensors, ...), and
    # core's repackaged birefnet.safetensors.
    ((r"^(general|general-lite|general-lite-2k|general-legacy|portrait|matting|dis|hrsod|cod|"
      r"dis-tr_tes|birefnet)\."), "legacy"),
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
    if cache_dir:       # a repository may hold several models (Comfy-Org/BiRefNet): by file
        repo_id = f"{cache_dir.group(1)}/{cache_dir.group(2)}"
        in_repo = [m for m in KNOWN_MODELS.values() if m.repo_id == repo_id]
        base = os.path.basename(text)
        return next((m for m in in_repo if os.path.basename(m.filename) == base),
                    in_repo[0] if in_repo else None)
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
