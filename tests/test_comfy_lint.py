"""comfy-lint 0.1.0, a third-party linter (PyPI), over every API workflow against the test
server's /object_info, as a user would run it (``comfy-lint workflows/*.api.json --server``).

The server's input folder is set as a fresh install has it: ComfyUI's own example.png, which
every workflow's photo is, and no video. So the only errors are the files the user must
supply, each named in its node's title (README, "Example workflows"):
- 02: the Stable Diffusion checkpoint (``ckpt_name``);
- 04: the video (``file``), and, in a ComfyUI without core video nodes (the 2024 one), those
  four node types.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfyui_server import comfyui_source
from tools.workflow_sources import (
    EXAMPLE_IMAGE,
    EXAMPLE_VIDEO,
    PAINT_SUBJECT,
    PICK_SD_CHECKPOINT,
    PICK_VIDEO,
    WORKFLOWS,
)

FOLDER = Path(__file__).resolve().parent.parent / "workflows"
VIDEO_NODES = {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo"}
# (workflow, node id, field, rule) the user resolves by picking a file.
USER_PICKS = {("02_sd_compositing", "10", "ckpt_name", "invalid-enum"),
              ("04_video_matting", "1", "file", "invalid-enum")}
COMFY_LINT = Path(sys.executable).with_name("comfy-lint")


def expected_errors(object_info: dict) -> set[tuple[str, str, str, str]]:
    expected = set(USER_PICKS)
    if "LoadVideo" not in object_info:            # the 2024 ComfyUI: no core video nodes
        video = json.loads((FOLDER / "04_video_matting.api.json").read_text(encoding="utf-8"))
        expected = {e for e in expected if e[0] != "04_video_matting"}
        expected |= {("04_video_matting", key, "class_type", "unknown-node")
                     for key, node in video.items() if node["class_type"] in VIDEO_NODES}
    return expected


def as_fresh_install(comfyui) -> None:
    """input/ as ComfyUI ships it for what the workflows read: example.png, no video."""
    shutil.copyfile(comfyui_source() / "input" / EXAMPLE_IMAGE, comfyui.input_dir / EXAMPLE_IMAGE)
    (comfyui.input_dir / EXAMPLE_VIDEO).unlink(missing_ok=True)


def lint(paths: list[Path], server: str) -> dict:
    environment = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1"}
    result = subprocess.run([str(COMFY_LINT), *map(str, paths), "--server", server, "--json"],
                            capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode in (0, 1), result.stdout + result.stderr     # 2: not checked
    return json.loads(result.stdout)


def test_comfy_lint_reports_only_the_files_a_user_must_pick(comfyui):
    if not COMFY_LINT.is_file():
        pytest.fail(f"comfy-lint is not installed ({COMFY_LINT}): pip install -r "
                    "requirements-test.txt", pytrace=False)
    as_fresh_install(comfyui)
    paths = [FOLDER / f"{name}.api.json" for name in WORKFLOWS]
    report = lint(paths, comfyui.base_url)
    assert report["summary"]["files"] == len(WORKFLOWS) and report["summary"]["unreadable"] == 0
    found = {(Path(file["path"]).name.removesuffix(".api.json"), str(d["node_id"]), d["field"],
              d["rule"])
             for file in report["files"] for d in file["diagnostics"] if d["severity"] == "error"}
    assert found == expected_errors(comfyui.object_info()), json.dumps(report, indent=1)


def test_each_file_the_user_must_supply_is_named_in_its_title():
    titles = {(name, key): node["_meta"]["title"]
              for name, build in WORKFLOWS.items() for key, node in build().items()}
    assert titles["02_sd_compositing", "10"] == PICK_SD_CHECKPOINT and "pick" in PICK_SD_CHECKPOINT
    assert titles["04_video_matting", "1"] == PICK_VIDEO and "pick" in PICK_VIDEO
    assert titles["07_guided_subject", "1"] == PAINT_SUBJECT and "MaskEditor" in PAINT_SUBJECT
    photos = [node["inputs"]["image"] for build in WORKFLOWS.values()
              for node in build().values() if node["class_type"] == "LoadImage"]
    assert photos and set(photos) == {"example.png"}       # what every ComfyUI ships
