"""Foreground estimation (birefnet_core.matting.foreground) against plain NumPy versions and invariants."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from birefnet_core.errors import InputError
from birefnet_core.matting.box_filter import _window_sum_cumulative, box_mean, box_sum
from birefnet_core.matting.foreground import estimate_foreground

METHODS = ("multilevel", "blur_fusion")


def _random_pair(seed: int, height: int = 24, width: int = 31, batch: int = 1):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=generator)       # (B, 3, H, W)
    alpha = torch.rand(batch, 1, height, width, generator=generator)       # (B, 1, H, W)
    return image, alpha


# ------------------------------------------------------------------ NumPy reference versions

def _numpy_box_mean(array: np.ndarray, size: int) -> np.ndarray:
    """Direct clipped-window mean of (C, H, W), window rows y - size//2 .. y + size-1-size//2."""
    before, after = size // 2, size - 1 - size // 2
    _, height, width = array.shape
    out = np.zeros_like(array, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            window = array[:, max(0, y - before):y + after + 1, max(0, x - before):x + after + 1]
            out[:, y, x] = window.mean(axis=(1, 2))
    return out


def _numpy_blur_fusion(image: np.ndarray, alpha: np.ndarray, sizes=(90, 6)) -> np.ndarray:
    """Forte's two passes on (3, H, W) image and (1, H, W) alpha with the direct box mean."""
    foreground, background = image, image
    for size in sizes:
        blurred_alpha = _numpy_box_mean(alpha, size)
        mean_f = _numpy_box_mean(foreground * alpha, size) / (blurred_alpha + 1e-5)
        mean_b = _numpy_box_mean(background * (1 - alpha), size) / (1 - blurred_alpha + 1e-5)
        residual = image - alpha * mean_f - (1 - alpha) * mean_b
        foreground, background = np.clip(mean_f + alpha * residual, 0, 1), mean_b
    return foreground


def _numpy_multilevel(image: np.ndarray, alpha: np.ndarray, reg=1e-5, gradient=1.0,
                      small=10, big=2, small_size=32) -> np.ndarray:
    """Pixel-by-pixel loops of the same pyramid and red-black update; (3, H, W), (H, W)."""
    height, width = alpha.shape
    levels = int(np.ceil(np.log2(max(height, width))))
    fg = (image * alpha).sum(axis=(1, 2)) / (alpha.sum() + 1e-5)
    bg = (image * (1 - alpha)).sum(axis=(1, 2)) / ((1 - alpha).sum() + 1e-5)
    fg, bg = fg[:, None, None], bg[:, None, None]                          # (3, 1, 1)
    for level in range(levels + 1):
        h, w = round(height ** (level / levels)), round(width ** (level / levels))
        rows = np.minimum(np.floor(np.arange(h) * (height / h)).astype(int), height - 1)
        cols = np.minimum(np.floor(np.arange(w) * (width / w)).astype(int), width - 1)
        lim, la = image[:, rows][:, :, cols], alpha[rows][:, cols]
        prow = np.floor(np.arange(h) * (fg.shape[1] / h)).astype(int)
        pcol = np.floor(np.arange(w) * (fg.shape[2] / w)).astype(int)
        fg, bg = fg[:, prow][:, :, pcol].copy(), bg[:, prow][:, :, pcol].copy()
        for _ in range(small if (h <= small_size and w <= small_size) else big):
            for colour in (0, 1):
                for y in range(h):
                    for x in range(w):
                        if (y + x) % 2 == colour:
                            _numpy_update(fg, bg, lim, la, y, x, reg, gradient)
    return fg


def _numpy_update(fg, bg, image, alpha, y, x, reg, gradient) -> None:
    """Solve pixel (y, x)'s 2x2 system with its 4 clamped neighbours, in place."""
    h, w = alpha.shape
    a = alpha[y, x]
    matrix = np.array([[a * a, a * (1 - a)], [a * (1 - a), (1 - a) ** 2]])
    rhs = np.stack([a * image[:, y, x], (1 - a) * image[:, y, x]])         # (2, 3)
    for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
        y2, x2 = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
        weight = reg + gradient * abs(a - alpha[y2, x2])
        matrix += weight * np.eye(2)
        rhs += weight * np.stack([fg[:, y2, x2], bg[:, y2, x2]])
    solution = np.clip(np.linalg.solve(matrix, rhs), 0, 1)
    fg[:, y, x], bg[:, y, x] = solution


# ------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("size", [1, 2, 5, 6, 24, 31, 40, 90])
def test_box_mean_matches_direct_windowed_mean(size):
    image, _ = _random_pair(0)
    expected = _numpy_box_mean(image[0].double().numpy(), size)
    assert np.abs(box_mean(image, size)[0].numpy() - expected).max() < 1e-5
    # the running-sum path other devices take along rows
    columns = image.clone()
    _window_sum_cumulative(columns, -1, size, torch.empty_like(columns))
    _window_sum_cumulative(columns, -2, size, torch.empty_like(columns))
    assert torch.allclose(columns, box_sum(image, size), atol=1e-4)
    assert torch.equal(image, _random_pair(0)[0])                          # input untouched


def test_blur_fusion_matches_numpy():
    image, alpha = _random_pair(1)
    expected = _numpy_blur_fusion(image[0].double().numpy(), alpha[0].double().numpy())
    result = estimate_foreground(image, alpha, method="blur_fusion")[0].numpy()
    assert np.abs(result - expected).max() < 1e-4


def test_multilevel_matches_numpy_loops():
    image, alpha = _random_pair(2, height=9, width=13)
    expected = _numpy_multilevel(image[0].double().numpy(), alpha[0, 0].double().numpy())
    result = estimate_foreground(image, alpha, method="multilevel")[0].numpy()
    assert np.abs(result - expected).max() < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_opaque_alpha_keeps_the_image(method):
    image, alpha = _random_pair(3)
    result = estimate_foreground(image, torch.ones_like(alpha), method=method)
    assert (result - image).abs().max() < 1e-4


def _grey_on_green(size: int = 96):
    """A grey disc with a 12-pixel soft edge on a pure green screen: image, alpha, true F."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    distance = ((y - size / 2) ** 2 + (x - size / 2) ** 2).float().sqrt()
    alpha = ((size * 0.3 - distance) / 12 + 0.5).clamp(0, 1)[None, None]  # (1, 1, H, W)
    grey = torch.full((1, 3, size, size), 0.5)
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, size, size)
    return alpha * grey + (1 - alpha) * green, alpha, grey


@pytest.mark.parametrize("method", METHODS)
def test_green_screen_does_not_tint_the_edge(method):
    image, alpha, truth = _grey_on_green()
    band = (alpha > 0) & (alpha < 1)
    naive_tint = ((image - truth).abs() * alpha)[band.expand_as(image)].mean()
    result = estimate_foreground(image, alpha, method=method)
    tint = ((result - truth).abs() * alpha)[band.expand_as(image)].mean()
    # F = I is off by (1 - alpha) * 0.5 per channel in the band (about 0.08 here, alpha-
    # weighted); B is one flat colour and F one flat colour, so the model I = aF + (1-a)B holds
    # exactly and the multi-level solve must remove nearly all of it (a tenth left allowed).
    # Blur fusion only approximates F by box means (the 90-px box spans the whole disc), so
    # it is allowed a quarter: still four times less tint than the cutout.
    assert naive_tint > 0.05
    assert tint < {"multilevel": 0.1, "blur_fusion": 0.25}[method] * naive_tint


@pytest.mark.parametrize("method", METHODS)
def test_output_range_shape_and_dtype(method):
    image, alpha = _random_pair(4)
    image = (image * 1.2 - 0.1).clamp(0, 1)
    result = estimate_foreground(image, alpha, method=method)
    assert result.shape == image.shape and result.dtype == image.dtype
    assert result.min() >= 0 and result.max() <= 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", METHODS)
def test_reduced_precision_only_rounds_the_float32_result(method, dtype):
    """The code's own arithmetic: given the same (already rounded) inputs, a bfloat16/float16
    call must return the float32 result rounded to its dtype (it computes in float32). Values
    lie in [0, 1], where rounding to nearest moves a number by at most half an ulp of 1, i.e.
    eps / 2, whatever the CPU or GPU."""
    image, alpha, _ = _grey_on_green(64)
    image, alpha = image.to(dtype), alpha.to(dtype)
    result = estimate_foreground(image, alpha, method=method)
    assert result.dtype == dtype
    same_inputs_float32 = estimate_foreground(image.float(), alpha.float(), method=method)
    assert (result.float() - same_inputs_float32).abs().max() <= torch.finfo(dtype).eps / 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", METHODS)
def test_reduced_precision_inputs_change_the_composite_by_rounding_only(method, dtype):
    """Rounding the inputs themselves: where alpha is tiny, F = (I - (1 - alpha) B) / alpha is
    ill-conditioned and F alone may move by many ulps (a bound on it would test the inputs'
    precision, not the code). What a user sees is alpha * F in the composite. Rounding I and
    alpha (values in [0, 1]) moves each by at most eps / 2, so alpha * F moves by about
    |dI| + |d alpha| <= eps to first order, plus eps / 2 for rounding the output."""
    image, alpha, _ = _grey_on_green(64)
    reference = estimate_foreground(image, alpha, method=method)
    result = estimate_foreground(image.to(dtype), alpha.to(dtype), method=method).float()
    assert ((result - reference).abs() * alpha).max() <= 1.5 * torch.finfo(dtype).eps


@pytest.mark.parametrize("method", METHODS)
def test_batch_rows_are_independent(method):
    image, alpha = _random_pair(5, batch=2)
    together = estimate_foreground(image, alpha, method=method)
    for row in range(2):
        alone = estimate_foreground(image[row:row + 1], alpha[row:row + 1], method=method)
        assert torch.allclose(together[row:row + 1], alone, atol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda i, a: (i[:, :2], a), "image must have shape"),
    (lambda i, a: (i, a.expand(-1, 2, -1, -1)), "alpha must have shape"),
    (lambda i, a: (i, a[:, :, :-1]), "sizes differ"),
    (lambda i, a: (i.repeat(2, 1, 1, 1), a), "batch sizes differ"),
    (lambda i, a: ((i * 255).to(torch.uint8), a), "must be a float tensor"),
    (lambda i, a: (i, a.masked_fill(a > 0.5, float("nan"))), "alpha contains NaN"),
    (lambda i, a: (i[0], a), "image must have shape"),
])
def test_bad_inputs_raise_input_error(make, message):
    image, alpha = make(*_random_pair(6))
    with pytest.raises(InputError, match=message):
        estimate_foreground(image, alpha)


def test_unknown_method_raises_input_error():
    with pytest.raises(InputError, match="unknown foreground method"):
        estimate_foreground(*_random_pair(7), method="magic")
