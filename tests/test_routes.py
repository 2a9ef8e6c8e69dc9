"""GET /birefnet/models's answer (nodes/routes.py) computed in-process, with a real ComfyUI
imported (the end-to-end test asks a running server): files on disk are named relative to
their model folder, known models not on disk say where they would be downloaded to, and no
absolute server path appears anywhere in the answer."""
from __future__ import annotations

import importlib
import json

import pytest

from tests.comfyui_inprocess import import_pack


@pytest.fixture()
def model_status(tmp_path, monkeypatch):
    pack = import_pack()
    import folder_paths

    ours, theirs = tmp_path / "birefnet", tmp_path / "background_removal"
    ours.mkdir()
    theirs.mkdir()
    (ours / "mine.safetensors").write_bytes(b"not read by the route")
    (theirs / "birefnet.safetensors").write_bytes(b"not read by the route")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "birefnet",
                        ([str(ours)], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "background_removal",
                        ([str(theirs)], {".safetensors"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # ComfyUI caches file lists per folder name and stats the cached folders on the next call:
    # an earlier test's birefnet folder is gone by now (tmp_path is removed after each test).
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return importlib.import_module(f"{pack.__name__}.nodes.routes").model_status


def test_model_status_names_files_relative_to_their_folders(model_status, tmp_path):
    entries = {entry["name"]: entry for entry in model_status()}
    assert entries["mine.safetensors"] == {"name": "mine.safetensors", "present": True,
                                           "folder": "birefnet",
                                           "path": "birefnet/mine.safetensors"}
    core = entries["background_removal/birefnet.safetensors"]
    assert core["present"] and core["path"] == "background_removal/birefnet.safetensors"
    download = entries["BiRefNet_HR"]
    assert not download["present"] and download["download"]["repo"] == "ZhengPeng7/BiRefNet_HR"
    assert download["download"]["to"].startswith("birefnet/"), download
    assert str(tmp_path) not in json.dumps(list(entries.values())), \
        "the route must not show server paths"
