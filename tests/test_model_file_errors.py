"""Errors about model files name them relative to their model folder, never by the server's
absolute path: a server started with --listen shows them to every HTTP client (issue 23)."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from tests.comfyui_inprocess import import_pack
from tests.synthetic import synthetic_float_weights

pack = import_pack()
model_files = pack.nodes.model_files
core = pack.birefnet_core
import folder_paths  # noqa: E402  (importable once the pack is)


@pytest.fixture()
def model_dirs(tmp_path, monkeypatch):
    """models/birefnet with a truncated checkpoint in a sub-folder; models/background_removal."""
    ours, theirs = tmp_path / "models" / "birefnet", tmp_path / "models" / "background_removal"
    (ours / "fine-tunes").mkdir(parents=True)
    theirs.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in synthetic_float_weights("pvt_v2_b0").items()},
              ours / "whole.safetensors")
    data = (ours / "whole.safetensors").read_bytes()
    (ours / "fine-tunes" / "broken.safetensors").write_bytes(data[: len(data) // 3])
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "birefnet",
                        ([str(ours)], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "background_removal",
                        ([str(theirs)], {".safetensors"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ours, theirs


def test_files_are_named_relative_to_their_model_folder(model_dirs, tmp_path):
    ours, theirs = model_dirs
    assert model_files.public_name(str(ours / "fine-tunes" / "broken.safetensors")) == \
        "birefnet/fine-tunes/broken.safetensors"
    assert model_files.public_name(str(theirs / "x.safetensors")) == \
        "background_removal/x.safetensors"
    assert model_files.public_name(str(tmp_path / "elsewhere.pth")) == "elsewhere.pth"


def test_an_unreadable_checkpoint_is_named_without_the_server_path(model_dirs, tmp_path):
    """The Loader reports load_model's error through without_server_paths."""
    broken = model_files.resolve_model("fine-tunes/broken.safetensors", "BiRefNetLoader").path
    with pytest.raises(core.CheckpointError) as error:
        core.load_model(broken)
    assert str(tmp_path) in str(error.value)            # the library names the full path...
    public = model_files.without_server_paths(str(error.value), broken)
    assert "birefnet/fine-tunes/broken.safetensors cannot be read" in public
    assert "truncated or corrupt" in public and str(tmp_path) not in public   # ...nodes do not


def test_missing_and_undownloadable_models_are_named_without_server_paths(model_dirs, tmp_path):
    with pytest.raises(Exception) as missing:
        model_files.resolve_model("absent.safetensors", "BiRefNetLoader")
    with pytest.raises(core.ModelNotAvailableError) as offline:
        model_files.resolve_model("BiRefNet_lite", "BiRefNetLoader")
    for error in (missing, offline):
        assert str(error.value).startswith("BiRefNetLoader: ")
        assert str(tmp_path) not in str(error.value)
    assert "models/birefnet" in str(missing.value)
    assert "birefnet/BiRefNet_lite.safetensors" in str(offline.value)     # where to put it
    assert "BiRefNet_lite/resolve/main/model.safetensors" in str(offline.value)  # what to fetch


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read ComfyUI's comfy/background_removal/birefnet.json"),
    ("[1, 2]", "birefnet.json is not a JSON object"),
    (json.dumps({"image_mean": [0.5]}), "birefnet.json: image_mean must be a list of 3"),
    (json.dumps({"image_size": 100}), "birefnet.json: image_std must be positive"),
])
def test_core_config_errors_do_not_carry_its_path(tmp_path, monkeypatch, content, message):
    config = tmp_path / "server" / "comfy" / "background_removal" / "birefnet.json"
    config.parent.mkdir(parents=True)
    config.write_text(content, encoding="utf-8")
    monkeypatch.setattr(model_files, "core_config_path", lambda: str(config))
    with pytest.raises(Exception, match="BiRefNetLoader: ") as error:
        model_files.core_feed()
    assert message in str(error.value) and str(tmp_path) not in str(error.value)
