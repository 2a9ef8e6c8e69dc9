"""Headless Chromium (Debian's /usr/bin/chromium, driven by Python playwright) on a ComfyUI page.

The browser tests (tests/test_web.py, the workflow tests) import the fixtures ``browser``,
``console_messages`` and ``page`` from here, next to the session fixture ``comfyui`` of
tests/conftest.py, and use the helpers: load_ui_workflow, queue_and_wait, pack_console_errors,
screenshot. Works with the 2024 frontend and the current one (``$COMFYUI_DIR``, and
``$COMFYUI_FRONTEND_ROOT`` for a newer frontend package): in the current one in both renderers,
the classic canvas and "Nodes 2.0" (fixture ``renderer``: on at page load, or switched on once
the graph has run).

The browser is Debian's package, never a downloaded build: tests/install_chromium.sh installs it.
A missing browser fails the tests (never skips them).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.comfyui_server import PACK_LINK_NAME, frontend_root

CHROMIUM = os.environ.get("BIREFNET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
APP_TIMEOUT_MS = 60_000
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
EXTENSION_NAME = "birefnet.kit"       # web/js/birefnet.js registers this
MIN_FREE_BYTES = 256 * 2**20           # Chromium dies (SIGILL) when it cannot write its files
NODES2_SETTING = "Comfy.VueNodes.Enabled"
# The renderers a page can use: the classic canvas; Nodes 2.0 from page load; Nodes 2.0 switched
# on later (the test switches with switch_nodes2 once there is something to show).
RENDERERS = ("classic", "nodes2", "nodes2_switched")
NO_NODES2 = ("Nodes 2.0 is a renderer of the current frontend only: set COMFYUI_FRONTEND_ROOT to "
             "the static folder of comfyui-frontend-package (see ../shared/comfyui/README.md)")
INSTALL_HINT = ("Chromium is missing at {path}: install Debian's package with "
                "`apt-get install -y chromium` (tests/install_chromium.sh does it as root)")


class BrowserUnavailable(RuntimeError):
    """No Chromium binary or no playwright package."""


# -- launching --------------------------------------------------------------------------------
def check_chromium(path: str = CHROMIUM) -> str:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise BrowserUnavailable(INSTALL_HINT.format(path=path))
    return path


def launch(user_data_dir: str | Path):
    """(playwright, context): a persistent headless Chromium context in a fresh profile folder.
    Stop both with close(...)."""
    executable = check_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise BrowserUnavailable("the playwright Python package is missing: pip install "
                                 "playwright (see requirements-test.txt)") from error
    check_free_space(Path(user_data_dir))
    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            ignore_default_args=shared_memory_flags(), viewport=VIEWPORT, device_scale_factor=1)
    except BaseException:
        playwright.stop()
        raise
    # Only this machine is ever asked: the current frontend looks for news on the internet.
    context.route(is_external, lambda route: route.abort())
    return playwright, context


def check_free_space(folder: Path) -> None:
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise BrowserUnavailable(f"only {free / 2**20:.0f} MiB free under {folder}: Chromium needs "
                                 f"{MIN_FREE_BYTES // 2**20} MiB for its profile; free some disk")


def shared_memory_flags() -> list[str]:
    """playwright's default flags to drop: it moves Chromium's shared memory from /dev/shm to
    the temp folder, whose disk may be nearly full; keep /dev/shm where it has room."""
    try:
        room = shutil.disk_usage("/dev/shm").free
    except OSError:
        return []
    return ["--disable-dev-shm-usage"] if room >= 4 * MIN_FREE_BYTES else []


def is_external(url: str) -> bool:
    """Whether a request would leave this machine (anything but loopback http(s))."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and parts.hostname not in LOOPBACK


def close(playwright, context) -> None:
    try:
        context.close()
    finally:
        playwright.stop()


def record_console(page, messages: list[dict]) -> None:
    """Append every console message and uncaught page error of page to messages, as
    {"type", "text", "url"} ("pageerror" for uncaught errors, with the stack as url)."""
    def on_console(message):
        location = message.location or {}
        messages.append({"type": message.type, "text": message.text,
                         "url": location.get("url", "")})

    def on_error(error):
        messages.append({"type": "pageerror", "text": str(error),
                         "url": getattr(error, "stack", "") or ""})

    page.on("console", on_console)
    page.on("pageerror", on_error)


