"""tools/comfy_client.py with several real ComfyUI servers (tests/comfyui_server.py), one of
which is stopped while the client runs: every image still comes back, from the other."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.comfyui_server import ComfyUIServer, ComfyUIUnavailable, launch
from tests.test_comfyui_e2e import structured_image
from tests.test_workflows import api_workflow, for_synthetic_model

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 12


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory):
    """Two ComfyUI servers of the module's own (one is stopped by a test), started together."""
    servers: list[ComfyUIServer | None] = [None, None]
    errors: list[BaseException] = []

    def start(index: int) -> None:
        try:
            servers[index] = launch(tmp_path_factory.mktemp(f"comfyui_client_{index}"))
        except BaseException as error:  # noqa: BLE001 - reported by the fixture below
            errors.append(error)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        if errors:
            kind = "no ComfyUI" if isinstance(errors[0], ComfyUIUnavailable) else "a failed start"
            pytest.fail(f"{kind}: {errors[0]}", pytrace=False)
        yield servers
    finally:
        for server in servers:
            if server is not None:
                server.stop()


def _client(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "comfy_client.py"), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_images_come_back_when_a_server_stops(two_servers, tmp_path: Path) -> None:
    steady, doomed = two_servers
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(IMAGES):
        structured_image(width=96, height=64, seed=seed).save(folder / f"photo_{seed:02d}.png")
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(for_synthetic_model(api_workflow("05_headless_folder"), 128)))
    out = tmp_path / "out"
    client = _client("--workflow", str(workflow), "--images", str(folder), "--out", str(out),
                     "--server", steady.base_url, "--server", doomed.base_url,
                     "--in-flight", "2", "--request-timeout", "20")
    lines = []
    for line in client.stdout:        # stop the second server once it has delivered an image
        lines.append(line.rstrip("\n"))
        if line.rstrip("\n").endswith(f"from {doomed.base_url}"):
            doomed.stop()
            break
    rest, errors = client.communicate(timeout=600)
    lines += rest.splitlines()
    assert client.returncode == 0, errors
    assert doomed.process is None, "the second server never delivered an image"
    # Every image came back whole: a mask and a cut-out each, no temporary files.
    stems = sorted(p.name.split("__")[0] for p in out.iterdir())
    assert stems == sorted(f"photo_{seed:02d}" for seed in range(IMAGES) for _ in range(2))
    by_server = {line.split(": ")[0]: line.rsplit(" from ", 1)[-1]
                 for line in lines if " file(s) from " in line}
    assert len(by_server) == IMAGES
    assert set(by_server.values()) == {steady.base_url, doomed.base_url}
    # The second server had prompts in flight when it stopped: they went to the first.
    resent = [line.split(": ")[0] for line in lines if "re-sent" in line]
    assert resent and all(by_server[name] == steady.base_url for name in resent)
    assert f"{doomed.base_url} stopped answering" in errors
    assert lines[-1] == f"{IMAGES} of {IMAGES} images done on 1 of 2 servers; 0 failed"


def test_unreachable_servers(two_servers, tmp_path: Path) -> None:
    steady = two_servers[0]
    structured_image(seed=99).save(tmp_path / "photo.png")
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(for_synthetic_model(api_workflow("05_headless_folder"))))
    dead = "http://127.0.0.1:9"                  # the discard port: nothing listens there
    client = _client("--workflow", str(workflow), "--image", str(tmp_path / "photo.png"),
                     "--out", str(tmp_path / "out"), "--server", dead, "--server",
                     steady.base_url)
    output, errors = client.communicate(timeout=300)
    assert client.returncode == 0, errors
    assert f"cannot reach ComfyUI at {dead}" in errors
    assert f"photo.png: 2 file(s) from {steady.base_url}" in output
    alone = _client("--workflow", str(workflow), "--image", str(tmp_path / "photo.png"),
                    "--out", str(tmp_path / "out"), "--server", dead)
    _, errors = alone.communicate(timeout=120)
    assert alone.returncode == 2 and f"cannot reach ComfyUI at {dead}" in errors
