"""The example workflows (workflows/*.api.json) against a real ComfyUI: every one validates,
every one that needs no Stable Diffusion checkpoint runs to completion with a synthetic
BiRefNet checkpoint; and the headless client (tools/comfy_client.py) against the same server."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfyui_server import CHECKPOINT_NAME, comfyui_python
from tests.test_comfyui_e2e import assert_succeeded, structured_image
from tests.workflow_checks import masked_example, workflow_problems
from tools import comfy_client
from tools.workflow_sources import EXAMPLE_IMAGE, EXAMPLE_VIDEO, WORKFLOWS

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "workflows"
SNAPSHOT = Path(__file__).parent / "fixtures" / "comfyui" / "video_nodes_object_info.json"
NEEDS_SD_CHECKPOINT = {"02_sd_compositing"}


def api_workflow(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.api.json").read_text(encoding="utf-8"))


def for_synthetic_model(workflow: dict, resolution: int = 64) -> dict:
    """The workflow with the synthetic checkpoint on the CPU at a small working size."""
    job = json.loads(json.dumps(workflow))
    for node in job.values():
        if node["class_type"] == "BiRefNetLoader":
            node["inputs"].update(model=CHECKPOINT_NAME, device="cpu", dtype="fp32",
                                  patch_order="current")
        if node["class_type"] in ("BiRefNetSegment", "BiRefNetVideoMatte", "BiRefNetDetail"):
            node["inputs"]["resolution"] = resolution
    return job


def object_info_with_snapshot(comfyui) -> tuple[dict, set[str]]:
    """The server's node definitions, plus ComfyUI 0.3.64's video nodes where this server
    (the 2024 copy) predates them; and the names taken from that snapshot."""
    info = comfyui.object_info()
    snapshot = json.loads(SNAPSHOT.read_text())["nodes"]
    borrowed = {name for name in snapshot if name not in info}
    return {**{name: snapshot[name] for name in borrowed}, **info}, borrowed


def test_api_files_are_what_the_sources_write():
    for name, build in WORKFLOWS.items():
        assert api_workflow(name) == build(), f"{name}: run python tools/build_workflows.py"


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_workflow_validates_against_the_server(comfyui, name):
    info, borrowed = object_info_with_snapshot(comfyui)
    workflow = api_workflow(name)
    assert workflow_problems(workflow, info) == []
    used_from_snapshot = {node["class_type"] for node in workflow.values()} & borrowed
    assert used_from_snapshot <= {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo"}
    if used_from_snapshot:                          # only the 2024 copy lacks the video nodes
        assert "comfy_api" not in {p.name for p in comfyui.comfy_dir.iterdir()}


def test_validation_catches_mistakes(comfyui):
    info, _ = object_info_with_snapshot(comfyui)
    broken = api_workflow("01_transparent_png")
    broken["3"]["inputs"]["resolution"] = 99999
    broken["4"]["inputs"]["foreground_method"] = "magic"
    broken["5"]["inputs"]["images"] = ["4", 0]                     # a MASK into IMAGE
    problems = "\n".join(workflow_problems(broken, info))
    assert "outside" in problems and "'magic'" in problems and "wants IMAGE" in problems


def _put_examples(comfyui) -> None:
    """Every workflow's photo (example.png) as a small test image, with a subject painted in
    the mask editor (its alpha: 07's guide; the others take the RGB only)."""
    comfyui.put_input_image(EXAMPLE_IMAGE, masked_example(structured_image(seed=11)))


@pytest.mark.parametrize("name", [n for n in WORKFLOWS
                                  if n not in NEEDS_SD_CHECKPOINT and "video" not in n])
def test_workflow_runs_to_completion(comfyui, name):
    _put_examples(comfyui)
    entry = comfyui.run(for_synthetic_model(api_workflow(name)))
    assert_succeeded(comfyui, entry)
    savers = [key for key, node in api_workflow(name).items() if node["class_type"] == "SaveImage"]
    for key in savers:
        files = comfyui.output_files(entry, key)
        assert len(files) == 1
        with Image.open(files[0]) as image:
            assert image.size == (70, 45)
            if "cutout" in api_workflow(name)[key]["inputs"]["filename_prefix"]:
                assert image.mode == "RGBA"
    _check_saved_mattes(comfyui, entry, api_workflow(name), (45, 70))


def _check_saved_mattes(comfyui, entry: dict, workflow: dict, size: tuple[int, int]) -> None:
    """Every BiRefNet Save Matte node wrote its file, which decodes at the frames' size with
    an alpha channel (PyAV reads the clips and EXR files, the PNGs too)."""
    import av
    for key, node in workflow.items():
        if node["class_type"] != "BiRefNetSaveMatte":
            continue
        files = [f for f in comfyui.output_files(entry, key) if f.suffix != ".wav"]
        assert files, f"{key}: nothing written: {entry['outputs'].get(key)}"
        with av.open(str(files[0])) as container:
            frame = next(container.decode(video=0))
            assert (frame.height, frame.width) == size
            assert "a" in frame.format.name or frame.format.name.startswith("gbrap"), \
                f"{files[0].name}: {frame.format.name} has no alpha"


def _write_example_video(comfyui, path: Path, frames: int = 6) -> None:
    """A tiny H.264 clip made by the server's own Python (PyAV ships with current ComfyUI)."""
    script = (
        "import av, numpy as np, sys\n"
        "out = av.open(sys.argv[1], 'w'); s = out.add_stream('libx264', rate=8)\n"
        "s.width, s.height, s.pix_fmt = 64, 48, 'yuv420p'\n"
        f"for t in range({frames}):\n"
        "    a = np.zeros((48, 64, 3), np.uint8); a[..., 1] = 180; a[10:30, 8 + 4*t:28 + 4*t] = 220\n"
        "    [out.mux(p) for p in s.encode(av.VideoFrame.from_ndarray(a, format='rgb24'))]\n"
        "[out.mux(p) for p in s.encode()]; out.close()\n")
    subprocess.run([comfyui_python(), "-c", script, str(path)], check=True)


def test_video_workflow_runs_where_comfyui_has_video_nodes(comfyui):
    if "LoadVideo" not in comfyui.object_info():
        # The 2024 copy in CI predates core video nodes: the workflow was validated against
        # 0.3.64's definitions above; running it needs COMFYUI_DIR pointing at a current tree.
        assert "comfy_api" not in {p.name for p in comfyui.comfy_dir.iterdir()}
        return
    _put_examples(comfyui)
    _write_example_video(comfyui, comfyui.input_dir / EXAMPLE_VIDEO)
    workflow = for_synthetic_model(api_workflow("04_video_matting"))
    entry = comfyui.run(workflow, timeout=300)
    assert_succeeded(comfyui, entry)
    saved = [p for p in comfyui.output_dir.rglob("video*.mp4")]
    assert saved, f"no video saved: {entry.get('outputs')}"
    _check_saved_mattes(comfyui, entry, workflow, (48, 64))       # the ProRes 4444 matte


def test_client_processes_a_folder(comfyui, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in (21, 22):
        structured_image(seed=seed).save(folder / f"photo_{seed}.png")
    (folder / "notes.txt").write_text("not an image")
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(for_synthetic_model(api_workflow("05_headless_folder"))))
    out = tmp_path / "out"
    status = comfy_client.main(["--workflow", str(workflow), "--images", str(folder),
                                "--out", str(out), "--server", comfyui.base_url,
                                "--set", "4.filename_prefix=client/cutout"])
    assert status == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4 and all(name.startswith("photo_2") for name in written)
    cutout = next(p for p in out.iterdir() if "cutout" in p.name)
    with Image.open(cutout) as image:
        assert image.mode == "RGBA" and image.size == (70, 45)


def test_client_reports_a_rejected_workflow(comfyui, tmp_path, capsys):
    image = tmp_path / "photo.png"
    structured_image(seed=23).save(image)
    job = for_synthetic_model(api_workflow("05_headless_folder"))
    job["3"]["inputs"]["resolution"] = 100                        # not a multiple of 32
    workflow = tmp_path / "bad.json"
    workflow.write_text(json.dumps(job))
    status = comfy_client.main(["--workflow", str(workflow), "--image", str(image),
                                "--out", str(tmp_path / "out"), "--server", comfyui.base_url])
    assert status == 1
    assert "multiple of 32" in capsys.readouterr().err
    assert np.asarray(Image.open(image)).shape == (45, 70, 3)    # the input is untouched