def open_comfyui(context, base_url: str, messages: list[dict]):
    """A new page on ComfyUI, once the app, its graph, LiteGraph and the pack's extension are up."""
    page = context.new_page()
    record_console(page, messages)
    page.goto(base_url, wait_until="domcontentloaded")
    page.wait_for_function(
        """(name) => window.app && window.app.graph && window.app.canvas && window.LiteGraph
                     && (window.app.extensions || []).some((e) => e.name === name)""",
        arg=EXTENSION_NAME, timeout=APP_TIMEOUT_MS)
    # The current frontend then restores or loads a workflow through its workflow store; a
    # graph built before that ends would be replaced.
    page.wait_for_function(
        """() => { const store = window.app.extensionManager?.workflow;
                   return !store || (!!store.activeWorkflow && !store.isBusy); }""",
        timeout=APP_TIMEOUT_MS)
    close_dialogs(page)
    return page


def close_dialogs(page) -> None:
    """Close what the current frontend may open on a first visit (the templates dialog)."""
    for _ in range(3):
        if not page.evaluate("() => !!document.querySelector('.p-dialog-mask')"):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)


def skip_first_run_dialogs(comfyui) -> None:
    """Tell the current frontend that this (fresh) user has seen its tutorial, so that no
    template browser opens over the canvas. The 2024 server just stores the setting."""
    comfyui.request("POST", "/settings/Comfy.TutorialCompleted", True)


def set_nodes2(comfyui, on: bool) -> None:
    """Store the Nodes 2.0 setting on the server (read by the next page opened). The 2024
    server just stores it."""
    comfyui.request("POST", f"/settings/{NODES2_SETTING}", on)


def nodes2_shown(page) -> bool:
    """Whether the page draws its nodes as DOM (Nodes 2.0)."""
    return page.evaluate("() => !!document.querySelector('.lg-node[data-node-id]')")


def switch_nodes2(page, on: bool) -> None:
    """Turn Nodes 2.0 on or off in the open page, as the settings dialog does, and wait until
    the nodes are (or are no longer) DOM."""
    page.evaluate("async ([id, on]) => { await window.app.extensionManager.setting.set(id, on); }",
                  [NODES2_SETTING, on])
    page.wait_for_function(
        "(on) => !!document.querySelector('.lg-node[data-node-id]') === on", arg=on,
        timeout=10_000)
    page.wait_for_timeout(300)                         # let the moved elements lay out


def current_frontend() -> bool:
    """Whether the suite runs the newer frontend package (COMFYUI_FRONTEND_ROOT)."""
    return frontend_root() is not None


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """A headless Chromium context (fresh profile), shared by a test module."""
    profile = tempfile.mkdtemp(prefix="birefnet-chromium-")
    problem = None
    try:
        playwright, context = launch(profile)
    except BrowserUnavailable as error:
        problem = str(error)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    if problem:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(problem, pytrace=False)
    try:
        yield context
    finally:
        close(playwright, context)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def console_messages() -> list[dict]:
    """What the page of the ``page`` fixture logged (see record_console)."""
    return []


@pytest.fixture
def page(browser, comfyui, console_messages):
    """A fresh ComfyUI page (the app, graph and pack extension loaded), classic canvas."""
    skip_first_run_dialogs(comfyui)
    set_nodes2(comfyui, False)
    opened = open_comfyui(browser, comfyui.base_url, console_messages)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=RENDERERS)
def renderer(request) -> str:
    """Which renderer the ``rendered_page`` uses; Nodes 2.0 only with the current frontend."""
    if request.param != "classic" and not current_frontend():
        pytest.skip(NO_NODES2)
    return request.param


