"""The pack's frontend extension (web/js) in headless Chromium against a real ComfyUI server.

Runs with the 2024 frontend (the default ComfyUI of tests/comfyui_server.py) and with the
current one (COMFYUI_DIR / COMFYUI_PYTHON). The browser harness is tests/browser.py.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.browser import (  # noqa: F401 - pytest fixtures
    browser,
    console_messages,
    load_ui_workflow,
    open_comfyui,
    pack_console_errors,
    page,
    queue_and_wait,
    screenshot,
    skip_first_run_dialogs,
)
from tests.comfyui_server import CHECKPOINT_NAME, PACK_LINK_NAME
from tests.test_comfyui_e2e import structured_image

SCRIPT = f"/extensions/{PACK_LINK_NAME}/js/birefnet.js"

# Builds LoadImage -> BiRefNetLoader -> (a frames node ->) the node under test -> SaveImage with
# LiteGraph.createNode / graph.add / connect, as a user would; returns the nodes' ids.
BUILD_GRAPH = """
([imageName, checkpoint, nodeType, repeat]) => {
  const graph = window.app.graph;
  graph.clear();
  const add = (type, pos, values = {}) => {
    const node = LiteGraph.createNode(type);
    node.pos = pos;
    graph.add(node);
    for (const [name, value] of Object.entries(values)) {
      const widget = node.widgets.find((w) => w.name === name);
      if (!widget) throw new Error(`${type} has no widget ${name}`);
      widget.value = value;
    }
    return node;
  };
  const slot = (node, name) => node.inputs.findIndex((input) => input.name === name);
  const load = add('LoadImage', [20, 420], { image: imageName });
  const loader = add('BiRefNetLoader', [20, 40],
                     { model: checkpoint, device: 'cpu', dtype: 'fp32' });
  let source = load;
  if (repeat > 1) {
    source = add('RepeatImageBatch', [20, 300], { amount: repeat });
    load.connect(0, source, slot(source, 'image'));
  }
  const node = add(nodeType, [380, 40], { resolution: 64 });
  loader.connect(0, node, slot(node, 'model'));
  source.connect(0, node, slot(node, nodeType === 'BiRefNetVideoMatte' ? 'frames' : 'image'));
  const save = add('SaveImage', [760, 420], { filename_prefix: 'web_' + nodeType });
  const cutout = node.outputs.findIndex((output) => output.name === 'cutout_rgba');
  node.connect(cutout, save, 0);
  const canvas = window.app.canvas;
  canvas.ds.scale = 1;
  canvas.ds.offset[0] = 40;         // clear of the current frontend's menu bars
  canvas.ds.offset[1] = 110;
  canvas.setDirty(true, true);
  return { load: load.id, loader: loader.id, node: node.id, save: save.id };
}
"""

PREVIEW_STATE = """
(id) => {
  const node = window.app.graph.getNodeById(id);
  const state = node.birefnetPreview;
  if (!state) return null;
  return {
    split: state.split, current: state.current, frameLabel: state.frameLabel,
    entries: state.entries.map((e) => ({
      index: e.index, count: e.count, failed: e.failed,
      before: e.ready.before && e.before.naturalWidth,
      after: e.ready.after && e.after.naturalWidth })),
    urls: state.entries.map((e) => [e.before.src, e.after.src]),
    imageRect: state.imageRect, prevRect: state.prevRect, nextRect: state.nextRect,
    widgets: node.widgets.map((w) => w.name), size: [node.size[0], node.size[1]],
  };
}
"""

# A node's widgets_values in the saved workflow, and the values of the node's own widgets.
SAVED_VALUES = """
(id) => {
  const node = window.app.graph.getNodeById(id);
  const saved = window.app.graph.serialize().nodes.find((n) => n.id === node.id);
  const own = node.widgets.filter((w) => !w.name.startsWith('birefnet_'));
  return { values: saved.widgets_values, expected: own.map((w) => w.value) };
}
"""

# Node-local (body) coordinates -> page coordinates.
TO_SCREEN = """
([id, x, y]) => {
  const app = window.app;
  const node = app.graph.getNodeById(id);
  const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + x, node.pos[1] + y]);
  const box = app.canvas.canvas.getBoundingClientRect();
  return [box.left + cx, box.top + cy];
}
"""


@pytest.fixture(scope="module")
def input_image(comfyui) -> str:
    return comfyui.put_input_image("web_preview.png", structured_image(96, 64, seed=3))


def build(page, image: str, node_type: str, repeat: int = 1) -> dict:
    return page.evaluate(BUILD_GRAPH, [image, CHECKPOINT_NAME, node_type, repeat])


def redraw(page) -> None:
    page.evaluate("() => window.app.canvas.draw(true, true)")
    page.wait_for_timeout(50)


def wait_preview(page, node_id: int, timeout_ms: int = 30_000) -> dict:
    """The node's preview state once every image of it has loaded."""
    page.wait_for_function(
        """(id) => {
          const state = window.app.graph.getNodeById(id).birefnetPreview;
          return state && state.entries.length &&
                 state.entries.every((e) => e.ready.before && e.ready.after);
        }""", arg=node_id, timeout=timeout_ms)
    redraw(page)
    return page.evaluate(PREVIEW_STATE, node_id)


