"""Image files in and out: which files are images, reading them as upright 8-bit RGB, and
writing a mask and its cut-out under the names every command of the package uses."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_LISTED = 10                             # names shown before "... and N more"


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def collect_images(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files named directly, plus the image files inside named folders; and what is missing."""
    found: list[Path] = []
    missing: list[str] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if is_image_file(p)))
        elif path.is_file():
            found.append(path)
        else:
            missing.append(text)
    return found, missing


def listing(items: Iterable[str]) -> str:
    """The first few items joined for an error message, then how many more there are."""
    items = list(items)
    shown = "; ".join(items[:_LISTED])
    return shown + (f"; ... and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def images_by_stem(folder: Path, role: str) -> dict[str, Path]:
    """The image files directly in ``folder``, keyed by file name without extension."""
    if not folder.is_dir():
        raise InputError(f"the {role} folder {folder} does not exist or is not a folder")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if is_image_file(path):
            found.setdefault(path.stem, []).append(path)
    if not found:
        raise InputError(f"the {role} folder {folder} holds no images (it holds no image files "
                         f"with a suffix among {', '.join(sorted(IMAGE_SUFFIXES))})")
    doubles = [paths for paths in found.values() if len(paths) > 1]
    if doubles:
        raise InputError(f"the {role} folder has several images with the same name: "
                         + listing(", ".join(p.name for p in paths) for paths in doubles))
    return {stem: paths[0] for stem, paths in found.items()}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is dropped, 16-bit greyscale is scaled down."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette transparency is resolved before it is dropped
    return image.convert("RGB")


def read_image(path: Path) -> Image.Image:
    """The image at ``path`` as upright (EXIF orientation applied) 8-bit RGB."""
    with Image.open(path) as opened:
        opened.load()
        upright = ImageOps.exif_transpose(opened)
        return to_rgb(upright)


def mask_image(mask: np.ndarray) -> Image.Image:
    """A float mask (H, W) in [0, 1] as an 8-bit greyscale image (white = kept)."""
    return Image.fromarray(np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8), "L")


def output_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Where the mask and the cut-out of the image named ``stem`` are written."""
    return out_dir / f"{stem}_mask.png", out_dir / f"{stem}_cutout.png"


def save_png_atomically(image: Image.Image, path: Path) -> None:
    """Write a PNG under a temporary name in the same folder, then rename it into place: a
    reader (or a run that is killed midway) never sees a half-written file. The file gets the
    permissions any new file gets (the user's umask)."""
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.png.part")
    try:
        with open(temporary, "xb") as stream:
            image.save(stream, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_outputs(rgb: Image.Image, mask: Image.Image, out_dir: Path, stem: str) -> None:
    """``stem_mask.png`` (8-bit mask) and ``stem_cutout.png`` (RGBA, the mask as alpha)."""
    mask_path, cutout_path = output_paths(out_dir, stem)
    save_png_atomically(mask, mask_path)
    cutout = rgb.convert("RGBA")
    cutout.putalpha(mask)
    save_png_atomically(cutout, cutout_path)