@pytest.fixture
def rendered_page(browser, comfyui, console_messages, renderer):
    """A fresh ComfyUI page in the renderer of ``renderer`` (for "nodes2_switched" the page
    opens classic: the test calls switch_nodes2)."""
    skip_first_run_dialogs(comfyui)
    set_nodes2(comfyui, renderer == "nodes2")
    opened = open_comfyui(browser, comfyui.base_url, console_messages)
    try:
        if renderer != "classic":
            shown = opened.evaluate("(id) => window.app.extensionManager.setting.get(id)",
                                    NODES2_SETTING)
            assert shown == (renderer == "nodes2"), f"{NODES2_SETTING} is {shown}"
        yield opened
    finally:
        opened.close()
        set_nodes2(comfyui, False)


# -- helpers ----------------------------------------------------------------------------------
def load_ui_workflow(page, workflow: dict) -> None:
    """Load a UI-format workflow (nodes, links, ...) into the page's graph: app.loadGraphData."""
    page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)


_QUEUE_AND_WAIT = """
async ([timeoutMs]) => {
  const { api } = await import('/scripts/api.js');
  const app = window.app;
  return await new Promise((resolve) => {
    const original = api.queuePrompt;
    let promptId = null;
    let done = false;
    const listeners = [];
    const finish = (result) => {
      if (done) return;
      done = true;
      for (const [type, fn] of listeners) api.removeEventListener(type, fn);
      api.queuePrompt = original;
      clearTimeout(timer);
      resolve({ prompt_id: promptId, ...result });
    };
    const on = (type, fn) => { listeners.push([type, fn]); api.addEventListener(type, fn); };
    const mine = (detail) => !promptId || !detail?.prompt_id || detail.prompt_id === promptId;
    const timer = setTimeout(() => finish({ status: 'timeout' }), timeoutMs);
    // The 2024 frontend ends a prompt with `executing` null; the current one also sends
    // execution_success (and its `executing` detail is the node id, or null at the end).
    let endedEarly = false;   // the end came over the websocket before the POST's answer
    on('executing', ({ detail }) => {
      const node = detail && typeof detail === 'object' ? detail.node : detail;
      if (node != null) return;
      if (promptId) finish({ status: 'success' });
      else endedEarly = true;
    });
    on('execution_success', ({ detail }) => { if (mine(detail)) finish({ status: 'success' }); });
    on('execution_error', ({ detail }) => {
      if (mine(detail)) finish({ status: 'error', error: detail });
    });
    on('execution_interrupted', ({ detail }) => {
      if (mine(detail)) finish({ status: 'interrupted', error: detail });
    });
    // Learn the prompt id (and validation errors) from the API call the app makes.
    api.queuePrompt = async function (...args) {
      try {
        const response = await original.apply(this, args);
        promptId = response?.prompt_id ?? null;
        const errors = response?.node_errors;
        if (errors && Object.keys(errors).length) finish({ status: 'rejected', error: errors });
        else if (endedEarly) finish({ status: 'success' });
        return response;
      } catch (error) {
        finish({ status: 'rejected', error: error?.response ?? String(error) });
        throw error;
      }
    };
    Promise.resolve(app.queuePrompt(0, 1)).catch(
      (error) => finish({ status: 'rejected', error: String(error) }));
  });
}
"""


def queue_and_wait(page, timeout: float = 120.0) -> dict:
    """Queue the page's graph (app.queuePrompt(0, 1)) and wait until it has run.

    Returns {"status": "success", "prompt_id"}; raises AssertionError on a rejected, failed,
    interrupted or timed-out prompt.
    """
    result = page.evaluate(_QUEUE_AND_WAIT, [int(timeout * 1000)])
    if result.get("status") != "success":
        raise AssertionError(f"the queued prompt did not succeed: {result}")
    return result


def pack_console_errors(messages: list[dict]) -> list[dict]:
    """The console errors and uncaught page errors that come from the pack's files or mention
    BiRefNet."""
    def from_pack(message: dict) -> bool:
        where = f"{message.get('url', '')}\n{message.get('text', '')}".lower()
        return PACK_LINK_NAME in where or "birefnet" in where

    return [m for m in messages if m.get("type") in ("error", "pageerror") and from_pack(m)]


def screenshot(page, path: str | Path) -> Path:
    """A PNG of the page's viewport at path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path
