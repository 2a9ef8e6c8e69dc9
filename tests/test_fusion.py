"""Inference rewrites (BatchNorm folding, composed output convolutions, window gathers) keep
the function of the network."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import birefnet_core
from birefnet_core.network.backbones.swin import (SwinBlock, WindowAttention, window_chunks,
                                                  window_layout, window_merge, window_partition)
from birefnet_core.network.decoder import two_convs_as_one
from birefnet_core.network.folding import fold_batchnorm
from tests.synthetic import parity_fixture, synthetic_float_weights

# The parity acceptance bound on logits (tests/test_parity.py): folding BatchNorm and composing
# convolutions change only float32 rounding, which stays at a few 1e-6.
TOLERANCE = 1e-4
EPS32 = torch.finfo(torch.float32).eps


@pytest.mark.parametrize("name,backbone", [("swin_v1_t_192x320", "swin_v1_t"),
                                           ("pvt_v2_b0_256x256", "pvt_v2_b0")])
def test_unfused_model_matches_official_and_fused(name, backbone):
    fixture = parity_fixture(name)
    x = torch.from_numpy(fixture["input"])
    weights = synthetic_float_weights(backbone)
    plain = birefnet_core.load_model(weights, patch_order="current", fuse=False)
    fused = birefnet_core.load_model(weights, patch_order="current")
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    plain_out, fused_out = plain(x), fused(x)
    assert np.abs(plain_out.numpy() - fixture["logits"]).max() <= TOLERANCE
    assert (plain_out - fused_out).abs().max() <= TOLERANCE


def test_folding_needs_eval_mode():
    model = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), fuse=False).train()
    with pytest.raises(RuntimeError, match="eval"):
        fold_batchnorm(model)


@pytest.mark.parametrize("shape", [(2, 3, 9, 13), (1, 3, 5, 5), (1, 3, 32, 20), (1, 3, 4, 7)])
def test_two_convolutions_compose_exactly_including_the_border(shape):
    torch.manual_seed(0)
    first = nn.Conv2d(3, 8, 3, 1, 1)
    weight, bias = torch.randn(2, 8, 3, 3), torch.randn(2)
    x = torch.randn(*shape)
    expected = F.conv2d(first(x), weight, bias, padding=1)
    got = two_convs_as_one(x, first, weight, bias)
    assert got.shape == expected.shape
    # one 5x5 convolution vs two 3x3 ones over 8 channels of O(1) values: float32 rounding of
    # sums of ~200 products (~1e-6), exact at the border by construction
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("height,width,shift", [(8, 8, 0), (10, 15, 3), (7, 14, 3), (5, 3, 3)])
def test_window_layout_is_pad_roll_partition_and_its_inverse(height, width, shift):
    window = 7
    layout = window_layout(height, width, window, shift, torch.device("cpu"))
    tokens = torch.randn(1, height, width, 4)
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    reference = F.pad(tokens, (0, 0, 0, padded_w - width, 0, padded_h - height))
    if shift:
        reference = torch.roll(reference, (-shift, -shift), (1, 2))
    expected = window_partition(reference, window).reshape(-1, 4)
    gathered = tokens.reshape(-1, 4).index_select(0, layout.gather)
    gathered[layout.pad_slots] = 0
    assert torch.equal(gathered, expected)
    real = torch.ones(layout.gather.numel(), dtype=torch.bool)
    real[layout.pad_slots] = False
    back = torch.full((height * width, 4), float("nan")).index_copy(
        0, layout.gather[real], expected[real])              # every token written exactly once
    assert torch.equal(back, tokens.reshape(-1, 4))
    merged = window_merge(expected.view(-1, window * window, 4), window, padded_h, padded_w)
    assert merged.shape == reference.shape
    assert layout.pad_slots.numel() == padded_h * padded_w - height * width
    assert (layout.mask is None) == (shift == 0)


def test_swin_rows_of_a_batch_are_independent():
    fixture = parity_fixture("swin_v1_t_192x320")
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"), patch_order="current")
    single = torch.from_numpy(fixture["input"])
    batch = model(torch.cat([single.flip(-1), single]))
    assert np.abs(batch[1:].numpy() - fixture["logits"]).max() <= TOLERANCE
    assert not torch.allclose(batch[:1], batch[1:], atol=1e-2)


@pytest.mark.parametrize("height,width", [(20, 33), (14, 14), (5, 3)])
def test_seam_windows_are_the_masked_ones_and_attention_matches_the_full_mask(height, width):
    """Shifted windows: only the last row and column of windows have mask entries, and
    attention with the shared bias plus seam windows redone equals full-mask attention."""
    window, shift = 7, 3
    layout = window_layout(height, width, window, shift, torch.device("cpu"))
    masked = layout.mask.flatten(1).ne(0).any(dim=1)
    assert torch.equal(layout.seam_windows, masked.nonzero().flatten())
    grid_w = -(-width // window)
    rows, cols = layout.seam_windows // grid_w, layout.seam_windows % grid_w
    grid_h = -(-height // window)
    assert bool(((rows == grid_h - 1) | (cols == grid_w - 1)).all())
    attention = WindowAttention(16, window, num_heads=2).eval()
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()
    n_windows = layout.mask.shape[0]
    for batch in (1, 2):
        x = torch.randn(batch * n_windows, window * window, 16)
        seams = (layout.seam_windows + n_windows * torch.arange(batch)[:, None]).reshape(-1)
        with torch.no_grad():
            full = attention(x, layout.mask)
            split = attention(x, layout.seam_mask.repeat(batch, 1, 1), seams)
        # Per window the same terms reach the same kernel (a zero mask adds exactly nothing):
        # equal here; a kernel that blocks a batch of windows differently may reorder the
        # softmax sums, a few float32 ulps of the output's scale.
        assert torch.allclose(split, full, rtol=0, atol=8 * EPS32 * float(full.abs().max()))


def _random_block(shift: int) -> SwinBlock:
    torch.manual_seed(shift)
    block = SwinBlock(16, num_heads=2, window=7, shift=shift, mlp_ratio=2.0).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
        for norm in (block.norm1, block.norm2):
            norm.weight.normal_(1, 0.2)
            norm.bias.normal_(0, 0.2)
    return block


@pytest.mark.parametrize("height,width,batch", [(20, 33, 2), (14, 14, 1), (5, 3, 3)])
@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("rows", [49, 150, None])
def test_swin_block_in_chunks_equals_pad_roll_partition_form(height, width, batch, shift, rows):
    """The CPU path (windows a chunk at a time, MLP a chunk of rows at a time, padding and seams
    per chunk, a batch as one index) computes the plain padded-window block."""
    block = _random_block(shift)
    x = torch.randn(batch, height * width, 16)
    chunks = window_chunks(height, width, 7, shift, x.device, batch, rows)
    windows = batch * -(-height // 7) * -(-width // 7)
    assert len(chunks) == (1 if rows is None else -(-windows // max(1, rows // 49)))
    with torch.no_grad():
        chunked = block(x, chunks, rows)
        reference = block.forward_padded(x, height, width)
    # The same terms per window and token; kernels that block a batch of windows differently
    # may reorder the softmax and product sums: a few float32 ulps of the output's scale.
    assert torch.allclose(chunked, reference, rtol=0, atol=16 * EPS32 * float(reference.abs().max()))


def test_swin_block_in_chunks_trains_like_the_plain_form():
    block = _random_block(3).train()
    x = torch.randn(2, 20 * 33, 16, requires_grad=True)
    chunks = window_chunks(20, 33, 7, 3, x.device, 2, 100)
    block(x, chunks, 100).square().sum().backward()
    chunked = x.grad.clone(), block.mlp.fc1.weight.grad.clone()
    x.grad = None
    block.zero_grad()
    block.forward_padded(x, 20, 33).square().sum().backward()
    # Forward values agree to a few float32 ulps (the test above); backward through LayerNorm,
    # softmax and GELU scales those by at most the gradients' own magnitude, so 1e-4 of it
    # leaves room, while a lost window or an overwritten chunk moves gradients at O(1).
    for got, expected in zip(chunked, (x.grad, block.mlp.fc1.weight.grad)):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
