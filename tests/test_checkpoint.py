"""Tests of birefnet_core.weights.checkpoint with real files in every format BiRefNet ships in."""
from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from birefnet_core.errors import CheckpointError
from birefnet_core.weights.checkpoint import (
    cast_floats,
    check_state_dict,
    describe_state_dict,
    read_checkpoint,
    remap_state_dict,
)
from tests.synthetic import BACKBONES, manifest, synthetic_state_dict

SMALL = "pvt_v2_b0"
StateDict = dict[str, torch.Tensor]
NEW_DECODER_PARTS = ("decoder.ipt_blk5.", "decoder.gdt_convs_4.", "decoder.gdt_convs_attn_4.",
                     "decoder.gdt_convs_pred_4.")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return synthetic_state_dict(SMALL)


def expected_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    return {key: tuple(spec["shape"]) for key, spec in manifest(backbone)["keys"].items()}


def meta_state(backbone: str) -> dict[str, torch.Tensor]:
    """Shapes-only state dict (no memory) for tests that never look at values."""
    return {key: torch.empty(shape, device="meta") for key, shape in
            expected_shapes(backbone).items()}


def pre_may_2024(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.startswith(NEW_DECODER_PARTS)}


# ----------------------------------------------------------------------------- file formats

def write_safetensors(sd: StateDict, path: Path) -> None:
    save_file(sd, str(path))


def write_pth(sd: StateDict, path: Path) -> None:
    torch.save(sd, path)


def write_prefixed_pth(sd: StateDict, path: Path) -> None:
    torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, path)


def write_wrapped_pth(sd: StateDict, path: Path) -> None:
    torch.save({"model": sd, "epoch": 3}, path)


