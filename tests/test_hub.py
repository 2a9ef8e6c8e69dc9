"""resolve_checkpoint against a fake Hugging Face file server on 127.0.0.1.

The real huggingface_hub client does the HTTP work; only the server is fake. It answers
``HEAD``/``GET /<repo_id>/resolve/main/<file>`` with the headers huggingface_hub reads
(``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``Content-Length``/``X-Linked-Size``,
``Location``) and logs every request. A guard on name resolution fails the test if anything
tries to reach a host other than the loopback one.
"""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub  # imported before HF_ENDPOINT is set: the endpoint must be read per call
import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save as save_safetensors

from birefnet_core.errors import ModelNotAvailableError
from birefnet_core.weights.hub import default_models_dir, resolve_checkpoint
from birefnet_core.weights.known_models import KNOWN_MODELS

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def synthetic_checkpoint_bytes(seed: int = 0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"decoder.conv_out.0.weight": torch.randn(1, 64, 1, 1, generator=generator),
               "decoder.conv_out.0.bias": torch.randn(1, generator=generator),
               "bb.patch_embed1.proj.weight": torch.randn(32, 3, 7, 7, generator=generator),
               "squeeze_module.0.dec_att.aspp1.bn.running_var": torch.rand(64, generator=generator)}
    return save_safetensors(tensors)


@dataclass
class FakeHub:
    """What the fake server serves and what it has been asked."""
    files: dict[str, bytes]                     # "<repo_id>/<filename>" -> content
    status: int = 200                           # force this status on every /resolve/ request
    redirect: bool = False                      # answer like the hub for LFS files: 302 to a CDN
    truncate: bool = False                      # send half the body, then hang up
    port: int = 0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method in (None, m)]


