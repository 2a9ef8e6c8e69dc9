"""Files of ComfyUI's ``models/background_removal`` folder, fed the way the running core feeds them.

ComfyUI 0.21.0 (8 May 2026, PR #12747) added its own BiRefNet nodes (Load Background Removal
Model -> Remove Background). They read mean, std and size from
``comfy/background_removal/birefnet.json``: 0.21.0 ships mean 0 / std 1 (the images go in
un-normalised), later core versions ImageNet mean/std. Core's port runs the legacy patch order.
The Loader follows whichever ``birefnet.json`` the running ComfyUI has, and ImageNet where it
has none (the 2024 ComfyUI CI uses).

The first tests pin that convention with the node objects (any ComfyUI). The last one runs
core's Remove Background and our Segment side by side in a ComfyUI that has core's nodes
(``COMFYUI_DIR`` pointing at 0.21.0 or later), once with the tree's own ``birefnet.json`` and
once with that file edited to the ImageNet values; elsewhere it is skipped, saying why.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.torch import save_file

from tests.comfyui_inprocess import import_pack
from tests.synthetic import synthetic_float_weights

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# comfy/background_removal/birefnet.json as ComfyUI 0.21.0 ships it (fork snapshot of
# 12 May 2026) and as later core versions ship it (Comfy-Org/ComfyUI master).
CORE_0_21_0 = {"model_type": "birefnet", "image_std": [1.0, 1.0, 1.0],
               "image_mean": [0.0, 0.0, 0.0], "image_size": 1024, "resize_to_original": True}
CORE_LATER = {**CORE_0_21_0, "image_std": list(IMAGENET[1]), "image_mean": list(IMAGENET[0])}
AUTO = dict(device="cpu", dtype="fp32", patch_order="auto", input_normalization="auto")
CORE_FILE = "background_removal/birefnet.safetensors"


@pytest.fixture(scope="module")
def nodes():
    """The pack's nodes with a ComfyUI imported in this process (the side-by-side test at the
    end needs none: it talks to a server, whose interpreter may be another)."""
    return import_pack().nodes


@pytest.fixture()
def core_json(nodes, tmp_path, monkeypatch):
    """A background_removal file and a birefnet.json standing in for the running ComfyUI's;
    call it with the JSON's content (None: this ComfyUI has no such file)."""
    import folder_paths

    weights = {k: v.contiguous() for k, v in synthetic_float_weights("pvt_v2_b0").items()}
    folder = tmp_path / "background_removal"
    folder.mkdir()
    save_file(weights, folder / "birefnet.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "background_removal",
                        ([str(folder)], {".safetensors"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def use(content):
        path = tmp_path / "comfy" / "background_removal" / "birefnet.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.write_text(json.dumps(content), encoding="utf-8")
        elif content is not None:
            path.write_text(content, encoding="utf-8")
        found = str(path) if content is not None else None
        monkeypatch.setattr(nodes.model_files, "core_config_path", lambda: found)
        return path
    return use


def test_birefnet_json_is_found_through_the_imported_comfy_package(nodes, tmp_path, monkeypatch):
    import comfy

    own = [os.path.join(folder, "background_removal", "birefnet.json")
           for folder in comfy.__path__]
    own = next((path for path in own if os.path.isfile(path)), None)
    extra = tmp_path / "background_removal" / "birefnet.json"
    extra.parent.mkdir()
    extra.write_text(json.dumps(CORE_LATER), encoding="utf-8")
    monkeypatch.setattr(comfy, "__path__", [*comfy.__path__, str(tmp_path)])
    # The running ComfyUI's own file wins; a tree without one (2024) falls through to ours.
    assert nodes.model_files.core_config_path() == (own or str(extra))


def test_core_0_21_0_json_feeds_un_normalised_in_legacy_order(nodes, core_json):
    # ComfyUI 0.21.0's birefnet.json: mean 0, std 1, 1024 -- what its Remove Background does.
    core_json(CORE_0_21_0)
    patcher, info = nodes.BiRefNetLoader().load(CORE_FILE, **AUTO)
    model = patcher.model
    assert (model.info.mean, model.info.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert model.patch_order == "legacy" and model.info.resolution == (1024, 1024)
    assert "mean (0, 0, 0) std (1, 1, 1) from ComfyUI's birefnet.json" in info
    assert "patch order legacy" in info


def test_later_core_json_feeds_imagenet(nodes, core_json):
    # Later core versions fixed the feed: ImageNet mean/std in the same file.
    core_json(CORE_LATER)
    patcher, info = nodes.BiRefNetLoader().load(CORE_FILE, **AUTO)
    assert (patcher.model.info.mean, patcher.model.info.std) == IMAGENET
    assert patcher.model.patch_order == "legacy"
    assert "mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)" in info


def test_no_core_json_feeds_imagenet_and_says_so(nodes, core_json):
    # A ComfyUI without core's BiRefNet nodes (before 0.21.0): the files' own training feed.
    core_json(None)
    patcher, info = nodes.BiRefNetLoader().load(CORE_FILE, **AUTO)
    assert (patcher.model.info.mean, patcher.model.info.std) == IMAGENET
    assert patcher.model.patch_order == "legacy"
    assert "imagenet (this ComfyUI has no birefnet.json of its own)" in info


def test_core_json_size_and_missing_keys_follow_core(nodes, core_json):
    # Core's node uses image_size for the square working size and defaults missing keys to
    # mean 0 / std 1 / 1024 (BackgroundRemovalModel in 0.21.0 and later).
    core_json({"model_type": "birefnet", "image_size": 768})
    patcher, _ = nodes.BiRefNetLoader().load(CORE_FILE, **AUTO)
    assert patcher.model.info.resolution == (768, 768)
    assert (patcher.model.info.mean, patcher.model.info.std) == ((0.0,) * 3, (1.0,) * 3)


def test_choices_override_the_core_feed(nodes, core_json):
    core_json(CORE_0_21_0)
    loader = nodes.BiRefNetLoader()
    imagenet, info = loader.load(CORE_FILE, device="cpu", dtype="fp32", patch_order="current",
                                 input_normalization="imagenet")
    assert (imagenet.model.info.mean, imagenet.model.info.std) == IMAGENET
    assert imagenet.model.patch_order == "current" and "input normalisation imagenet," in info
    core_json(CORE_LATER)
    none, info = loader.load(CORE_FILE, device="cpu", dtype="fp32", patch_order="auto",
                             input_normalization="none")
    assert none.model.info.mean == (0.0, 0.0, 0.0) and "input normalisation none," in info


@pytest.mark.parametrize("content, complaint", [
    ("{not json", "cannot read"),
    (json.dumps({"image_mean": [0.5, 0.5]}), "image_mean must be a list of 3 numbers"),
    (json.dumps({"image_std": [0.0, 1.0, 1.0]}), "image_std must be positive"),
    (json.dumps({"image_size": 1000}), "multiple of 32"),
])
def test_a_damaged_core_json_is_an_error_naming_it(nodes, core_json, content, complaint):
    path = core_json(content)
    with pytest.raises(ValueError) as error:
        nodes.BiRefNetLoader().load(CORE_FILE, **AUTO)
    message = str(error.value)
    assert message.startswith("BiRefNetLoader:")
    assert "comfy/background_removal/birefnet.json" in message
    assert str(path.parent) not in message            # no server path reaches a client
    assert complaint in message and "input_normalization imagenet" in message


def test_files_of_the_birefnet_folder_keep_imagenet(nodes, core_json, tmp_path, monkeypatch):
    import folder_paths

    core_json(CORE_0_21_0)
    ours = tmp_path / "birefnet"
    ours.mkdir()
    weights = {k: v.contiguous() for k, v in synthetic_float_weights("pvt_v2_b0").items()}
    save_file(weights, ours / "mine.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "birefnet",
                        ([str(ours)], {".safetensors"}))
    patcher, info = nodes.BiRefNetLoader().load("mine.safetensors", **AUTO)
    assert (patcher.model.info.mean, patcher.model.info.std) == IMAGENET
    assert "input normalisation imagenet," in info


# -- core's Remove Background and our Segment side by side, in a ComfyUI that has both ------------
SIDE = 1024          # core's image_size: neither side resizes the image or the mask


def _core_tree_or_skip():
    from tests.comfyui_server import ComfyUIUnavailable, comfyui_source
    try:
        source = comfyui_source()
    except ComfyUIUnavailable as error:
        pytest.skip(str(error))
    if not (source / "comfy_extras" / "nodes_bg_removal.py").is_file():
        pytest.skip(f"the ComfyUI at {source} has no core background-removal nodes (added in "
                    "0.21.0, May 2026); set COMFYUI_DIR to such a tree to run this comparison")
    return source


def _prompt(image_name: str, model_file: str, prefix: str) -> dict:
    """LoadImage -> core's Remove Background and our Segment on the same file, masks saved."""
    def save(node: str, name: str) -> dict:
        return {"class_type": "SaveImage", "inputs": {"images": [node, 0],
                                                      "filename_prefix": f"{prefix}_{name}"}}
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "core_model": {"class_type": "LoadBackgroundRemovalModel",
                       "inputs": {"bg_removal_name": model_file}},
        "core": {"class_type": "RemoveBackground",
                 "inputs": {"image": ["load", 0], "bg_removal_model": ["core_model", 0]}},
        "core_image": {"class_type": "MaskToImage", "inputs": {"mask": ["core", 0]}},
        "save_core": save("core_image", "core"),
        "ours_model": {"class_type": "BiRefNetLoader",
                       "inputs": {"model": f"background_removal/{model_file}", **AUTO}},
        "ours": {"class_type": "BiRefNetSegment",
                 "inputs": {"model": ["ours_model", 0], "image": ["load", 0], "resolution": 0,
                            "batch_size": 1, "threshold": 0.0, "invert": False,
                            "background_color": "#FFFFFF"}},
        "ours_image": {"class_type": "MaskToImage", "inputs": {"mask": ["ours", 0]}},
        "save_ours": save("ours_image", "ours"),
    }


def _saved_mask(server, entry: dict, node: str) -> np.ndarray:
    from tests.test_comfyui_e2e import read_png
    files = server.output_files(entry, node)
    assert len(files) == 1, f"{node} saved {files}"
    return read_png(files[0])[..., 0]


def test_remove_background_and_segment_agree_on_a_core_file(tmp_path):
    from tests.comfyui_server import ComfyUIServer, prepare_tree, status_of, write_full_checkpoint
    from tests.test_comfyui_e2e import structured_image

    source = _core_tree_or_skip()
    comfy_dir = prepare_tree(source, tmp_path / "ComfyUI")
    model = write_full_checkpoint(comfy_dir / "models" / "background_removal" / "synthetic.safetensors")
    # A second name for the same file: each birefnet.json is read by a fresh core loader.
    os.link(model, model.with_name("synthetic_edited.safetensors"))
    config = comfy_dir / "comfy" / "background_removal" / "birefnet.json"
    shipped = json.loads(config.read_text(encoding="utf-8"))
    # --fp32-text-enc: core keeps these weights in float16 on the CPU otherwise.
    server = ComfyUIServer(comfy_dir, tmp_path / "comfyui.log", env={"HF_HUB_OFFLINE": "1"},
                           args=["--fp32-text-enc"])
    server.start()
    try:
        name = server.put_input_image("core_vs_ours.png", structured_image(SIDE, SIDE, seed=21))
        # The tree's own file, then the other convention: ImageNet after 0.21.0's mean 0 / std
        # 1, or 0.21.0's values after a later core's ImageNet.
        other = CORE_LATER if shipped.get("image_mean") != list(IMAGENET[0]) else CORE_0_21_0
        masks = {}
        for label, content, file in (("shipped", shipped, model.name),
                                     ("edited", {**shipped, "image_mean": other["image_mean"],
                                                 "image_std": other["image_std"]},
                                      "synthetic_edited.safetensors")):
            config.write_text(json.dumps(content), encoding="utf-8")
            entry = server.run(_prompt(name, file, f"core_vs_ours_{label}"), timeout=900)
            assert status_of(entry) == "success", server.log_tail()
            masks[label] = (_saved_mask(server, entry, "save_core"),
                            _saved_mask(server, entry, "save_ours"))
            server.request("POST", "/free", {"unload_models": True, "free_memory": True})
        log = server.log_text()
    finally:
        server.stop()
    for content in (shipped, other):     # our Loader read each birefnet.json
        mean = ", ".join(f"{v:g}" for v in content["image_mean"])
        assert f"normalisation mean ({mean})" in log, log[-4000:]
    for label, (core_mask, our_mask) in masks.items():
        assert core_mask.shape == our_mask.shape == (SIDE, SIDE)
        # Both run the same float32 network on the same 8-bit image at core's own size, so
        # nothing is resized on either side (core's bicubic resize back to the same size is the
        # identity): the masks differ by float rounding only (logits within ~1e-5), and each is
        # then truncated to 8 bits by SaveImage -- at most 1/255 apart; 2/255 is the bound the
        # issue sets.
        difference = np.abs(core_mask - our_mask).max()
        assert difference <= 2 / 255 + 1e-6, f"{label}: masks {difference * 255:.1f}/255 apart"
    # The edit took effect on both sides: the two feeds give visibly different masks.
    assert np.abs(masks["shipped"][1] - masks["edited"][1]).max() > 2 / 255
