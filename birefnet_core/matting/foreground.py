"""Foreground colour estimation ("decontamination") for soft mattes.

A pixel at a soft edge is a mix ``I = alpha * F + (1 - alpha) * B`` of the subject's colour F
and the old background's colour B. Cutting out with ``F = I`` keeps the background's tint in
every semi-transparent pixel (green fringes around hair shot on a green screen). The functions
here estimate F from the image and the matte, in pure torch (any device, batched, NCHW):

* ``method="multilevel"``: Germer et al., "Fast Multi-Level Foreground Estimation" (ICPR 2020).
  F and B are solved coarse-to-fine on a pyramid from one pixel up to full size; at each level
  every pixel takes the (F, B) that minimises its compositing error plus a smoothness term to
  its four neighbours, weighted by ``regularization + gradient_weight * |alpha_i - alpha_j|``.
  The per-pixel 2x2 least-squares solve runs over all pixels at once, in red-black order
  (half the pixels, then the other half), which converges like Gauss-Seidel.
* ``method="blur_fusion"``: Forte, "Approximate Fast Foreground Colour Estimation" (ICIP 2021).
  Two passes of ``F = clip(F_hat + alpha * (I - alpha * F_hat - (1 - alpha) * B_hat), 0, 1)``
  where F_hat, B_hat are alpha-weighted box means (box widths 90 then 6 pixels); the box sums
  are running sums (box_filter.py), so their cost does not depend on the width.

Default: multilevel, because it is markedly more accurate. On the synthetic composites of
``bench/bench_refine.py`` (hair strands, soft edges, semi-transparent patches over green screen,
stripes, noise and a checkerboard) the alpha-weighted mean absolute error of F in the transition
band at 2048x2048 was 0.0438 for multilevel and 0.0675 for blur fusion (naive cutout 0.111,
pymatting's estimate_foreground_ml 0.0441); CPU time (2 threads) 0.90 s vs 0.35 s
(1024x1024: 0.0461 vs 0.0657, 0.19 s vs 0.08 s).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from .box_filter import box_sum_, window_counts

__all__ = ["estimate_foreground", "check_image_alpha"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_EPSILON = 1e-5


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor, *, method: str = "multilevel",
                        **options) -> torch.Tensor:
    """Estimate the foreground colours F of ``image`` under the matte ``alpha``.

    image: (B, 3, H, W) float in [0, 1]; alpha: (B, 1, H, W) float in [0, 1]; same device.
    Returns F: (B, 3, H, W) in [0, 1], in the image's dtype (computed in float32 or better).

    method="multilevel" options: regularization=1e-5, gradient_weight=1.0,
    small_iterations=10, big_iterations=2, small_size=32 (levels whose sides are both at most
    this get small_iterations).
    method="blur_fusion" options: box_sizes=(90, 6) (box widths of the two passes, in pixels).
    """
    check_image_alpha(image, alpha)
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    image32, alpha32 = image.to(work), alpha.to(work)
    if method == "multilevel":
        result = _multilevel(image32, alpha32, **options)
    elif method == "blur_fusion":
        result = _blur_fusion(image32, alpha32, **options)
    else:
        raise InputError(f"unknown foreground method {method!r}: use 'multilevel' or 'blur_fusion'")
    return result.to(image.dtype)


def check_image_alpha(image: torch.Tensor, alpha: torch.Tensor) -> None:
    """Raise InputError naming what is wrong with an (image (B, 3, H, W), alpha (B, 1, H, W))
    pair of float tensors in [0, 1]; shared by every function that takes such a pair."""
    for name, tensor, channels in (("image", image, 3), ("alpha", alpha, 1)):
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise InputError(f"{name} must be a float tensor with values in [0, 1], "
                             f"got dtype {tensor.dtype}")
        if tensor.dim() != 4 or tensor.shape[1] != channels:
            raise InputError(f"{name} must have shape (B, {channels}, H, W), "
                             f"got {tuple(tensor.shape)}")
        if tensor.shape[0] == 0 or tensor.shape[2] == 0 or tensor.shape[3] == 0:
            raise InputError(f"{name} is empty: shape {tuple(tensor.shape)}")
    # One read of device memory for both tensors; which one holds the NaN only on failure.
    if bool(torch.stack((torch.isnan(image).any(), torch.isnan(alpha).any())).any()):
        name = "image" if bool(torch.isnan(image).any()) else "alpha"
        raise InputError(f"{name} contains NaN values")
    same = "they must have the same batch size, height and width"
    if image.shape[0] != alpha.shape[0]:
        raise InputError(f"image and alpha batch sizes differ ({image.shape[0]} vs "
                         f"{alpha.shape[0]}): {same}")
    if image.shape[-2:] != alpha.shape[-2:]:
        raise InputError(f"image and alpha sizes differ ({tuple(image.shape[-2:])} vs "
                         f"{tuple(alpha.shape[-2:])}): {same}")
    if image.device != alpha.device:
        raise InputError(f"image is on {image.device} but alpha is on {alpha.device}; move them "
                         "to one device")


# ----------------------------------------------------------------------------- multilevel

def _level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Pyramid sizes from (1, 1) to (height, width), each side about twice the previous."""
    levels = max(1, (max(height, width) - 1).bit_length())              # ceil(log2(max side))
    return [(max(1, round(height ** (i / levels))), max(1, round(width ** (i / levels))))
            for i in range(levels + 1)]