def to_screen(page, node_id: int, x: float, y: float) -> tuple[float, float]:
    return tuple(page.evaluate(TO_SCREEN, [node_id, x, y]))


def screen_rect(page, node_id: int, rect: dict) -> dict:
    left, top = to_screen(page, node_id, rect["x"], rect["y"])
    right, bottom = to_screen(page, node_id, rect["x"] + rect["w"], rect["y"] + rect["h"])
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def pixels(page, clip: dict) -> np.ndarray:
    png = page.screenshot(clip=clip)
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(np.float64)


def fetch_image(comfyui, url: str, mode: str) -> Image.Image:
    path = url[url.index("/view"):]
    with Image.open(io.BytesIO(comfyui.get_bytes(path))) as image:
        return image.convert(mode)


def expected_preview(comfyui, before_url: str, after_url: str, width: int, height: int,
                     split: float) -> np.ndarray:
    """What the preview should show at width x height: the source left of the split, the RGBA
    cutout over an 8 px checkerboard (#c4c4c4 / #f2f2f2) right of it."""
    size = (width, height)
    before = np.asarray(fetch_image(comfyui, before_url, "RGB").resize(size, Image.BILINEAR))
    after = np.asarray(fetch_image(comfyui, after_url, "RGBA").resize(size, Image.BILINEAR))
    y, x = np.mgrid[0:height, 0:width]
    checker = np.where(((x // 8 + y // 8) % 2 == 0)[..., None], 0xC4, 0xF2).astype(np.float64)
    alpha = after[..., 3:].astype(np.float64) / 255
    cutout = after[..., :3] * alpha + checker * (1 - alpha)
    left = (x < split * width)[..., None]
    return np.where(left, before.astype(np.float64), cutout)


def assert_no_pack_errors(messages: list[dict]) -> None:
    errors = pack_console_errors(messages)
    assert not errors, f"console errors from the pack: {errors}"


# -- tests --------------------------------------------------------------------------------------
def test_extension_is_listed_and_loads(comfyui, page, console_messages):
    assert SCRIPT in comfyui.get_json("/extensions")
    registered = page.evaluate("() => window.app.extensions.some((e) => e.name === 'birefnet.kit')")
    assert registered, "web/js/birefnet.js did not register its extension"
    served = page.evaluate("""async (url) => { const r = await fetch(url);
                                return [r.status, r.headers.get('content-type')]; }""", SCRIPT)
    assert served[0] == 200 and "javascript" in served[1], served
    assert_no_pack_errors(console_messages)


def test_segment_preview_split_and_screenshot(comfyui, page, console_messages, input_image,
                                              tmp_path):
    ids = build(page, input_image, "BiRefNetSegment")
    node = ids["node"]
    redraw(page)                      # a node with no preview yet draws as before
    assert page.evaluate(PREVIEW_STATE, node) is None
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert set(prompt[str(node)]["inputs"]) == {
        "model", "image", "resolution", "batch_size", "threshold", "invert",
        "background_color", "refine_edges"}, "the extension must not change the prompt"

    queue_and_wait(page, timeout=120)
    state = wait_preview(page, node)
    assert state["entries"] == [{"index": 0, "count": 1, "failed": False,
                                 "before": 96, "after": 96}]
    before_url, after_url = state["urls"][0]
    assert "birefnet_preview" in state["widgets"]
    rect = state["imageRect"]
    assert rect["w"] > 150 and abs(rect["h"] / rect["w"] - 64 / 96) < 0.02, rect
    assert state["size"][1] >= rect["y"] + rect["h"], "the node must be tall enough"
    assert state["split"] == pytest.approx(0.5)

    # Drag the split handle to a quarter of the width with the mouse.
    start = to_screen(page, node, rect["x"] + 0.5 * rect["w"], rect["y"] + rect["h"] / 2)
    end = to_screen(page, node, rect["x"] + 0.25 * rect["w"], rect["y"] + rect["h"] / 2)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=6)
    page.mouse.up()
    redraw(page)
    moved = page.evaluate(PREVIEW_STATE, node)
    assert moved["split"] == pytest.approx(0.25, abs=0.03), moved["split"]
    assert not page.evaluate(f"() => window.app.graph.getNodeById({node}).birefnetPreview.dragging")
    node_pos = page.evaluate(f"() => Array.from(window.app.graph.getNodeById({node}).pos)")
    assert node_pos == [380, 40], "dragging the split must not move the node"

    saved = page.evaluate(SAVED_VALUES, node)
    assert saved["values"] == saved["expected"], "the preview must stay out of the workflow"

    shot = screenshot(page, tmp_path / "segment_preview.png")
    assert shot.stat().st_size > 0
    area = pixels(page, screen_rect(page, node, moved["imageRect"]))
    assert area.std() > 10 and len(np.unique(area.reshape(-1, 3), axis=0)) > 50, \
        "the preview area is blank"
    # Left of the split the source, right of it the cutout over the checkerboard.
    expected = expected_preview(comfyui, before_url, after_url, area.shape[1], area.shape[0],
                                moved["split"])
    split_x = int(round(moved["split"] * area.shape[1]))
    keep = np.ones(area.shape[1], bool)
    keep[max(0, split_x - 8): split_x + 8] = False        # the split line and its handle
    error = np.abs(area - expected)[:, keep]
    assert np.median(error) < 6 and np.percentile(error, 95) < 25, \
        (np.median(error), np.percentile(error, 95))
    assert_no_pack_errors(console_messages)


def test_refine_edges_preview(page, console_messages, input_image):
    ids = build(page, input_image, "BiRefNetSegment")
    refine = page.evaluate("""([loadId, segmentId, saveId]) => {
      const graph = window.app.graph;
      const [load, segment, save] = [loadId, segmentId, saveId].map((id) => graph.getNodeById(id));
      // Not the Segment prompt of the test above: a cached node sends no preview again.
      segment.widgets.find((w) => w.name === 'batch_size').value = 3;
      const node = LiteGraph.createNode('BiRefNetRefineEdges');
      node.pos = [760, 40];
      graph.add(node);
      const slot = (name) => node.inputs.findIndex((input) => input.name === name);
      load.connect(0, node, slot('image'));
      segment.connect(0, node, slot('mask'));
      node.connect(node.outputs.findIndex((o) => o.name === 'cutout_rgba'), save, 0);
      return node.id;
    }""", [ids["load"], ids["node"], ids["save"]])
    queue_and_wait(page, timeout=120)
    for node in (ids["node"], refine):
        state = wait_preview(page, node)
        assert [(e["index"], e["count"], e["before"], e["after"]) for e in state["entries"]] == \
            [(0, 1, 96, 96)]
        assert state["frameLabel"] is None and state["prevRect"] is None
    assert_no_pack_errors(console_messages)


def test_loader_shows_on_disk_or_download(page, console_messages, input_image, tmp_path):
    ids = build(page, input_image, "BiRefNetSegment")
    loader = ids["loader"]
    status = """(id) => { const s = window.app.graph.getNodeById(id).birefnetModelStatus;
                          return s && { name: s.name, state: s.state, label: s.label,
                                        detail: s.detail }; }"""
    redraw(page)                      # the status follows the combo's value when drawn
    page.wait_for_function(f"() => ({status})({loader})?.state === 'on disk'", timeout=10_000)
    on_disk = page.evaluate(status, loader)
    assert on_disk["name"] == CHECKPOINT_NAME and on_disk["label"] == "on disk"
    assert on_disk["detail"].endswith(CHECKPOINT_NAME)

    # Refreshing the node definitions asks the server again.
    with page.expect_request(lambda request: "/birefnet/models" in request.url, timeout=10_000):
        page.evaluate("async () => { await window.app.refreshComboInNodes(); }")

    # Pick another model in the combo's menu, with the mouse.
    widget = page.evaluate("""(id) => {
      const node = window.app.graph.getNodeById(id);
      const widget = node.widgets.find((w) => w.name === 'model');
      return { y: widget.last_y ?? widget.y, width: node.size[0] };
    }""", loader)
    page.mouse.click(*to_screen(page, loader, widget["width"] / 2,
                                widget["y"] + 10))
    page.locator(".litecontextmenu .litemenu-entry", has_text="BiRefNet_HR").first.click()
    page.wait_for_function(f"() => ({status})({loader})?.state === 'download'", timeout=10_000)
    download = page.evaluate(status, loader)
    assert download["name"] == "BiRefNet_HR"
    assert "download" in download["label"]
    assert "ZhengPeng7/BiRefNet_HR" in download["detail"] and " to " in download["detail"]
    redraw(page)
    screenshot(page, tmp_path / "loader_download.png")
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert "birefnet_model_status" not in prompt[str(loader)]["inputs"]
    assert_no_pack_errors(console_messages)


def test_workflow_round_trip(page, console_messages, input_image):
    ids = build(page, input_image, "BiRefNetSegment")
    redraw(page)
    saved = page.evaluate(SAVED_VALUES, ids["loader"])
    assert saved["values"] == saved["expected"] == [CHECKPOINT_NAME, "cpu", "fp32", "auto",
                                                    "auto"]
    before = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    workflow = page.evaluate("() => window.app.graph.serialize()")
    page.evaluate("() => window.app.graph.clear()")
    load_ui_workflow(page, workflow)
    redraw(page)
    page.wait_for_function(
        """([id, name]) => {
          const status = window.app.graph.getNodeById(id)?.birefnetModelStatus;
          return status && status.name === name && status.state === 'on disk';
        }""", arg=[ids["loader"], CHECKPOINT_NAME], timeout=10_000)
    after = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert after == before
    assert page.evaluate(PREVIEW_STATE, ids["node"]) is None
    assert_no_pack_errors(console_messages)


def test_loader_without_the_route_fails_quietly(browser, comfyui, input_image):
    messages: list[dict] = []
    skip_first_run_dialogs(comfyui)
    browser.route("**/birefnet/models*", lambda route: route.fulfill(status=404, body="missing"))
    try:
        quiet = open_comfyui(browser, comfyui.base_url, messages)
        ids = build(quiet, input_image, "BiRefNetSegment")
        redraw(quiet)
        quiet.wait_for_function(
            "(id) => window.app.graph.getNodeById(id).birefnetModelStatus?.state === 'unknown'",
            arg=ids["loader"], timeout=10_000)
        quiet.close()
    finally:
        browser.unroute("**/birefnet/models*")
    # The browser itself logs the 404 of the mocked route; the extension only warns.
    scripted = [m for m in pack_console_errors(messages)
                if not m["text"].startswith("Failed to load resource")]
    assert not scripted, scripted
    assert any(m["type"] == "warning" and "BiRefNet" in m["text"] for m in messages), messages


def test_video_matte_frame_stepping(page, console_messages, input_image, tmp_path):
    ids = build(page, input_image, "BiRefNetVideoMatte", repeat=3)
    node = ids["node"]
    queue_and_wait(page, timeout=120)
    state = wait_preview(page, node)
    entries = state["entries"]
    indices = [e["index"] for e in entries]
    assert len(entries) >= 2 and {e["count"] for e in entries} == {3}
    assert indices[0] == 0 and indices == sorted(set(indices)), indices
    assert state["current"] == 0 and state["frameLabel"] == "frame 1 of 3"
    prev_rect, next_rect = state["prevRect"], state["nextRect"]
    assert prev_rect and next_rect

    def click(rect: dict) -> dict:
        page.mouse.click(*to_screen(page, node, rect["x"] + rect["w"] / 2,
                                    rect["y"] + rect["h"] / 2))
        redraw(page)
        return page.evaluate(PREVIEW_STATE, node)

    for step in range(1, len(entries) + 1):        # forward through the frames and round
        shown = click(next_rect)
        current = step % len(entries)
        assert shown["current"] == current
        assert shown["frameLabel"] == f"frame {indices[current] + 1} of 3"
    assert click(prev_rect)["current"] == len(entries) - 1
    assert click(next_rect)["current"] == 0

    header = {"x": prev_rect["x"], "y": prev_rect["y"], "h": prev_rect["h"],
              "w": next_rect["x"] + next_rect["w"] - prev_rect["x"]}
    assert pixels(page, screen_rect(page, node, header)).std() > 10, \
        "the frame arrows and label are not drawn"
    screenshot(page, tmp_path / "video_matte_preview.png")
    assert_no_pack_errors(console_messages)
