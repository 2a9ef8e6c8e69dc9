"""Run an API-format workflow on one or several ComfyUI servers for one image or a folder of
images, and download what it saved. Standard library only; uses the ``websocket-client``
package for progress if it is installed, else polls /history.

    python tools/comfy_client.py --workflow workflows/05_headless_folder.api.json \\
        --images photos/ --out cutouts/ [--server http://127.0.0.1:8188 ...] \\
        [--in-flight 2] [--set 2.model=BiRefNet_lite] [--node 1]

Each image is uploaded (POST /upload/image), put into the workflow's LoadImage node (the one
titled "Photo", else the first LoadImage, or --node), queued (POST /prompt), waited for, and
every image the workflow saved is written to --out as <image stem>__<saved name> (all of an
image's files are downloaded first, then each is written under a temporary name and renamed).
--server may be given several times: the images are spread over the servers, each keeping at
most --in-flight prompts queued; an image whose server stops answering (refused, reset, or no
reply within --request-timeout, or no result within --timeout) is sent to another server, and
that server gets no more work. The run ends with every image done or reported failed.
Exit status: 0 if every image succeeded, 1 if one failed (the others still run), 2 for bad
arguments or when no server can be reached.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class WorkflowFailed(RuntimeError):
    """The server refused the workflow or it failed while running; the message says why."""


class ServerGone(RuntimeError):
    """The server did not answer (refused, reset, timed out): the image goes to another one."""


# What a server that stopped or hangs raises (an HTTPError is an answer, so it is not here).
_NO_ANSWER = (ConnectionError, TimeoutError, http.client.HTTPException)


class ComfyClient:
    def __init__(self, server: str, timeout: float = 600.0, request_timeout: float = 60.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.client_id = uuid.uuid4().hex

    # ------------------------------------------------------------------------------ HTTP
    def _open(self, path: str, data: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        try:
            return urllib.request.urlopen(request, timeout=self.request_timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, *_NO_ANSWER) as error:
            raise ServerGone(f"{self.server} does not answer: {error}") from None

    def get_json(self, path: str):
        with self._open(path) as reply:
            return json.loads(_read(reply, self.server))

    def upload_image(self, path: Path) -> str:
        """Upload into the server's input folder; the name it was stored under."""
        boundary = uuid.uuid4().hex
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
            .encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            path.read_bytes(), f"\r\n--{boundary}--\r\n".encode()])
        with self._open("/upload/image", body,
                        {"Content-Type": f"multipart/form-data; boundary={boundary}"}) as reply:
            answer = json.loads(_read(reply, self.server))
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def queue(self, workflow: dict) -> str:
        data = json.dumps({"prompt": workflow, "client_id": self.client_id}).encode()
        try:
            with self._open("/prompt", data, {"Content-Type": "application/json"}) as reply:
                return json.loads(_read(reply, self.server))["prompt_id"]
        except urllib.error.HTTPError as error:
            raise WorkflowFailed(_rejection_text(error.read())) from None

    def wait(self, prompt_id: str) -> dict:
        """The /history entry once the prompt has finished; raises WorkflowFailed on error."""
        deadline = time.monotonic() + self.timeout
        socket = _open_websocket(self.server, self.client_id)
        try:
            while time.monotonic() < deadline:
                entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
                if entry:                      # written once the prompt has finished
                    return _checked(entry)
                _wait_for_event(socket, prompt_id, 0.5)
        finally:
            if socket is not None:
                socket.close()
        raise ServerGone(f"{self.server} gave no result after {self.timeout:.0f} s")

    def download(self, item: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": item["filename"],
                                        "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
        with self._open(f"/view?{query}") as reply:
            return _read(reply, self.server)


def _read(reply, server: str) -> bytes:
    """The body of a reply; a connection that breaks while it is read is ServerGone."""
    try:
        return reply.read()
    except _NO_ANSWER as error:
        raise ServerGone(f"{server} stopped answering: {error}") from None


def _rejection_text(raw: bytes) -> str:
    """Readable text of a /prompt 400 answer (the error and each node's errors)."""
    try:
        answer = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
    lines = [answer.get("error", {}).get("message", "the server rejected the workflow")]
    for node_id, problem in answer.get("node_errors", {}).items():
        for error in problem.get("errors", []):
            lines.append(f"  node {node_id} ({problem.get('class_type')}): "
                         f"{error.get('message')}: {error.get('details')}")
    return "\n".join(lines)


def _checked(entry: dict) -> dict:
    status = entry.get("status", {})
    if status.get("status_str") == "error":
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                raise WorkflowFailed(f"node {data.get('node_id')} ({data.get('node_type')}): "
                                     f"{data.get('exception_message', '').strip()}")
        raise WorkflowFailed("the workflow failed")
    return entry


def _open_websocket(server: str, client_id: str):
    """A websocket for progress events, or None without the websocket-client package."""
    try:
        import websocket  # websocket-client, optional
    except ImportError:
        return None
    url = server.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
    try:
        return websocket.create_connection(url, timeout=5)
    except Exception:                                      # noqa: BLE001 - fall back to polling
        return None


def _wait_for_event(socket, prompt_id: str, seconds: float) -> None:
    """Sleep, or return early when the websocket says something about this prompt."""
    if socket is None:
        time.sleep(seconds)
        return
    socket.settimeout(seconds)
    try:
        message = socket.recv()
    except Exception:                                      # noqa: BLE001 - a timeout: poll again
        return
    if isinstance(message, str):
        event = json.loads(message)
        data = event.get("data", {})
        if event.get("type") == "progress" and data.get("prompt_id") in (None, prompt_id):
            print(f"    {data.get('value')}/{data.get('max')}", end="\r", flush=True)


def image_node(workflow: dict, chosen: str | None) -> str:
    """The id of the LoadImage node that receives each image."""
    if chosen is not None:
        if workflow.get(chosen, {}).get("class_type") != "LoadImage":
            raise SystemExit(f"--node {chosen}: not a LoadImage node of this workflow")
        return chosen
    loaders = [key for key, node in workflow.items() if node.get("class_type") == "LoadImage"]
    if not loaders:
        raise SystemExit("the workflow has no LoadImage node to put the images into")
    titled = [key for key in loaders if workflow[key].get("_meta", {}).get("title") == "Photo"]
    return (titled or loaders)[0]


def apply_overrides(workflow: dict, overrides: list[str]) -> None:
    """NODE.INPUT=VALUE settings (VALUE as JSON when it parses, else as text)."""
    for item in overrides:
        target, _, text = item.partition("=")
        node_id, _, name = target.partition(".")
        if not name or node_id not in workflow:
            raise SystemExit(f"--set {item}: write NODE_ID.INPUT=VALUE with a node of the workflow")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        workflow[node_id]["inputs"][name] = value


def run_one(client: ComfyClient, workflow: dict, node_id: str, image: Path, out: Path) -> list[Path]:
    """Upload, queue, wait, download; the files written (all of them, or none)."""
    job = json.loads(json.dumps(workflow))
    job[node_id]["inputs"]["image"] = client.upload_image(image)
    entry = client.wait(client.queue(job))
    files = {}
    for node_output in entry.get("outputs", {}).values():
        # core's savers list their files under "images"; BiRefNet Save Matte's clips and
        # sequences are under "matte_files" (its "images" is a temporary preview)
        for item in node_output.get("images", []) + node_output.get("matte_files", []):
            if item.get("type", "output") == "output":
                files[out / f"{image.stem}__{Path(item['filename']).name}"] = client.download(item)
    for path, data in files.items():
        _write_atomically(path, data)
    return list(files)


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Dispatcher:
    """Spreads images over servers, ``in_flight`` worker threads per server (so at most that
    many prompts queued on each). An image whose server stops answering goes back to the
    queue for a server that has not tried it; that server takes no more images. An image no
    live server is left to try is reported failed."""

    def __init__(self, clients: list[ComfyClient], images: list[Path], run) -> None:
        self.clients, self.run = clients, run
        self.pending = collections.deque(images)
        self.tried: dict[Path, set[str]] = {image: set() for image in images}
        self.down: set[str] = set()
        self.active = 0
        self.done: dict[Path, tuple[str, list[Path]]] = {}
        self.failed: dict[Path, str] = {}
        self.last_error: dict[Path, str] = {}
        self.lock = threading.Condition()

    def start(self, in_flight: int) -> None:
        workers = [threading.Thread(target=self._work, args=(client,), daemon=True)
                   for client in self.clients if client.server not in self.down
                   for _ in range(in_flight)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        with self.lock:
            self._fail_stranded()

    def _fail_stranded(self) -> None:
        """Fail the queued images that no live server is left to try."""
        alive = {client.server for client in self.clients} - self.down
        for image in [image for image in self.pending if not alive - self.tried[image]]:
            self.pending.remove(image)
            self.failed[image] = self.last_error.get(image, "no server left to run it")
            _say(f"{image.name}: FAILED\n{self.failed[image]}", error=True)

    def _take(self, client: ComfyClient) -> Path | None:
        with self.lock:
            while True:
                self._fail_stranded()
                if client.server in self.down:
                    return None
                for image in self.pending:
                    if client.server not in self.tried[image]:
                        self.pending.remove(image)
                        self.tried[image].add(client.server)
                        self.active += 1
                        return image
                if not self.pending and not self.active:
                    return None
                self.lock.wait(0.5)

    def _work(self, client: ComfyClient) -> None:
        while (image := self._take(client)) is not None:
            try:
                written = self.run(client, image)
            except ServerGone as error:
                with self.lock:
                    if client.server not in self.down:
                        self.down.add(client.server)
                        _say(f"{client.server} stopped answering ({error}); it gets no more "
                             "images", error=True)
                    self.last_error[image] = str(error)
                    self.pending.appendleft(image)
                    _say(f"{image.name}: re-sent (its server {client.server} stopped answering)")
            except (WorkflowFailed, OSError) as error:
                with self.lock:
                    self.failed[image] = str(error)
                    _say(f"{image.name}: FAILED\n{error}", error=True)
            else:
                with self.lock:
                    self.done[image] = (client.server, written)
                    _say(f"{image.name}: {len(written)} file(s) from {client.server}")
            finally:
                with self.lock:
                    self.active -= 1
                    self.lock.notify_all()


_PRINT_LOCK = threading.Lock()


def _say(text: str, error: bool = False) -> None:
    with _PRINT_LOCK:
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


def _images(args) -> list[Path]:
    paths = [Path(p) for p in args.image or []]
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise SystemExit(f"--images {folder}: not a folder")
        paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = [p for p in paths if not p.is_file()]
    if missing or not paths:
        raise SystemExit(f"no such image: {missing[0]}" if missing else "no images given: use "
                         "--image FILE or --images FOLDER")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", required=True, type=Path, help="API-format workflow JSON")
    parser.add_argument("--image", action="append", help="an input image (repeatable)")
    parser.add_argument("--images", help="a folder of input images")
    parser.add_argument("--out", type=Path, required=True, help="folder for the saved images")
    parser.add_argument("--server", action="append", metavar="URL",
                        help="a ComfyUI server (repeatable; default http://127.0.0.1:8188)")
    parser.add_argument("--in-flight", type=int, default=2, metavar="N",
                        help="prompts each server has queued at most (default 2)")
    parser.add_argument("--node", help="id of the LoadImage node to feed")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per image")
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="seconds a server may take to answer one request")
    args = parser.parse_args(argv)
    if args.in_flight < 1:
        raise SystemExit("--in-flight must be at least 1")
    try:
        workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read the workflow {args.workflow}: {error}")
    if "nodes" in workflow and "links" in workflow:
        raise SystemExit(f"{args.workflow} is a UI-format workflow; use its .api.json twin "
                         "(or export with 'Save (API Format)')")
    apply_overrides(workflow, args.set)
    node_id, images = image_node(workflow, args.node), _images(args)
    servers = list(dict.fromkeys(args.server or ["http://127.0.0.1:8188"]))
    clients = [ComfyClient(url, args.timeout, args.request_timeout) for url in servers]
    dispatcher = Dispatcher(clients, images,
                            lambda client, image: run_one(client, workflow, node_id, image, args.out))
    for client in clients:
        try:
            client.get_json("/system_stats")
        except (ServerGone, urllib.error.URLError, OSError) as error:
            dispatcher.down.add(client.server)
            print(f"cannot reach ComfyUI at {client.server}: {error}", file=sys.stderr)
    if len(dispatcher.down) == len(clients):
        print("no ComfyUI server can be reached", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    dispatcher.start(args.in_flight)
    if len(clients) > 1:
        print(f"{len(dispatcher.done)} of {len(images)} images done on "
              f"{len(clients) - len(dispatcher.down)} of {len(clients)} servers; "
              f"{len(dispatcher.failed)} failed")
    return 1 if dispatcher.failed else 0


if __name__ == "__main__":
    sys.exit(main())
