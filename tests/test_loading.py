"""load_model: every official file format gives the same network; errors say what is wrong."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import birefnet_core
from birefnet_core import CheckpointError
from tests.synthetic import parity_fixture, synthetic_float_weights, synthetic_state_dict

BACKBONE, FIXTURE = "swin_v1_t", "swin_v1_t_256x256"


@pytest.fixture(scope="module")
def weights():
    return synthetic_float_weights(BACKBONE)


@pytest.fixture(scope="module")
def reference(weights):
    fixture = parity_fixture(FIXTURE)
    x = torch.from_numpy(fixture["input"])
    return x, birefnet_core.load_model(weights, patch_order="current")(x)


def _write_formats(weights, folder):
    full = synthetic_state_dict(BACKBONE)        # with integer buffers, as released files
    files = {"hf": folder / "model.safetensors", "wrapped": folder / "ckpt.pth",
             "fp16": folder / "half.pth", "bf16": folder / "bf16.safetensors"}
    save_file({k: v.contiguous() for k, v in weights.items()}, files["hf"])
    torch.save({f"module._orig_mod.{k}": v for k, v in full.items()}, files["wrapped"])
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in full.items()}, files["fp16"])
    save_file({k: v.bfloat16().contiguous() for k, v in weights.items()}, files["bf16"])
    return files


def test_every_file_format_loads_to_the_same_output(weights, reference, tmp_path):
    x, expected = reference
    files = _write_formats(weights, tmp_path)
    outputs = {name: birefnet_core.load_model(path, patch_order="current")(x)
               for name, path in files.items()}
    # Same float32 weights, same forward: only the reading differs, so the outputs agree to
    # float32 rounding of logits of size ~1 (1e-6 is ~10 ulps; in fact they are identical).
    assert (outputs["hf"] - expected).abs().max() <= 1e-6
    assert (outputs["wrapped"] - expected).abs().max() <= 1e-6
    # Half-precision files lose weight precision, not the model: the float32 model loaded from
    # them is the float32 model of the rounded weights (comparing with the unrounded weights
    # would measure the file's precision, not the loading).
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        rounded = {k: v.to(dtype).float() for k, v in weights.items()}
        same_weights = birefnet_core.load_model(rounded, patch_order="current")(x)
        assert (outputs[name] - same_weights).abs().max() <= 1e-6, name
        assert outputs[name].dtype == torch.float32


def test_parity_from_a_safetensors_file(weights, tmp_path):
    fixture = parity_fixture(FIXTURE)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, path)
    logits = birefnet_core.load_model(path, patch_order="current")(torch.from_numpy(fixture["input"]))
    assert np.abs(logits.numpy() - fixture["logits"]).max() <= 1e-4


@pytest.mark.parametrize("filename,order", [
    ("BiRefNet.safetensors", "legacy"), ("BiRefNet_HR.safetensors", "current"),
    ("BiRefNet_lite-2K.safetensors", "legacy"), ("BiRefNet_dynamic.safetensors", "current"),
    ("RMBG-2.0.safetensors", "legacy"), ("BiRefNet-general-epoch_244.pth", "legacy"),
    ("my_finetune.safetensors", "current")])
def test_auto_patch_order_follows_the_file(weights, tmp_path, caplog, filename, order):
    path = tmp_path / filename
    save_file({k: v.contiguous() for k, v in weights.items()}, path)
    with caplog.at_level(logging.INFO, logger="birefnet_core"):
        model = birefnet_core.load_model(path)
    assert model.patch_order == order and model.info.patch_order == order
    assert any("patch order" in r.getMessage() for r in caplog.records)
    assert birefnet_core.load_model(path, patch_order="legacy").patch_order == "legacy"


def test_hugging_face_cache_path_is_recognised(weights, tmp_path):
    folder = tmp_path / "models--ZhengPeng7--BiRefNet_HR" / "snapshots" / "abc"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")
    model = birefnet_core.load_model(folder / "model.safetensors")
    assert model.info.known_model == "BiRefNet_HR"
    assert model.info.resolution == (2048, 2048) and model.patch_order == "current"


def test_model_info_and_eval_state(weights):
    model = birefnet_core.load_model(weights, resolution=(512, 768), normalization="none")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.info.resolution == (512, 768) and model.info.mean == (0.0, 0.0, 0.0)
    assert model.info.variant == BACKBONE and model.info.source == "<state dict>"


def test_bfloat16_model_runs_close_to_float32(weights, reference):
    """The bfloat16 forward against the float32 forward of the same rounded weights and input,
    so that only the arithmetic differs. Every activation is rounded to eps/2 of its size and
    the normalisations keep activations near unit scale, so logit errors add up over depth
    rather than multiply: measured 1.8 eps * max|logit| here (AVX-512 and AVX2); 16 eps is
    allowed. The mask moves by at most a quarter of that (sigmoid' <= 1/4)."""
    x = reference[0].bfloat16()
    model = birefnet_core.load_model(weights, dtype="bf16", patch_order="current")
    assert next(model.parameters()).dtype == torch.bfloat16
    out = model(x).float()
    rounded = {k: v.bfloat16().float() for k, v in weights.items()}
    expected = birefnet_core.load_model(rounded, patch_order="current")(x.float())
    mask_difference = (torch.sigmoid(out) - torch.sigmoid(expected)).abs()
    logit_scale = expected.abs().max()
    assert mask_difference.max() <= 16 * torch.finfo(torch.bfloat16).eps * logit_scale / 4


def test_missing_keys_name_an_early_release(weights):
    early = {k: v for k, v in weights.items()
             if not k.startswith(("decoder.ipt_blk5.", "decoder.gdt_convs_4.",
                                  "decoder.gdt_convs_attn_4.", "decoder.gdt_convs_pred_4."))}
    with pytest.raises(CheckpointError) as error:
        birefnet_core.load_model(early)
    message = str(error.value)
    assert "decoder.ipt_blk5" in message and "early" in message.lower()


def test_wrong_shape_is_refused_not_ignored(weights):
    broken = dict(weights)
    broken["decoder.conv_out1.0.weight"] = torch.zeros(1, 7, 1, 1)
    with pytest.raises(CheckpointError, match="conv_out1"):
        birefnet_core.load_model(broken)


def test_stable_diffusion_file_is_named_as_such(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="(?i)stable diffusion"):
        birefnet_core.load_model(path)


def test_nan_weights_are_refused(weights):
    damaged = dict(weights)
    damaged["decoder.conv_out1.0.bias"] = torch.tensor([float("nan")])
    with pytest.raises(CheckpointError, match="NaN"):
        birefnet_core.load_model(damaged)


def test_bad_options_are_refused(weights):
    with pytest.raises(ValueError, match="patch_order"):
        birefnet_core.load_model(weights, patch_order="sideways")
    with pytest.raises(ValueError, match="dtype"):
        birefnet_core.load_model(weights, dtype="int4")
