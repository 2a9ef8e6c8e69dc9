"""The plain-PyTorch deformable convolution against torchvision's compiled one."""
from __future__ import annotations

import pytest
import torch

from birefnet_core.network.deform_conv import DeformableConv2d, deform_conv2d

torchvision_ops = pytest.importorskip("torchvision.ops")

CASES = [  # kernel, padding, stride, dilation
    (1, 0, 1, 1), (3, 1, 1, 1), (7, 3, 1, 1), (3, 2, 2, 2), (5, 1, 1, 1)]


def _inputs(kernel, padding, stride, dilation, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 11, 14, generator=gen)
    weight = torch.randn(5, 6, kernel, kernel, generator=gen) / (6 * kernel * kernel) ** 0.5
    bias = torch.randn(5, generator=gen)
    out_h = (11 + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    out_w = (14 + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    # Offsets large enough to leave the image, so the zero-outside rule is exercised.
    offset = torch.randn(2, 2 * kernel * kernel, out_h, out_w, generator=gen) * 4
    mask = torch.rand(2, kernel * kernel, out_h, out_w, generator=gen) * 2
    return x, offset, weight, bias, mask


@pytest.mark.parametrize("kernel,padding,stride,dilation", CASES)
def test_matches_torchvision_in_float32(kernel, padding, stride, dilation):
    x, offset, weight, bias, mask = _inputs(kernel, padding, stride, dilation)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, mask=mask)
    expected = torchvision_ops.deform_conv2d(x, offset, weight, bias, **kwargs)
    got = deform_conv2d(x, offset, weight, bias, **kwargs)
    assert got.shape == expected.shape
    # both sum 6 * k^2 (<= 294) products of O(1) values in float32, in different orders: their
    # roundings differ by about sqrt(294) * 6e-8 * (sum of |products|, a few) ~ 1e-6
    assert (got - expected).abs().max() <= 1e-5


def test_integer_offsets_outside_image_give_zero_samples():
    x = torch.ones(1, 1, 4, 4)
    offset = torch.full((1, 2, 4, 4), 10.0)             # every sample 10 px away: outside
    out = deform_conv2d(x, offset, torch.ones(1, 1, 1, 1))
    assert torch.count_nonzero(out) == 0


def test_without_mask_and_zero_offset_equals_plain_convolution():
    gen = torch.Generator().manual_seed(3)
    x, weight = torch.randn(1, 4, 9, 9, generator=gen), torch.randn(3, 4, 3, 3, generator=gen)
    offset = torch.zeros(1, 18, 9, 9)
    expected = torch.nn.functional.conv2d(x, weight, padding=1)
    assert torch.allclose(deform_conv2d(x, offset, weight, padding=1), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rounds_like_its_dtype(dtype):
    """The code's own arithmetic in bfloat16/float16, on inputs already in that dtype, against
    torchvision in float32 on the same values (so the inputs' rounding is not measured). Each
    output sums products weight * modulated bilinear sample; in the low dtype the corner weight
    (eps/2), the corner product (eps/2), the three corner additions (3 * eps/2) and the output
    (eps/2) are rounded, each by at most half an ulp relative to the sum of magnitudes, which is
    the same convolution of |x|, |weight|, |bias| and |mask|: 3 eps in all; 4 eps leaves room
    for the matrix product's own accumulation order (CPU kernels and cuBLAS differ)."""
    inputs = [t.to(dtype) for t in _inputs(3, 1, 1, 1, seed=1)]
    x, offset, weight, bias, mask = inputs
    got = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert got.dtype == dtype
    x, offset, weight, bias, mask = [t.float() for t in inputs]
    expected = torchvision_ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    magnitude = torchvision_ops.deform_conv2d(x.abs(), offset, weight.abs(), bias.abs(),
                                              padding=1, mask=mask.abs())
    assert ((got.float() - expected).abs() <= 4 * torch.finfo(dtype).eps * magnitude).all()


def test_module_matches_official_formula():
    torch.manual_seed(0)
    module = DeformableConv2d(4, 6, kernel_size=3, padding=1)
    for conv in (module.offset_conv, module.modulator_conv):
        torch.nn.init.normal_(conv.weight, std=0.3)
    x = torch.randn(2, 4, 8, 10)
    expected = torchvision_ops.deform_conv2d(
        x, module.offset_conv(x), module.regular_conv.weight, None, padding=1,
        mask=2 * torch.sigmoid(module.modulator_conv(x)))
    assert torch.allclose(module(x), expected, atol=1e-5)


def test_gradients_match_torchvision():
    """The plain-PyTorch path is differentiable (fine-tuning uses it) with torchvision's grads."""
    x, offset, weight, bias, mask = _inputs(3, 1, 1, 1, seed=2)
    ours = [t.clone().requires_grad_(True) for t in (x, offset, weight, bias, mask)]
    theirs = [t.clone().requires_grad_(True) for t in (x, offset, weight, bias, mask)]
    deform_conv2d(*ours[:4], padding=1, mask=ours[4]).square().sum().backward()
    torchvision_ops.deform_conv2d(*theirs[:4], padding=1, mask=theirs[4]).square().sum().backward()
    for mine, reference in zip(ours, theirs):
        scale = reference.grad.abs().max()
        assert (mine.grad - reference.grad).abs().max() <= 1e-4 * max(1.0, float(scale))


def test_block_size_does_not_change_the_result(monkeypatch):
    import birefnet_core.network.deform_conv as module
    x, offset, weight, bias, mask = _inputs(7, 3, 1, 1, seed=4)
    whole = deform_conv2d(x, offset, weight, bias, padding=3, mask=mask)
    monkeypatch.setattr(module, "_COLUMN_BYTES", 1)            # 64-pixel blocks
    assert torch.allclose(deform_conv2d(x, offset, weight, bias, padding=3, mask=mask), whole,
                          atol=1e-6)


def test_row_indices_past_float32_exact_integers_stay_exact():
    """Past 2**24 padded pixels an image's row index no longer fits float32 exactly: the
    corner plan then builds indices in integers. A 1-channel 4100x4100 image with 1x1 taps
    shifted by offsets: every output must equal torchvision's, far corner included."""
    gen = torch.Generator().manual_seed(3)
    size = 4100
    x = torch.randn(1, 1, size, size, generator=gen)
    offset = torch.rand(1, 2, size, size, generator=gen) * 2 - 1      # within one pixel
    weight = torch.ones(1, 1, 1, 1)
    expected = torchvision_ops.deform_conv2d(x, offset, weight)
    got = deform_conv2d(x, offset, weight)
    # one bilinear interpolation of O(1) values in float32: a few ulps; a row off by one
    # (the failure this guards against) changes outputs by O(1)
    assert (got - expected).abs().max() <= 1e-5
