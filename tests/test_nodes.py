"""The nodes as Python objects, with a real ComfyUI importable (no server: see test_comfyui_e2e)."""
from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import save_file

from tests.comfyui_inprocess import import_pack
from tests.synthetic import SAME_MASK, synthetic_float_weights

pack = import_pack()
nodes = pack.nodes
core = pack.birefnet_core
import comfy.model_management as mm  # noqa: E402  (importable once the pack is)
import folder_paths  # noqa: E402

LOADER_DEFAULTS = dict(device="cpu", dtype="fp32", patch_order="auto", input_normalization="auto")


@pytest.fixture()
def model_dirs(tmp_path, monkeypatch):
    """A birefnet folder and a background_removal folder, each with a synthetic checkpoint."""
    weights = {k: v.contiguous() for k, v in synthetic_float_weights("pvt_v2_b0").items()}
    ours, theirs = tmp_path / "birefnet", tmp_path / "background_removal"
    ours.mkdir()
    theirs.mkdir()
    save_file(weights, ours / "synthetic.safetensors")
    save_file(weights, theirs / "birefnet.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "birefnet",
                        ([str(ours)], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "background_removal",
                        ([str(theirs)], {".safetensors"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ours, theirs


def _images(batch=2, height=45, width=70, channels=3, seed=0):
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))


def test_registration_and_metadata():
    assert set(pack.NODE_CLASS_MAPPINGS) == {"BiRefNetLoader", "BiRefNetSegment",
                                             "BiRefNetComposite", "BiRefNetRefineEdges",
                                             "BiRefNetVideoMatte", "BiRefNetEvaluate",
                                             "BiRefNetDetail", "BiRefNetSaveMatte"}
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "BiRefNet" and pack.NODE_DISPLAY_NAME_MAPPINGS[name]
        assert callable(getattr(cls, cls.FUNCTION))
        inputs = cls.INPUT_TYPES()
        for group in inputs.values():
            for input_name, spec in group.items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert pack.WEB_DIRECTORY == "./web"


def test_model_folder_registration_keeps_yaml_paths(monkeypatch, tmp_path):
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "birefnet",
                        ([str(tmp_path / "from_yaml")], set()))
    nodes.model_files.ensure_model_folder()
    paths, extensions = folder_paths.folder_names_and_paths["birefnet"]
    assert paths[0] == str(tmp_path / "from_yaml")
    assert os.path.join(folder_paths.models_dir, "birefnet") in paths
    assert ".safetensors" in extensions and ".pth" in extensions


def test_choices_list_files_core_folder_and_known_names(model_dirs):
    choices = nodes.model_files.model_choices()
    assert choices[0] == "synthetic.safetensors"
    assert "background_removal/birefnet.safetensors" in choices
    assert "BiRefNet" in choices and "BiRefNet_HR" in choices


def test_loader_reuses_a_loaded_model_and_reloads_a_changed_file(model_dirs, caplog):
    loader = nodes.BiRefNetLoader()
    caplog.set_level("INFO")
    first, info = loader.load("synthetic.safetensors", **LOADER_DEFAULTS)
    again, _ = loader.load("synthetic.safetensors", **LOADER_DEFAULTS)
    assert again is first
    assert caplog.text.count("BiRefNet: loaded synthetic.safetensors") == 1
    assert "pvt_v2_b0" in info and "imagenet" in info and "current" in info
    stamp = nodes.BiRefNetLoader.IS_CHANGED("synthetic.safetensors", **LOADER_DEFAULTS)
    path = model_dirs[0] / "synthetic.safetensors"
    time.sleep(0.01)
    path.write_bytes(path.read_bytes())                  # same content, new modification time
    assert nodes.BiRefNetLoader.IS_CHANGED("synthetic.safetensors", **LOADER_DEFAULTS) != stamp
    changed, _ = loader.load("synthetic.safetensors", **LOADER_DEFAULTS)
    assert changed is not first
    assert caplog.text.count("BiRefNet: loaded synthetic.safetensors") == 2


def test_core_folder_files_are_fed_like_comfyuis_own_node(model_dirs):
    # As the running ComfyUI's birefnet.json says (tests/test_core_bg_removal.py pins each case).
    patcher, info = nodes.BiRefNetLoader().load("background_removal/birefnet.safetensors",
                                                **LOADER_DEFAULTS)
    feed = nodes.model_files.core_feed()
    assert patcher.model.info.mean == feed.mean and patcher.model.patch_order == "legacy"
    assert f"normalisation {feed.describe()}" in info and "patch order legacy" in info
    overridden, info = nodes.BiRefNetLoader().load(
        "background_removal/birefnet.safetensors", device="cpu", dtype="fp32",
        patch_order="current", input_normalization="imagenet")
    assert overridden.model.patch_order == "current" and "imagenet" in info


def test_offline_known_model_names_file_and_folder(model_dirs):
    with pytest.raises(Exception) as error:
        nodes.BiRefNetLoader().load("BiRefNet_lite", **LOADER_DEFAULTS)
    message = str(error.value)
    assert "BiRefNet_lite/resolve/main/model.safetensors" in message
    assert "birefnet/BiRefNet_lite.safetensors" in message
    assert str(model_dirs[0]) not in message          # no server path reaches a client


def test_corrupt_file_error_names_the_loader(model_dirs):
    path = model_dirs[0] / "broken.safetensors"
    data = (model_dirs[0] / "synthetic.safetensors").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeError, match="BiRefNetLoader: .*(truncated|corrupt)"):
        nodes.BiRefNetLoader().load("broken.safetensors", **LOADER_DEFAULTS)