def _multilevel(image: torch.Tensor, alpha: torch.Tensor, *, regularization: float = 1e-5,
                gradient_weight: float = 1.0, small_iterations: int = 10,
                big_iterations: int = 2, small_size: int = 32) -> torch.Tensor:
    """Coarse-to-fine F, B estimation; image (B, 3, H, W), alpha (B, 1, H, W) -> F (B, 3, H, W)."""
    height, width = image.shape[-2:]
    weight_f = alpha.sum(dim=(2, 3), keepdim=True)
    weight_b = (1 - alpha).sum(dim=(2, 3), keepdim=True)
    mean_f = (image * alpha).sum(dim=(2, 3), keepdim=True) / (weight_f + _EPSILON)
    mean_b = (image * (1 - alpha)).sum(dim=(2, 3), keepdim=True) / (weight_b + _EPSILON)
    state = torch.cat([mean_f, mean_b], dim=1)                            # (B, 6, 1, 1): F, B
    for h, w in _level_sizes(height, width):
        level_image = _resize_nearest(image, h, w)                        # (B, 3, h, w)
        level_alpha = _resize_nearest(alpha, h, w)                        # (B, 1, h, w)
        padded = F.pad(_resize_nearest(state, h, w), (1, 1, 1, 1), mode="replicate")
        iterations = small_iterations if (h <= small_size and w <= small_size) else big_iterations
        system = _LevelSystem(level_image, level_alpha, regularization, gradient_weight)
        for _ in range(iterations):
            system.sweep(padded)                                          # (B, 6, h+2, w+2)
        state = padded[..., 1:-1, 1:-1]
    return state[:, :3]