def _commit_of(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()


def _handler_for(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def _answer(self, with_body: bool) -> None:
            hub.requests.append((self.command, self.path, {k.lower(): v for k, v in
                                                           self.headers.items()}))
            if self.path.startswith("/cdn/"):
                return self._serve_blob(self.path[len("/cdn/"):], with_body)
            repo_and_file = self.path.lstrip("/").replace("/resolve/main/", "/", 1)
            if "/resolve/main/" not in self.path or repo_and_file not in hub.files:
                return self._error(404, "EntryNotFound")
            if hub.status == 404:
                return self._error(404, "EntryNotFound")
            if hub.status in (401, 403):
                return self._error(hub.status, "GatedRepo")
            content = hub.files[repo_and_file]
            if hub.redirect:
                return self._redirect(content)
            self._send_content(content, with_body)

        def _send_content(self, content: bytes, with_body: bool) -> None:
            self.send_response(200)
            self.send_header("X-Repo-Commit", _commit_of(content))
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if with_body:
                self.wfile.write(content[: len(content) // 2] if hub.truncate else content)

        def _redirect(self, content: bytes) -> None:
            sha256 = hashlib.sha256(content).hexdigest()
            self.send_response(302)
            self.send_header("X-Repo-Commit", _commit_of(content))
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(content)))
            # Another host name for the same server: a "CDN" that is not the hub's origin.
            self.send_header("Location", f"http://localhost:{hub.port}/cdn/{sha256}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve_blob(self, sha256: str, with_body: bool) -> None:
            blobs = {hashlib.sha256(c).hexdigest(): c for c in hub.files.values()}
            if sha256 not in blobs:
                return self._error(404, "EntryNotFound")
            self._send_content(blobs[sha256], with_body)

        def _error(self, status: int, code: str) -> None:
            body = b'{"error": "refused by the fake hub"}'
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and record) every name lookup for a host that is not the loopback one."""
    blocked: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK_HOSTS:
            blocked.append(name)
            raise OSError(f"test blocked a connection to non-loopback host {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield blocked
    assert not blocked, f"something tried to reach {blocked}"


@pytest.fixture(autouse=True)
def isolated_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                loopback_only: list[str]) -> Iterator[None]:
    """No user token, cache, proxy, offline flag or telemetry leaks into these tests."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                 "HF_OIDC_RESOURCE", "HF_ENDPOINT", "BIREFNET_MODELS_DIR", "HTTP_PROXY",
                 "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    huggingface_hub.close_session()  # the next client is built with the environment above
    yield
    huggingface_hub.close_session()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    lite = KNOWN_MODELS["BiRefNet_lite"]
    rmbg = KNOWN_MODELS["RMBG-2.0"]
    hub = FakeHub(files={f"{lite.repo_id}/{lite.filename}": synthetic_checkpoint_bytes(1),
                         f"{rmbg.repo_id}/{rmbg.filename}": synthetic_checkpoint_bytes(2)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(hub))
    server.daemon_threads = True
    hub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    yield hub
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _url(hub_endpoint: str, name: str) -> str:
    model = KNOWN_MODELS[name]
    return f"{hub_endpoint}/{model.repo_id}/resolve/main/{model.filename}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_lands_under_the_model_name(fake_hub: FakeHub, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    path = resolve_checkpoint("BiRefNet_lite", models_dir)
    assert path == models_dir / "BiRefNet_lite.safetensors"
    assert path.read_bytes() == fake_hub.files["ZhengPeng7/BiRefNet_lite/model.safetensors"]
    assert "/ZhengPeng7/BiRefNet_lite/resolve/main/model.safetensors" in fake_hub.paths("GET")
    assert _leftovers(models_dir) == ["BiRefNet_lite.safetensors"]  # temp folder cleaned

    seen = len(fake_hub.requests)
    assert resolve_checkpoint("BiRefNet_lite", models_dir) == path
    assert resolve_checkpoint("ZhengPeng7/BiRefNet_lite", models_dir) == path
    assert len(fake_hub.requests) == seen  # already there: the server is not asked again


def test_download_through_a_cdn_redirect(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.redirect = True
    path = resolve_checkpoint("BiRefNet_lite", tmp_path)
    assert path.read_bytes() == fake_hub.files["ZhengPeng7/BiRefNet_lite/model.safetensors"]
    assert any(p.startswith("/cdn/") for p in fake_hub.paths("GET"))


def test_hf_token_is_sent(fake_hub: FakeHub, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    resolve_checkpoint("RMBG-2.0", tmp_path)
    auth = [h.get("authorization") for m, p, h in fake_hub.requests if "briaai" in p]
    assert auth and all(a == "Bearer hf_fake_token_for_tests" for a in auth)


def test_models_dir_from_environment(fake_hub: FakeHub, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIREFNET_MODELS_DIR", str(tmp_path / "from-env"))
    path = resolve_checkpoint("BiRefNet_lite")
    assert path == tmp_path / "from-env" / "BiRefNet_lite.safetensors" and path.is_file()


def test_offline_names_url_and_destination(fake_hub: FakeHub, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_checkpoint("BiRefNet_lite", tmp_path)
    message = str(info.value)
    assert _url(fake_hub.endpoint, "BiRefNet_lite") in message
    assert str(tmp_path / "BiRefNet_lite.safetensors") in message
    assert "HF_HUB_OFFLINE" in message and "local checkpoint" in message
    assert fake_hub.requests == []


def test_download_false_never_asks(fake_hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_checkpoint("BiRefNet_lite", tmp_path, download=False)
    assert str(tmp_path / "BiRefNet_lite.safetensors") in str(info.value)
    assert fake_hub.requests == []


def test_offline_still_finds_a_downloaded_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    existing = tmp_path / "BiRefNet_HR.safetensors"
    existing.write_bytes(synthetic_checkpoint_bytes())
    assert resolve_checkpoint("BiRefNet_HR", tmp_path) == existing


def test_missing_file_404(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.status = 404
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_checkpoint("BiRefNet_lite", tmp_path)
    message = str(info.value)
    assert "404" in message and _url(fake_hub.endpoint, "BiRefNet_lite") in message
    assert str(tmp_path / "BiRefNet_lite.safetensors") in message
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [401, 403])
def test_gated_model_refused(fake_hub: FakeHub, tmp_path: Path, status: int) -> None:
    fake_hub.status = status
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_checkpoint("RMBG-2.0", tmp_path)
    message = str(info.value)
    assert str(status) in message and "HF_TOKEN" in message and "licence" in message
    assert f"{fake_hub.endpoint}/briaai/RMBG-2.0" in message
    assert str(tmp_path / "RMBG-2.0.safetensors") in message
    assert _leftovers(tmp_path) == []


def test_unreachable_endpoint_leaves_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    models_dir = tmp_path / "models"
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_checkpoint("BiRefNet_lite", models_dir)
    message = str(info.value)
    assert _url(endpoint, "BiRefNet_lite") in message
    assert str(models_dir / "BiRefNet_lite.safetensors") in message
    assert _leftovers(models_dir) == []


def test_broken_transfer_leaves_nothing(fake_hub: FakeHub, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.truncate = True
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # skip huggingface_hub's back-off
    with pytest.raises(ModelNotAvailableError):
        resolve_checkpoint("BiRefNet_lite", tmp_path)
    assert fake_hub.paths("GET")  # the transfer did start
    assert _leftovers(tmp_path) == []


def test_existing_paths_pass_through(tmp_path: Path) -> None:
    checkpoint = tmp_path / "my finetune.pth"
    checkpoint.write_bytes(b"not looked at here")
    assert resolve_checkpoint(checkpoint) == checkpoint
    assert resolve_checkpoint(str(checkpoint), tmp_path / "unused") == checkpoint
    assert not (tmp_path / "unused").exists()


def test_unknown_name_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_checkpoint("BiRefNet_XXL", tmp_path)
    message = str(info.value)
    assert "BiRefNet_XXL" in message
    assert all(name in message for name in KNOWN_MODELS)


@pytest.mark.parametrize("text", ["missing/model.safetensors", "weights.pth"])
def test_missing_path_says_so(tmp_path: Path, text: str) -> None:
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / text) if "/" in text else text, tmp_path)


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BIREFNET_MODELS_DIR", str(tmp_path / "chosen"))
    assert default_models_dir() == tmp_path / "chosen"
    monkeypatch.delenv("BIREFNET_MODELS_DIR")
    monkeypatch.setattr("sys.platform", "linux")
    assert default_models_dir() == Path.home() / ".cache" / "birefnet"
    monkeypatch.setattr("sys.platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    assert default_models_dir() == tmp_path / "AppData" / "Local" / "birefnet"