def test_segment_matches_predict_and_builds_cutout_and_composite(model_dirs):
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    image = _images()
    mask, cutout, composite = nodes.BiRefNetSegment().segment(
        patcher, image, resolution=64, batch_size=1, threshold=0.0, invert=False,
        background_color="#00FF00")
    expected = core.predict(patcher.model, image.permute(0, 3, 1, 2), 64)[:, 0]
    # chunks of one vs a batch of two: float32 reordering only (tests/synthetic.py)
    assert mask.shape == (2, 45, 70) and torch.allclose(mask, expected, atol=SAME_MASK)
    assert cutout.shape == (2, 45, 70, 4)
    assert torch.equal(cutout[..., :3], image) and torch.equal(cutout[..., 3], mask)
    green = torch.tensor([0.0, 1.0, 0.0])
    expected_composite = image * mask[..., None] + green * (1 - mask[..., None])
    # compositing in float32, values in [0, 1]: operation order or FMA may move a few ulps (1e-7)
    assert torch.allclose(composite, expected_composite, atol=1e-6)
    assert mask.device == mm.intermediate_device()


def test_segment_threshold_invert_and_odd_inputs(model_dirs):
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    rgba = _images(channels=4)
    soft, *_ = nodes.BiRefNetSegment().segment(patcher, rgba[..., :3], 64, 4, 0.0, False, "#fff")
    hard, *_ = nodes.BiRefNetSegment().segment(patcher, rgba, 64, 4, 0.5, True, "255,255,255")
    assert torch.equal(hard, (soft < 0.5).float())
    gray, *_ = nodes.BiRefNetSegment().segment(patcher, rgba[..., :1], 64, 4, 0.0, False, "#fff")
    assert gray.shape == soft.shape


@pytest.mark.parametrize("bad,message", [
    (torch.zeros(0, 8, 8, 3), "empty"),
    (torch.zeros(1, 8, 8, 2), "channels"),
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
    (torch.zeros(1, 1, 8, 8, 3), "shape"),
])
def test_segment_rejects_bad_images_by_name(model_dirs, bad, message):
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    with pytest.raises(ValueError, match=f"BiRefNetSegment: .*{message}"):
        nodes.BiRefNetSegment().segment(patcher, bad, 64, 1, 0.0, False, "#fff")


def test_segment_rejects_bad_resolution_and_colour(model_dirs):
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    with pytest.raises(ValueError, match="multiple of 32"):
        nodes.BiRefNetSegment().segment(patcher, _images(), 100, 1, 0.0, False, "#fff")
    with pytest.raises(ValueError, match="colour"):
        nodes.BiRefNetSegment().segment(patcher, _images(), 64, 1, 0.0, False, "greenish")