def _resize_nearest(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of (B, C, h, w) to (B, C, height, width); identity if same size."""
    if tuple(tensor.shape[-2:]) == (height, width):
        return tensor
    return F.interpolate(tensor, size=(height, width), mode="nearest")


# Red cells have (row + column) even: offsets (0, 0) and (1, 1); black cells (0, 1) and (1, 0).
_COLOURS = (((0, 0), (1, 1)), ((0, 1), (1, 0)))


class _LevelSystem:
    """The per-pixel 2x2 systems of one pyramid level, factored once, solved every sweep.

    For pixel i with neighbour weights w_j (sum W) the normal equations are
    [[a^2 + W, a(1-a)], [a(1-a), (1-a)^2 + W]] [F; B] = [a I + S_F; (1-a) I + S_B]
    with S_F = sum_j w_j F_j, S_B = sum_j w_j B_j. Out-of-image neighbours are the pixel itself
    (replicate border), so W >= 4 * regularization > 0 and the system is never singular.
    Pixels are split into four stride-2 sub-grids by (row % 2, column % 2), so that each colour
    of the red-black order is solved on exactly its own pixels.
    """

    def __init__(self, image: torch.Tensor, alpha: torch.Tensor, regularization: float,
                 gradient_weight: float) -> None:
        padded = F.pad(alpha, (1, 1, 1, 1), mode="replicate")            # (B, 1, h+2, w+2)
        weights = torch.cat([(alpha - neighbour).abs_() for neighbour in _neighbours(padded)],
                            dim=1).mul_(gradient_weight).add_(regularization)  # (B, 4, h, w)
        total = weights.sum(dim=1, keepdim=True)                          # W: (B, 1, h, w)
        inverse_alpha = 1.0 - alpha
        det = total * (alpha * alpha + inverse_alpha * inverse_alpha) + total * total
        scaled = total / det                                               # inverse @ data term
        self.coefficients = torch.cat([
            weights,
            (inverse_alpha * inverse_alpha + total) / det,                # c_ff
            -(alpha * inverse_alpha) / det,                               # c_fb
            (alpha * alpha + total) / det,                                # c_bb
            image * (scaled * alpha), image * (scaled * inverse_alpha),   # constant F, B
        ], dim=1)                                                         # (B, 13, h, w)
        self.grids = {offset: self.coefficients[..., offset[0]::2, offset[1]::2].contiguous()
                      for colour in _COLOURS for offset in colour}

    def sweep(self, padded: torch.Tensor) -> None:
        """One red-black iteration, in place on the replicate-padded state (B, 6, h+2, w+2)."""
        h, w = padded.shape[-2] - 2, padded.shape[-1] - 2
        padded[..., 0, 1:-1] = padded[..., 1, 1:-1]
        padded[..., -1, 1:-1] = padded[..., -2, 1:-1]
        padded[..., 1:-1, 0] = padded[..., 1:-1, 1]
        padded[..., 1:-1, -1] = padded[..., 1:-1, -2]
        for colour in _COLOURS:
            for oy, ox in colour:
                if oy < h and ox < w:
                    self._solve_grid(padded, oy, ox, h, w)

    def _solve_grid(self, padded: torch.Tensor, oy: int, ox: int, h: int, w: int) -> None:
        """Replace the pixels at (oy + 2i, ox + 2j) by their best (F, B) given their neighbours."""
        rows, cols = slice(1 + oy, 1 + h, 2), slice(1 + ox, 1 + w, 2)
        neighbours = (padded[..., rows, ox:w:2], padded[..., rows, 2 + ox:2 + w:2],
                      padded[..., oy:h:2, cols], padded[..., 2 + oy:2 + h:2, cols])
        grid = self.grids[(oy, ox)]                                       # (B, 13, h', w')
        sums = neighbours[0] * grid[:, 0:1]                               # (B, 6, h', w')
        for index in range(1, 4):
            sums.addcmul_(neighbours[index], grid[:, index:index + 1])
        c_ff, c_fb, c_bb = grid[:, 4:5], grid[:, 5:6], grid[:, 6:7]
        sum_f, sum_b = sums[:, :3], sums[:, 3:]
        result = torch.empty_like(sums)                                   # (B, 6, h', w')
        torch.addcmul(grid[:, 7:10], c_ff, sum_f, out=result[:, :3]).addcmul_(c_fb, sum_b)
        torch.addcmul(grid[:, 10:13], c_bb, sum_b, out=result[:, 3:]).addcmul_(c_fb, sum_f)
        padded[..., rows, cols] = result.clamp_(0.0, 1.0)


def _neighbours(padded: torch.Tensor) -> list[torch.Tensor]:
    """Left, right, up, down neighbours of every pixel of a 1-pixel padded (B, C, h+2, w+2)."""
    return [padded[..., 1:-1, :-2], padded[..., 1:-1, 2:],
            padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]]


# ---------------------------------------------------------------------------- blur fusion

def _blur_fusion(image: torch.Tensor, alpha: torch.Tensor, *,
                 box_sizes: tuple[int, ...] = (90, 6)) -> torch.Tensor:
    """Forte's blur-fusion estimator, one pass per box size; (B, 3, H, W) -> (B, 3, H, W).

    Per pass, with window sums S and in-image counts n: blur(F a) / (blur(a) + eps) =
    S(F a) / (S(a) + eps n) and blur(B (1 - a)) / (1 - blur(a) + eps) =
    S(B (1 - a)) / ((1 + eps) n - S(a)), so no sum needs dividing by n. The seven summed
    channels share two buffers across the passes (fresh large tensors cost page faults).
    """
    batch, _, height, width = image.shape
    inverse_alpha = 1.0 - alpha
    stacked = image.new_empty(batch, 7, height, width)                    # F a, B (1 - a), a
    scratch = torch.empty_like(stacked)
    foreground, background = image, image
    for size in box_sizes:
        torch.mul(foreground, alpha, out=stacked[:, :3])
        torch.mul(background, inverse_alpha, out=stacked[:, 3:6])
        stacked[:, 6:].copy_(alpha)
        sums = box_sum_(stacked, size, scratch)                           # (B, 7, H, W)
        spare = scratch if sums is stacked else stacked
        counts = window_counts(height, width, size, image)                # (H, W)
        sum_alpha = sums[:, 6:]
        mean_f = sums[:, :3].div_(sum_alpha + _EPSILON * counts)
        mean_b = sums[:, 3:6].div_(counts * (1.0 + _EPSILON) - sum_alpha)
        residual = torch.mul(alpha, mean_f, out=spare[:, :3])
        torch.sub(image, residual, out=residual).addcmul_(inverse_alpha, mean_b, value=-1.0)
        foreground = torch.addcmul(mean_f, alpha, residual).clamp_(0.0, 1.0)
        background = mean_b
        stacked, scratch = spare, sums
    return foreground
