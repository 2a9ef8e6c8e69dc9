"""The three stages of a bulk run, as plain functions of column batches (no Ray in here).

``decode_batch`` (CPU task): read each file and decode it to upright 8-bit RGB.
``MaskPredictor`` (actor): load the model once, then mask batch after batch on its device.
``write_batch`` (CPU task): write ``<stem>_mask.png`` and ``<stem>_cutout.png`` atomically.
A batch is a dict of equal-length columns; images are (H, W, 3) uint8 arrays of any size. A
row that fails keeps going down the pipeline with its ``error`` set, so the manifest gets it.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..cli import open_model
from ..data.images import mask_image, read_image, save_outputs
from ..inference.batching import release_device_memory
from ..inference.predict import predict, resize_images, working_size
from ..matting import estimate_foreground
from .sources import is_uri, remote_filesystem

Batch = dict[str, Any]
_NO_PIXELS = np.zeros((1, 1, 3), np.uint8)        # what a failed row carries instead of an image
PASSED_ON = ("path", "stem", "bytes", "width", "height", "read_s")   # columns every stage keeps


def objects(arrays: list[np.ndarray]) -> np.ndarray:
    """A column of arrays of different shapes (Ray stores it as a variable-shape tensor)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def read_bytes(location: str) -> bytes:
    if is_uri(location):
        filesystem, path = remote_filesystem(location)
        with filesystem.open_input_file(path) as stream:
            return stream.read()
    return Path(location).read_bytes()


def _describe(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image file (its format is not one PIL can read)"
    return f"{type(error).__name__}: {error}"


def decode_batch(batch: Batch) -> Batch:
    """Read and decode every file of the batch; one that fails gets its error, not an image."""
    images, errors, sizes, seconds = [], [], [], []
    for location in batch["path"]:
        start, size = time.perf_counter(), -1
        try:
            data = read_bytes(str(location))
            size = len(data)
            pixels, error = np.asarray(read_image(io.BytesIO(data))), ""   # (H, W, 3) uint8
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            pixels, error = _NO_PIXELS, f"cannot read the image: {_describe(exc)}"
        images.append(pixels)
        errors.append(error)
        sizes.append(size)
        seconds.append(time.perf_counter() - start)
    decoded = [pixels is not _NO_PIXELS for pixels in images]
    return {"path": batch["path"], "stem": batch["stem"], "image": objects(images),
            "error": np.array(errors, dtype=object), "bytes": np.array(sizes, np.int64),
            "width": np.array([p.shape[1] if ok else -1 for p, ok in zip(images, decoded)]),
            "height": np.array([p.shape[0] if ok else -1 for p, ok in zip(images, decoded)]),
            "read_s": np.array(seconds)}


class MaskPredictor:
    """The model, loaded once per actor; each call masks a batch of images of any sizes.

    Each image is resized to the working size on the device, the batch goes through
    ``predict`` in one forward, and each mask is resized back to its image's size: the same
    arithmetic as the CLI's ``predict`` on one image. ``detail`` refines each mask at the
    image's own pixel scale; ``refine_foreground`` replaces the cut-out's colours at soft edges
    by the estimated foreground's. If a batch fails (e.g. out of memory), its images are
    retried one by one and only those that fail again get an error.
    """

    def __init__(self, model: str, *, resolution: int | tuple[int, int] | None = None,
                 device: str = "cpu", dtype: str = "auto", threads: int | None = None,
                 detail: bool = False, refine_foreground: bool = False,
                 models_dir: str | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model = open_model(model, device=device, dtype=dtype, models_dir=models_dir,
                                announce=False)
        self.size = working_size(self.model, resolution)
        self.device = torch.device(device)
        self.detail, self.refine_foreground = detail, refine_foreground

    def _tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1] on the device."""
        image = torch.from_numpy(np.array(pixels)).to(self.device)   # a copy: Ray's are read-only
        return image.permute(2, 0, 1).unsqueeze(0).float() / 255.0

    def cutouts(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(mask (H, W) uint8, colours (H, W, 3) uint8) of each image."""
        small = torch.cat([resize_images(self._tensor(pixels), self.size) for pixels in images])
        coarse = predict(self.model, small, resolution=self.size)            # (B, 1, h, w)
        results = []
        for pixels, mask in zip(images, coarse):
            mask = resize_images(mask.unsqueeze(0), pixels.shape[:2]).clamp(0, 1)  # (1, 1, H, W)
            colours = pixels
            if self.detail or self.refine_foreground:
                image = self._tensor(pixels)
                if self.detail:
                    from ..inference.detail import refine_detail
                    mask = refine_detail(self.model, image, mask, resolution=self.size,
                                         tile_size=self.size)
                if self.refine_foreground:
                    foreground = estimate_foreground(image, mask)[0]          # (3, H, W)
                    colours = (foreground * 255.0).round().clamp(0, 255).to(torch.uint8)
                    colours = colours.permute(1, 2, 0).cpu().numpy()
            results.append((np.asarray(mask_image(mask[0, 0].cpu().numpy())), colours))
        return results

    def __call__(self, batch: Batch) -> Batch:
        count = len(batch["path"])
        errors = list(batch["error"])
        masks: list[np.ndarray] = [_NO_PIXELS[..., 0]] * count
        colours = list(batch["image"])
        todo = [i for i in range(count) if not errors[i]]
        start = time.perf_counter()
        try:
            done = dict(zip(todo, self.cutouts([batch["image"][i] for i in todo])))
        except Exception:  # noqa: BLE001 - retried image by image below
            release_device_memory(self.device)
            done = {}
            for i in todo:
                try:
                    done[i] = self.cutouts([batch["image"][i]])[0]
                except Exception as exc:  # noqa: BLE001 - this image alone fails
                    errors[i] = f"cannot segment the image: {_describe(exc)}"
                    release_device_memory(self.device)
        for i, (mask, image) in done.items():
            masks[i], colours[i] = mask, image
        share = (time.perf_counter() - start) / max(len(todo), 1)
        return {**{key: batch[key] for key in PASSED_ON}, "image": objects(colours),
                "mask": objects(masks), "error": np.array(errors, dtype=object),
                "infer_s": np.array([share if i in done else 0.0 for i in range(count)])}


def write_batch(batch: Batch, out_dir: str) -> Batch:
    """Write the outputs of each row that has a mask; the rows of the manifest."""
    statuses, errors, seconds = [], [], []
    for stem, pixels, mask, error in zip(batch["stem"], batch["image"], batch["mask"],
                                         batch["error"]):
        start = time.perf_counter()
        if not error:
            try:
                save_outputs(Image.fromarray(pixels, "RGB"), Image.fromarray(mask, "L"),
                             Path(out_dir), str(stem))
            except Exception as exc:  # noqa: BLE001 - a full disk is reported per image
                error = f"cannot write the outputs: {_describe(exc)}"
        statuses.append("failed" if error else "done")
        errors.append(error)
        seconds.append(time.perf_counter() - start if not error else 0.0)
    return {**{key: batch[key] for key in PASSED_ON}, "status": np.array(statuses, dtype=object),
            "error": np.array(errors, dtype=object), "infer_s": batch["infer_s"],
            "write_s": np.array(seconds)}
