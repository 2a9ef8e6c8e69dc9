"""The example workflows 06 (large photo -> Segment -> Detail -> Refine Edges) and 07 (the
mask editor's mask as Segment's guide) in the real ComfyUI server (tests/comfyui_server.py):
their files match tools/workflow_sources.py, they validate against /object_info and run to
completion with a synthetic checkpoint. No ComfyUI is imported into the test process, so this
runs against any ComfyUI the server fixture starts (COMFYUI_DIR)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfyui_server import CHECKPOINT_NAME, comfyui_source, execution_error, status_of
from tests.oracle import composite, scene_alpha
from tests.workflow_checks import workflow_problems
from tools.workflow_sources import EXAMPLE_IMAGE, WORKFLOWS

PAINTED = "painted_example.png"     # as the mask editor saves the photo with the painted mask

FOLDER = Path(__file__).resolve().parent.parent / "workflows"
NEW_WORKFLOWS = ("06_large_photo_detail", "07_guided_subject")
PACK_NODES = {"BiRefNetLoader", "BiRefNetSegment", "BiRefNetRefineEdges", "BiRefNetDetail"}


def _api(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.api.json").read_text(encoding="utf-8"))


def _synthetic(workflow: dict) -> dict:
    job = json.loads(json.dumps(workflow))
    for node in job.values():
        if node["class_type"] == "BiRefNetLoader":
            node["inputs"].update(model=CHECKPOINT_NAME, device="cpu", dtype="fp32",
                                  patch_order="current")
        if node["class_type"] in ("BiRefNetSegment", "BiRefNetDetail"):
            node["inputs"]["resolution"] = 64
    return job


def _example_images(comfyui, width=150, height=100) -> None:
    alpha = scene_alpha(height, width, seed=3, size=0.7)
    rgb = (composite(alpha)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    comfyui.put_input_image(EXAMPLE_IMAGE, Image.fromarray(rgb, "RGB"))
    painted = np.full((height, width), 255, np.uint8)      # the mask editor erases alpha
    painted[20:80, 40:110] = 0                              # where the user painted
    comfyui.put_input_image(PAINTED, Image.fromarray(np.dstack([rgb, painted]), "RGBA"))


def _painted(job: dict) -> dict:
    """07 after the user painted the subject: the mask editor points Load Image at its file."""
    for node in job.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = PAINTED
    return job


def test_new_workflow_files_are_what_the_sources_write():
    for name in NEW_WORKFLOWS:
        assert _api(name) == WORKFLOWS[name](), f"{name}: run python tools/build_workflows.py"
        assert (FOLDER / f"{name}.json").is_file() and (FOLDER / f"{name}.png").is_file()
    guided = _api("07_guided_subject")
    used = {node["class_type"] for node in guided.values()}
    assert used <= {"LoadImage", "SaveImage", "MaskToImage"} | PACK_NODES      # core nodes only


@pytest.mark.parametrize("name", NEW_WORKFLOWS)
def test_new_workflow_validates_and_runs(comfyui, name):
    assert workflow_problems(_api(name), comfyui.object_info()) == []
    _example_images(comfyui)
    job = _synthetic(_api(name))
    entry = comfyui.run(_painted(job) if name == "07_guided_subject" else job, timeout=300)
    assert entry.get("status", {}).get("status_str") == "success", comfyui.log_tail()
    saved = {key: comfyui.output_files(entry, key) for key, node in _api(name).items()
             if node["class_type"] == "SaveImage"}
    for key, files in saved.items():
        assert len(files) == 1
        with Image.open(files[0]) as picture:
            assert picture.size == (150, 100)
            if "cutout" in _api(name)[key]["inputs"]["filename_prefix"]:
                assert picture.mode == "RGBA"
                if name == "07_guided_subject":       # nothing outside the grown guide
                    alpha = np.asarray(picture)[..., 3]
                    assert alpha[:, :20].max() == 0 and alpha[:, 130:].max() == 0


def test_guided_workflow_as_downloaded_says_to_paint_the_subject(comfyui):
    """07 run on ComfyUI's own example.png before anything is painted: Load Image gives a 64x64
    empty mask, and Segment says what to do rather than that the sizes differ."""
    shutil.copyfile(comfyui_source() / "input" / EXAMPLE_IMAGE, comfyui.input_dir / EXAMPLE_IMAGE)
    entry = comfyui.run(_synthetic(_api("07_guided_subject")), timeout=300)
    assert status_of(entry) == "error"
    error = execution_error(entry)
    assert error["node_type"] == "BiRefNetSegment"
    message = error["exception_message"]
    assert "the guide mask is empty" in message and "mask editor" in message
    assert "SAM3 Detect" in message and "64x64 but the image" not in message
