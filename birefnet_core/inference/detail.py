"""``refine_detail``: masks at an image's own pixel scale, in bounded memory.

A model trained at 1024 x 1024 sees a 6000 x 4000 photo shrunk six-fold: a hair two pixels wide
becomes a third of a working pixel and comes back as a blur. Running the whole photo at its own
size costs memory in proportion to its pixels and loses the model's global view. Here the
coarse mask (given, or ``predict`` at the working resolution) marks an uncertain band around
its edge; windows at the image's own pixel scale that cover the band, and only the band, go
through the model in batches; their masks are blended with smooth weights and replace the
coarse mask inside the band only (a crop that lacks the whole picture cannot add a far-away
object). This is boundary patch refinement (Tang et al., "Look Closer to Segment Better",
CVPR 2021) with the segmentation model itself as the refiner.

Memory: the device holds one batch of tiles; the host holds the image, the masks and a few
(H, W) maps per image (the blend's sums, the band), never anything per tile.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from ..errors import InputError
from .batching import iter_predictions, predict_batched
from .memory import batch_for_budget, free_device_bytes
from .predict import check_images, working_size
from .tiles import TilePlan, band_pixels, band_weight, plan_tiles, window_weight

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]   # (done, total); may raise to stop between batches


def refine_detail(model: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None, *,
                  resolution: int | tuple[int, int] | None = None,
                  tile_size: int | tuple[int, int] | None = None, scale: float = 1.0,
                  band: int | None = None, overlap: float = 0.25, max_tiles: int = 128,
                  batch_size: int | None = None, progress: Progress | None = None
                  ) -> torch.Tensor:
    """Masks (B, 1, H, W) float32 at the images' own size, on the images' device.

    images: (B, C, H, W) float in [0, 1] (C in 1, 3, 4); they may stay on the CPU while the
    model is on a GPU. masks: coarse masks (B, 1, H, W) in [0, 1], or None to make them with
    ``predict`` at ``resolution`` (default: the model's own).
    tile_size: what the network sees per tile (int or (h, w), multiples of 32; default the
    model's working resolution). scale: tile pixels per image pixel; 1.0 (the default) shows
    the network every image pixel as one of its own, the finest detail the photo holds, and
    more would only enlarge pixels (scale^2 times the tiles for no new information) while less
    shrinks thin detail below a working pixel again. band: half-width in image pixels of the
    band around the coarse mask's uncertain pixels (default: three working pixels of the coarse
    pass, at least 8). overlap: fraction of a tile shared with each neighbour (0 to 0.5).
    max_tiles: at most this many tiles per image; when the band needs more, the scale is
    lowered until they fit (logged). batch_size: tiles per forward pass, halved when the
    device runs out of memory; None: ``auto_tile_batch``. progress(done, total): after the
    coarse pass and after every tile batch; it may raise (an interrupt) to stop.
    """
    rgb = check_images(images)
    tile = working_size(model, tile_size)
    _check_options(scale, overlap, max_tiles, batch_size, band)
    if batch_size is None:
        batch_size = auto_tile_batch(model, tile)
    coarse_steps = 0 if masks is not None else rgb.shape[0]
    if masks is None:
        masks = predict_batched(model, rgb, resolution=resolution, batch_size=batch_size,
                                output_device=images.device)
    masks = _check_masks(masks, rgb).to(images.device)
    band = band if band is not None else _default_band(rgb.shape[-2:],
                                                       working_size(model, resolution))
    plans = [plan_tiles(band_pixels(masks[index, 0], band), tile, scale, overlap, max_tiles)
             for index in range(rgb.shape[0])]
    for index, plan in enumerate(plans):
        if plan.scale < scale:
            logger.warning("refine_detail: image %d needs more than %d tiles at scale %.2f; "
                           "using scale %.2f (%d tiles)", index, max_tiles, scale, plan.scale,
                           len(plan.windows))
    counter = _Counter(progress, coarse_steps + sum(len(plan.windows) for plan in plans))
    counter.advance(coarse_steps)
    refined = [_refine_one(model, rgb[index], masks[index, 0], plan, band, overlap, batch_size,
                           counter) for index, plan in enumerate(plans)]
    return torch.stack(refined)[:, None]


def auto_tile_batch(model: nn.Module, tile: tuple[int, int], most: int = 8) -> int:
    """Tiles per forward when none is given. On the CPU 1: larger batches measured no faster
    there (bench/bench_video.py, as for video frames), and each tile of the batch adds its
    activations to the host maps (memory.detail_host_bytes), which at 8K already take most of
    the memory an 8K photo may use. On a CUDA device as many as the forward estimate
    (memory.forward_memory_bytes) fits in its free memory, up to ``most``; 4 where the free
    memory cannot be read (MPS, others)."""
    parameter = next(model.parameters())
    if parameter.device.type == "cpu":
        return 1
    free = free_device_bytes(parameter.device)
    if free is None:
        return 4
    info = getattr(model, "info", None)
    return batch_for_budget(getattr(info, "variant", None), tile[0], tile[1], parameter.dtype,
                            parameter.device, free, most)


def _refine_one(model: nn.Module, image: torch.Tensor, coarse: torch.Tensor, plan: TilePlan,
                band: int, overlap: float, batch_size: int, counter: "_Counter") -> torch.Tensor:
    """One image (3, H, W) and its coarse mask (H, W) -> the refined mask (H, W)."""
    if not plan.windows:
        return coarse.float().clone()
    height, width = coarse.shape
    blended = torch.zeros(height, width, device=coarse.device)          # sum of weight * mask
    weights = torch.zeros(height, width, device=coarse.device)          # sum of weight
    crops = _crops(image, plan.windows)
    placed = iter(plan.windows)
    for _, tile_masks in iter_predictions(model, crops, resolution=plan.network_size,
                                          batch_size=batch_size, output_device=coarse.device):
        for tile_mask in tile_masks[:, 0]:                               # (h, w) each
            top, left, h, w = window = next(placed)
            weight = window_weight(window, (height, width), overlap).to(coarse.device)
            blended[top:top + h, left:left + w].addcmul_(weight, tile_mask)
            weights[top:top + h, left:left + w].add_(weight)
        counter.advance(tile_masks.shape[0])
    tiles = blended.div_(weights.clamp_(min=1e-12))                      # 0 where no tile
    del weights
    keep = band_weight(coarse.float(), band)                             # 0 outside the band
    return coarse.float().lerp(tiles, keep).clamp_(0, 1)


def _crops(image: torch.Tensor, windows: list[tuple[int, int, int, int]]
           ) -> Iterator[torch.Tensor]:
    """The windows of (3, H, W), as views: one batch of them is copied at a time."""
    for top, left, height, width in windows:
        yield image[:, top:top + height, left:left + width]


class _Counter:
    """Adds up steps done and reports them to ``progress`` (which may raise to stop)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def advance(self, steps: int) -> None:
        if steps and self.progress is not None:
            self.done += steps
            self.progress(self.done, self.total)


def _default_band(image_size: tuple[int, int], coarse_size: tuple[int, int]) -> int:
    """Three working pixels of the coarse pass, in image pixels (at least 8): the coarse
    mask's edge is only known to about a working pixel, thin detail spreads a little further."""
    pixel = max(image_size[0] / coarse_size[0], image_size[1] / coarse_size[1])
    return max(8, round(3 * pixel))


def _check_options(scale: float, overlap: float, max_tiles: int, batch_size: int | None,
                   band: int | None) -> None:
    if not scale > 0:
        raise InputError(f"scale must be above 0 (tile pixels per image pixel), got {scale}")
    if not 0 <= overlap <= 0.5:
        raise InputError(f"overlap must be between 0 and 0.5 (a fraction of a tile), got "
                         f"{overlap}")
    if max_tiles < 1:
        raise InputError(f"max_tiles must be at least 1, got {max_tiles}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be at least 1 (or None: auto), got {batch_size}")
    if band is not None and band < 1:
        raise InputError(f"band must be at least 1 pixel (or None for the default), got {band}")


def _check_masks(masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) masks matching the images' batch and size; values clamped to [0, 1]."""
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[1] != 1:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise InputError(f"masks must have shape (B, 1, H, W), got {shape}")
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise InputError(f"masks are {tuple(masks.shape)} but the images are "
                         f"{tuple(images.shape)}: give one mask per image, at its size")
    if not masks.is_floating_point() or not torch.isfinite(masks).all():
        raise InputError("masks must be finite floats in [0, 1]")
    return masks.float().clamp(0, 1)