def test_segment_stops_on_interrupt(model_dirs):
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            nodes.BiRefNetSegment().segment(patcher, _images(), 64, 1, 0.0, False, "#fff")
    finally:
        mm.interrupt_current_processing(False)


def test_model_is_managed_by_comfyui(model_dirs):
    patcher, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    nodes.BiRefNetSegment().segment(patcher, _images(1), 64, 1, 0.0, False, "#fff")
    assert any(loaded.model is patcher for loaded in mm.current_loaded_models)
    mm.unload_all_models()
    assert not any(loaded.model is patcher for loaded in mm.current_loaded_models)


def test_composite_over_colour_and_image_with_broadcast():
    composite = nodes.BiRefNetComposite()
    fg = _images(batch=3, height=20, width=30)
    mask = torch.rand(1, 20, 30)
    (over_colour,) = composite.composite(fg, mask, "cover", "#000000")
    # compositing in float32, values in [0, 1]: operation order or FMA may move a few ulps (1e-7)
    assert torch.allclose(over_colour, fg * mask[..., None], atol=1e-6)
    background = torch.rand(1, 40, 90, 3)
    for fit in ("cover", "stretch", "center"):
        (out,) = composite.composite(fg, mask, fit, "#000000", background)
        assert out.shape == (3, 20, 30, 3)
    (centered,) = composite.composite(fg, mask, "center", "#000000", background)
    crop = background[:, 10:30, 30:60]
    assert torch.allclose(centered, fg * mask[..., None] + crop * (1 - mask[..., None]), atol=1e-6)


def test_composite_center_pads_small_background_with_colour():
    fg, mask = torch.zeros(1, 10, 10, 3), torch.zeros(1, 10, 10)
    (out,) = nodes.BiRefNetComposite().composite(fg, mask, "center", "#FF0000",
                                                 torch.ones(1, 4, 4, 3))
    assert torch.equal(out[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(out[0, 5, 5], torch.tensor([1.0, 1.0, 1.0]))


def test_composite_errors_name_the_node():
    composite = nodes.BiRefNetComposite()
    with pytest.raises(ValueError, match="BiRefNetComposite: batch sizes"):
        composite.composite(_images(batch=3), torch.rand(2, 45, 70), "cover", "#fff")
    with pytest.raises(ValueError, match="BiRefNetComposite: the mask is"):
        composite.composite(_images(batch=1), torch.rand(1, 40, 70), "cover", "#fff")


def test_loader_int8_and_compile_options_reach_the_model_and_its_info(model_dirs, monkeypatch):
    """int8 loads under ComfyUI's model management (its memory accounting reads every state
    entry) and segments; a compile that fails falls back and says so in the info line."""
    options = dict(LOADER_DEFAULTS, dtype="int8")
    patcher, info = nodes.BiRefNetLoader().load("synthetic.safetensors", **options)
    assert patcher.model.info.int8 and "int8 linear layers" in info
    mm.load_models_gpu([patcher])
    mask, *_ = nodes.BiRefNetSegment().segment(patcher, _images(), 64, 2, 0.0, False, "#fff")
    plain, _ = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS)
    exact, *_ = nodes.BiRefNetSegment().segment(plain, _images(), 64, 2, 0.0, False, "#fff")
    assert 0 < float((mask - exact).abs().max()) <= 0.02        # README's int8 mask bound
    with pytest.raises(RuntimeError, match="BiRefNetLoader: dtype int8 runs on the CPU only"):
        nodes.BiRefNetLoader().load("synthetic.safetensors", **dict(options, device="meta"))

    def failing_compile(function, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return compiled
    monkeypatch.setattr(core.network.compiled.torch, "compile", failing_compile)
    compiled, info = nodes.BiRefNetLoader().load("synthetic.safetensors", **LOADER_DEFAULTS,
                                                 compile=True)
    assert compiled is not plain and "torch.compile on" in info
    fallback, *_ = nodes.BiRefNetSegment().segment(compiled, _images(), 64, 2, 0.0, False, "#fff")
    assert torch.equal(fallback, exact)
    assert "fell back to eager" in core.network.compiled.compile_state(compiled.model)
