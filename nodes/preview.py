"""Before/after previews for the pack's web extension.

Segment, RefineEdges and VideoMatte return, beside their outputs, a small ``birefnet_preview``
UI message: the source image and its RGBA cutout saved as PNGs in ComfyUI's temp folder
(scaled so the longer side is at most PREVIEW_SIDE). The node's outputs are not touched (the
node's FUNCTION wraps its plain method, which tests and scripts call directly); the
frontend (web/js/birefnet.js) draws the two over a checkerboard with a draggable split.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import folder_paths

PREVIEW_SIDE = 512
MAX_PREVIEWS = 4          # frames shown for a batch: first, last and evenly between


def with_preview(node: str, outputs: tuple, source: torch.Tensor, cutout: torch.Tensor) -> dict:
    """A node's return value: its outputs unchanged plus the preview message built from the
    source IMAGE (B, H, W, C) and the cutout IMAGE (B, H, W, 4)."""
    return {"ui": preview_ui(source, cutout, node), "result": outputs}


def preview_ui(source: torch.Tensor, cutout: torch.Tensor, node: str) -> dict:
    """{"birefnet_preview": [{"before": file, "after": file, "index": i, "count": B}, ...]} for
    up to MAX_PREVIEWS images of a batch; files as ComfyUI's /view serves them."""
    count = cutout.shape[0]
    shown = min(count, MAX_PREVIEWS)
    picks = sorted({round(i * (count - 1) / max(1, shown - 1)) for i in range(shown)})
    entries = []
    for index in picks:
        before = source[min(index, source.shape[0] - 1)][..., :3].float().cpu()
        if before.shape[-1] == 1:
            before = before.expand(*before.shape[:-1], 3)
        after = cutout[index].float().cpu()
        entries.append({"index": index, "count": count,
                        "before": _save(_shrink(before), node, "before"),
                        "after": _save(_shrink(after), node, "after")})
    return {"birefnet_preview": entries}


def _shrink(x: torch.Tensor) -> torch.Tensor:
    """(H, W, C) -> (h, w, C) with the longer side at most PREVIEW_SIDE."""
    height, width = x.shape[:2]
    scale = PREVIEW_SIDE / max(height, width)
    if scale >= 1:
        return x
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    nchw = F.interpolate(x.permute(2, 0, 1)[None], size=size, mode="bilinear", antialias=True,
                         align_corners=False)
    return nchw[0].permute(1, 2, 0)


def _save(x: torch.Tensor, node: str, kind: str) -> dict:
    """(h, w, C) -> a PNG in the temp folder; the /view reference to it."""
    array = (x.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    name = f"birefnet_{node}_{kind}_{uuid.uuid4().hex[:12]}.png"
    Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB").save(
        os.path.join(folder, name), compress_level=1)
    return {"filename": name, "subfolder": "", "type": "temp"}