def write_nested_pth(sd: StateDict, path: Path) -> None:
    optimizer = {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save({"state_dict": {"model_state_dict": sd}, "optimizer": optimizer}, path)


def write_fp16_pth(sd: StateDict, path: Path) -> None:
    torch.save(cast_floats(sd, torch.float16), path)


def write_bf16_safetensors(sd: StateDict, path: Path) -> None:
    save_file(cast_floats(sd, torch.bfloat16), str(path))


def write_legacy_pth(sd: StateDict, path: Path) -> None:
    torch.save(sd, path, _use_new_zipfile_serialization=False)


WRITERS: dict[str, tuple[Callable[[StateDict, Path], None], str]] = {
    "hf_safetensors": (write_safetensors, "model.safetensors"),
    "plain_pth": (write_pth, "BiRefNet-general.pth"),
    "prefixed_pth": (write_prefixed_pth, "compiled.pth"),
    "wrapped_pth": (write_wrapped_pth, "epoch_3.pth"),
    "nested_pth": (write_nested_pth, "trainer.ckpt"),
    "fp16_pth": (write_fp16_pth, "half.pt"),
    "bf16_safetensors": (write_bf16_safetensors, "bf16.safetensors"),
    "legacy_pth": (write_legacy_pth, "legacy.pth"),
    "safetensors_unknown_ext": (write_safetensors, "weights.dat"),
    "zip_pth_no_ext": (write_pth, "weights"),
    "legacy_as_bin": (write_legacy_pth, "pytorch_model.bin"),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_reads_back_to_the_same_weights(fmt, state, tmp_path):
    writer, name = WRITERS[fmt]
    path = tmp_path / name
    writer(state, path)
    loaded = remap_state_dict(read_checkpoint(path))
    assert sorted(loaded) == sorted(state)  # safetensors stores its own order
    check_state_dict(expected_shapes(SMALL), loaded)
    # A file written in half precision holds the weights rounded to that dtype; reading it
    # back must give exactly those values (IEEE rounding is the same on every machine).
    stored = {"fp16_pth": torch.float16, "bf16_safetensors": torch.bfloat16}.get(fmt)
    for key, original in state.items():
        got = loaded[key]
        assert got.device.type == "cpu"
        if original.is_floating_point():
            written = original if stored is None else original.to(stored)
            assert torch.equal(got.float(), written.float()), key
        else:
            assert got.dtype == original.dtype and torch.equal(got, original)


def test_low_precision_files_keep_their_dtype(state, tmp_path):
    write_fp16_pth(state, tmp_path / "half.pth")
    write_bf16_safetensors(state, tmp_path / "bf16.safetensors")
    half = read_checkpoint(tmp_path / "half.pth")
    bf16 = read_checkpoint(tmp_path / "bf16.safetensors")
    assert half["bb.patch_embed1.proj.weight"].dtype == torch.float16
    assert bf16["bb.patch_embed1.proj.weight"].dtype == torch.bfloat16
    int_key = next(k for k, v in state.items() if not v.is_floating_point())
    assert half[int_key].dtype == bf16[int_key].dtype == torch.int64


def test_reading_leaves_the_folder_untouched(state, tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(state, path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    read_checkpoint(str(path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ----------------------------------------------------------------------------- broken files

@pytest.mark.parametrize("fmt", ["hf_safetensors", "plain_pth", "legacy_pth", "bf16_safetensors"])
def test_truncated_files_are_reported_as_corrupt(fmt, state, tmp_path):
    writer, name = WRITERS[fmt]
    full = tmp_path / f"full_{name}"
    writer(state, full)
    data = full.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(cut)
    message = str(info.value)
    assert name in message
    assert "truncated or corrupt" in message and "download it again" in message
    assert f"{len(data) // 2} bytes" in message


@pytest.mark.parametrize("name", ["model.pth", "model.safetensors", "model.weights"])
def test_random_bytes_are_reported_as_corrupt(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(bytes(range(7, 256)) * 40)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_random_bytes_that_start_like_a_pickle_are_corrupt_not_code(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"\x80\x02" + bytes([36, 200, 17, 99]) * 100)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "truncated or corrupt" in str(info.value)
    assert "run code" not in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\).*download it again"):
        read_checkpoint(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nowhere.pth"):
        read_checkpoint(tmp_path / "nowhere.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


def test_file_without_tensors(tmp_path):
    path = tmp_path / "stats.pth"
    torch.save({"epoch": 3, "model": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "holds no tensors" in str(info.value) and "'epoch'" in str(info.value)


def test_download_mistakes_are_named(tmp_path):
    pointer = tmp_path / "model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 9\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        read_checkpoint(pointer)
    page = tmp_path / "BiRefNet.pth"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(CheckpointError, match="web page"):
        read_checkpoint(page)


class _RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'echo pwned > "{self.marker}"',))


class _OpensFileForWriting:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("payload, global_name", [(_RunsShellCommand, "system"),
                                                  (_OpensFileForWriting, "open")])
def test_malicious_pickle_is_refused_without_running(payload, global_name, legacy, state,
                                                     tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "model.pth"
    small = dict(list(state.items())[:3])
    torch.save({"model": small, "hook": payload(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert not marker.exists()
    assert "model.pth" in message and "run code" in message
    assert global_name in message
    assert "plain tensors" in message and ".safetensors" in message


# ----------------------------------------------------------------------------- remapping

@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.",
                                    "_orig_mod.module.", "module.module.", ""])
def test_remap_strips_wrapper_prefixes(prefix):
    source = {f"{prefix}bb.x": torch.ones(1), f"{prefix}decoder.y": torch.zeros(2)}
    remapped = remap_state_dict(source)
    assert list(remapped) == ["bb.x", "decoder.y"]
    assert remapped["bb.x"] is source[f"{prefix}bb.x"]
    assert list(source) == [f"{prefix}bb.x", f"{prefix}decoder.y"]


@pytest.mark.parametrize("prefix", ["birefnet.", "model.", "module.birefnet.",
                                    "model.module.", "model.birefnet."])
def test_remap_strips_whole_dict_prefix_of_birefnet(prefix):
    source = {f"{prefix}{k}": torch.ones(1) for k in ("bb.a", "squeeze_module.b", "decoder.c")}
    assert list(remap_state_dict(source)) == ["bb.a", "squeeze_module.b", "decoder.c"]


def test_remap_keeps_prefixes_that_are_not_birefnet_wrappers():
    sd_keys = {"model.diffusion_model.in.weight": torch.ones(1),
               "model.diffusion_model.out.weight": torch.ones(1)}
    assert list(remap_state_dict(sd_keys)) == list(sd_keys)
    partial = {"model.bb.a": torch.ones(1), "decoder.c": torch.ones(1)}
    assert list(remap_state_dict(partial)) == ["model.bb.a", "decoder.c"]
    other = {"bb.a": torch.ones(1), "head.fc": torch.ones(1)}
    assert list(remap_state_dict(other)) == ["bb.a", "head.fc"]


@pytest.mark.parametrize("keys", [("module.bb.x", "bb.x"), ("_orig_mod.bb.x", "module.bb.x")])
def test_remap_refuses_colliding_keys(keys):
    with pytest.raises(CheckpointError) as info:
        remap_state_dict({key: torch.ones(1) for key in keys})
    assert "'bb.x'" in str(info.value) and all(repr(k) in str(info.value) for k in keys)


# ----------------------------------------------------------------------------- descriptions

@pytest.mark.parametrize("backbone, label", [
    ("swin_v1_t", "Swin-T"), ("swin_v1_s", "Swin-S"), ("swin_v1_b", "Swin-B"),
    ("swin_v1_l", "Swin-L"), ("pvt_v2_b0", "PVT-v2-b0"), ("pvt_v2_b1", "PVT-v2-b1"),
    ("pvt_v2_b2", "PVT-v2-b2"), ("pvt_v2_b5", "PVT-v2-b5")])
def test_describe_current_birefnet_names_its_backbone(backbone, label):
    assert backbone in BACKBONES
    state_dict = meta_state(backbone)
    text = describe_state_dict(state_dict)
    assert text.startswith("a BiRefNet checkpoint") and f"{label} backbone" in text
    assert f"{len(state_dict)} tensors" in text


@pytest.mark.parametrize("backbone", ["swin_v1_t", "pvt_v2_b0"])
def test_describe_pre_may_2024_birefnet(backbone):
    state_dict = pre_may_2024(meta_state(backbone))
    text = describe_state_dict(state_dict)
    assert "before May 2024" in text and "download the current file" in text
    assert f"{len(state_dict)} tensors" in text


def _keys(*names: str) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(1) for name in names}


@pytest.mark.parametrize("state_dict, words", [
    (_keys("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.x",
           "cond_stage_model.transformer.text_model.y"), "Stable Diffusion checkpoint"),
    (_keys("model.diffusion_model.input_blocks.0.0.weight",
           "conditioner.embedders.0.transformer.text_model.y"), "Stable Diffusion XL"),
    (_keys("encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"), "VAE"),
    (_keys("text_model.encoder.layers.0.mlp.fc1.weight"), "text encoder (CLIP)"),
    (_keys("lora_unet_down_blocks_0.alpha", "lora_te_text_model.lora_up.weight"), "LoRA"),
    (_keys("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"), "diffusion UNet"),
])
def test_describe_foreign_checkpoints(state_dict, words):
    text = describe_state_dict(state_dict)
    assert words in text and "not a BiRefNet" in text
    assert f"{len(state_dict)} tensor" in text


@pytest.mark.parametrize("backbone, label", [("swin_v1_t", "Swin-T"), ("pvt_v2_b0", "PVT-v2-b0")])
def test_describe_bare_imagenet_backbone(backbone, label):
    bare = {k[len("bb."):]: v for k, v in meta_state(backbone).items() if k.startswith("bb.")}
    bare["head.weight"] = torch.empty(1000, 8, device="meta")
    text = describe_state_dict(bare)
    assert f"bare {label}" in text and "not a BiRefNet" in text


def test_describe_backbone_only_and_unknown_and_empty():
    backbone_only = {k: v for k, v in meta_state("swin_v1_t").items() if k.startswith("bb.")}
    assert "only the backbone" in describe_state_dict(backbone_only)
    unknown = _keys("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    text = describe_state_dict(unknown)
    assert "not a BiRefNet checkpoint" in text and "4 tensors" in text
    assert "'fc1.weight', 'fc1.bias', 'fc2.weight'" in text and "fc2.bias" not in text
    assert "no tensors" in describe_state_dict({})


# ----------------------------------------------------------------------------- checking

def test_check_state_dict_accepts_exact_match_and_torch_sizes():
    expected = {k: torch.Size(v) for k, v in expected_shapes("swin_v1_t").items()}
    check_state_dict(expected, meta_state("swin_v1_t"))


def test_check_state_dict_reports_missing_keys_of_early_release():
    expected = expected_shapes("swin_v1_t")
    state_dict = pre_may_2024(meta_state("swin_v1_t"))
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, state_dict, source="old.pth")
    message = str(info.value)
    missing = [k for k in expected if k not in state_dict]
    assert message.startswith("Cannot load old.pth, it does not fit this model")
    assert f"{len(missing)} missing keys" in message
    assert all(k in message for k in missing[:5]) and missing[5] not in message
    assert "unexpected" not in message and "another shape" not in message
    assert "It looks like: an early BiRefNet release from before May 2024" in message


def test_check_state_dict_reports_unexpected_and_mismatched_shapes():
    expected = expected_shapes("swin_v1_t")
    state_dict = meta_state("swin_v1_t")
    state_dict["decoder.extra.weight"] = torch.empty(3, device="meta")
    state_dict["bb.patch_embed.proj.weight"] = torch.empty(128, 3, 4, 4, device="meta")
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, state_dict)
    message = str(info.value)
    assert message.startswith("Cannot load the checkpoint, it does not fit")
    assert "1 unexpected key (decoder.extra.weight)" in message
    assert "1 key of another shape" in message
    assert "bb.patch_embed.proj.weight: file (128, 3, 4, 4), model (96, 3, 4, 4)" in message
    assert "missing" not in message
    assert "It looks like: a BiRefNet checkpoint with a Swin-B backbone" in message


def test_check_state_dict_describes_the_wrong_backbone():
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected_shapes("swin_v1_t"), meta_state("pvt_v2_b0"))
    message = str(info.value)
    assert "missing keys" in message and "unexpected keys" in message
    assert "PVT-v2-b0 backbone" in message and ", ..." in message


# ----------------------------------------------------------------------------- dtypes

def test_cast_floats_casts_only_floating_tensors():
    source = {"w": torch.ones(2, dtype=torch.bfloat16), "h": torch.ones(2, dtype=torch.float16),
              "n": torch.tensor(7), "idx": torch.arange(4, dtype=torch.int32)}
    cast = cast_floats(source, torch.float32)
    assert cast["w"].dtype == cast["h"].dtype == torch.float32
    assert cast["n"] is source["n"] and cast["idx"] is source["idx"]
    assert source["w"].dtype == torch.bfloat16
    assert cast_floats(source, torch.float16)["w"].dtype == torch.float16
    with pytest.raises(ValueError):
        cast_floats(source, torch.int64)
