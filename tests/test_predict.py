"""predict: any image size in, a soft mask of the same size out; bad input is named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import birefnet_core
from birefnet_core import InputError
from birefnet_core.inference.predict import resize_images
from tests.synthetic import parity_fixture, synthetic_float_weights


@pytest.fixture(scope="module")
def model():
    return birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), resolution=64)


def _image(height, width, channels=3, seed=0):
    return torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(seed))


def test_mask_has_input_size_and_range(model):
    masks = birefnet_core.predict(model, _image(50, 83))
    assert masks.shape == (2, 1, 50, 83) and masks.dtype == torch.float32
    assert masks.min() >= 0 and masks.max() <= 1
    assert masks.std() > 0


def test_matches_manual_pipeline(model):
    """Resize to the working size, ImageNet-normalise, run, sigmoid, resize back."""
    images = _image(96, 64)
    x = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear",
                                        align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = torch.sigmoid(model((x - mean) / std))
    expected = torch.nn.functional.interpolate(probabilities, size=(96, 64), mode="bilinear",
                                               align_corners=False)
    # the same float32 operations in the same order: a few ulps of masks <= 1 at most
    assert torch.allclose(birefnet_core.predict(model, images), expected, atol=1e-6)


def test_resolution_argument_changes_the_working_size(model):
    images = _image(64, 64)
    default = birefnet_core.predict(model, images)
    larger = birefnet_core.predict(model, images, resolution=(96, 128))
    assert default.shape == larger.shape
    assert not torch.allclose(default, larger, atol=1e-3)


def test_one_and_four_channel_images(model):
    rgb = _image(40, 40)
    gray = rgb[:, :1]
    rgba = torch.cat([rgb, torch.zeros(2, 1, 40, 40)], dim=1)
    assert torch.equal(birefnet_core.predict(model, rgba), birefnet_core.predict(model, rgb))
    assert torch.allclose(birefnet_core.predict(model, gray),
                          birefnet_core.predict(model, gray.expand(-1, 3, -1, -1)))


def test_output_is_an_ordinary_tensor(model):
    masks = birefnet_core.predict(model, _image(32, 32))
    masks.mul_(0.5)                                   # inference tensors would refuse this
    assert not masks.is_inference()


def test_bfloat16_model_predicts_close_to_float32():
    """predict with a bfloat16 model against a float32 model of the same rounded weights (so
    the weights' rounding is not measured). As in test_loading: logit errors of bfloat16
    arithmetic measure about 2 eps * max|logit|, 16 eps is allowed, and the mask moves by at most
    a quarter of it; the mask's bilinear resize back is a convex combination, which keeps the
    bound, and max|logit| is read off the float32 masks."""
    weights = synthetic_float_weights("pvt_v2_b0")
    fixture = torch.from_numpy(parity_fixture("pvt_v2_b0_256x256")["image"]).permute(2, 0, 1)[None]
    rounded = {k: v.bfloat16().float() for k, v in weights.items()}
    full = birefnet_core.predict(birefnet_core.load_model(rounded, resolution=256), fixture)
    half = birefnet_core.predict(birefnet_core.load_model(weights, resolution=256, dtype="bf16"),
                                 fixture)
    assert half.dtype == torch.float32
    logit_scale = torch.logit(full.double()).abs().max()
    assert (full - half).abs().max() <= 16 * torch.finfo(torch.bfloat16).eps * logit_scale / 4


@pytest.mark.parametrize("bad,message", [
    (torch.rand(3, 32, 32), "shape"),
    (torch.rand(0, 3, 32, 32), "empty"),
    (torch.rand(1, 2, 32, 32), "channels"),
    ((torch.rand(1, 3, 32, 32) * 255).to(torch.uint8), "float"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (np.zeros((1, 3, 32, 32), np.float32), "Tensor"),
])
def test_bad_images_are_named(model, bad, message):
    with pytest.raises(InputError, match=message):
        birefnet_core.predict(model, bad)


@pytest.mark.parametrize("resolution", [100, (64, 50), 0, -32, "64"])
def test_bad_resolution_is_named(model, resolution):
    with pytest.raises(InputError, match="multiple of 32"):
        birefnet_core.predict(model, _image(32, 32), resolution=resolution)


@pytest.mark.parametrize("size", [(256, 256), (1024, 1024)])
def test_preprocessing_matches_pil_bilinear(size):
    """The model cards resize PIL images with bilinear filtering (antialiased)."""
    rng = np.random.default_rng(1)
    base = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    photo = np.asarray(Image.fromarray(base).resize((1333, 801), Image.BICUBIC))
    pil = np.asarray(Image.fromarray(photo).resize(size[::-1], Image.BILINEAR)) / 255.0
    tensor = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    ours = resize_images(tensor, size)[0].permute(1, 2, 0).numpy()
    # PIL resamples in two passes and rounds to 8 bits after each (half a level each, one level
    # in all; 0.9988 levels is seen); 0.01 level is far above float32 rounding (~3e-5 levels)
    assert np.abs(ours - pil).max() <= 1.01 / 255
