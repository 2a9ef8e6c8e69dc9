"""The pack's frontend extension (web/js) in headless Chromium against a real ComfyUI server.

Runs with the 2024 frontend (the default ComfyUI of tests/comfyui_server.py) and with the
current one (COMFYUI_DIR / COMFYUI_PYTHON, COMFYUI_FRONTEND_ROOT): the preview, the Loader's
status and (tests/test_web_workflows.py) the Evaluate table are DOM widgets, checked in the
classic canvas and, with the current frontend, in Nodes 2.0 on from page load and switched on
later (fixture ``renderer``). The checks read the page: where the elements are, that nothing
covers them, and their pixels. The browser harness is tests/browser.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.browser import (  # noqa: F401 - pytest fixtures
    browser,
    console_messages,
    load_ui_workflow,
    nodes2_shown,
    open_comfyui,
    pack_console_errors,
    page,
    queue_and_wait,
    rendered_page,
    renderer,
    screenshot,
    skip_first_run_dialogs,
    switch_nodes2,
)
from tests.comfyui_server import CHECKPOINT_NAME, PACK_LINK_NAME
from tests.test_comfyui_e2e import structured_image
from tests.web_views import (
    PREVIEW_STATE,
    STATUS_VIEW,
    as_clip,
    assert_preview_shows,
    pixels,
)

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

# A node's widgets_values in the saved workflow, and the values of the node's own widgets.
SAVED_VALUES = """
(id) => {
  const node = window.app.graph.getNodeById(id);
  const saved = window.app.graph.serialize().nodes.find((n) => String(n.id) === String(node.id));
  const own = node.widgets.filter((w) => !w.name.startsWith('birefnet_'));
  return { values: saved.widgets_values, expected: own.map((w) => w.value) };
}
"""



@pytest.fixture(scope="module")
def input_image(comfyui) -> str:
    return comfyui.put_input_image("web_preview.png", structured_image(96, 64, seed=3))


# A batch_size per renderer: the server caches a node whose inputs did not change, and a cached
# node sends no preview again.
BATCH = {"classic": 4, "nodes2": 5, "nodes2_switched": 6}


def build(page, image: str, node_type: str, repeat: int = 1, batch_size: int | None = None
          ) -> dict:
    ids = page.evaluate(BUILD_GRAPH, [image, CHECKPOINT_NAME, node_type, repeat])
    if batch_size is not None:
        page.evaluate("""([id, size]) => { window.app.graph.getNodeById(id).widgets
                           .find((w) => w.name === 'batch_size').value = size; }""",
                      [ids["node"], batch_size])
    page.wait_for_timeout(100)
    return ids


def redraw(page) -> None:
    page.evaluate("() => window.app.canvas.draw(true, true)")
    page.wait_for_timeout(50)


def wait_preview(page, node_id, timeout_ms: int = 30_000) -> dict:
    """The node's preview state once every image of it has loaded and it is laid out."""
    page.wait_for_function(
        """(id) => {
          const state = window.app.graph.getNodeById(id).birefnetPreview;
          return state && state.entries.length &&
                 state.entries.every((e) => e.ready.before && e.ready.after);
        }""", arg=node_id, timeout=timeout_ms)
    redraw(page)
    page.wait_for_timeout(200)
    return page.evaluate(PREVIEW_STATE, node_id)


def show_in(page, renderer: str) -> None:
    """For "nodes2_switched": turn Nodes 2.0 on now; check the page shows the renderer."""
    if renderer == "nodes2_switched":
        switch_nodes2(page, True)
    assert nodes2_shown(page) == (renderer != "classic"), renderer


def drag_split(page, box: dict, start: float, end: float) -> None:
    y = box["y"] + box["h"] / 2
    page.mouse.move(box["x"] + start * box["w"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + end * box["w"], y, steps=6)
    page.mouse.up()
    page.wait_for_timeout(100)


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


def test_segment_preview_split_and_screenshot(comfyui, rendered_page, renderer, console_messages,
                                              input_image, tmp_path):
    page = rendered_page
    ids = build(page, input_image, "BiRefNetSegment", batch_size=BATCH[renderer])
    node = ids["node"]
    redraw(page)                      # a node with no preview yet draws as before
    assert page.evaluate(PREVIEW_STATE, node) is None
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert set(prompt[str(node)]["inputs"]) == {
        "model", "image", "resolution", "batch_size", "threshold", "invert",
        "background_color", "refine_edges"}, "the extension must not change the prompt"

    queue_and_wait(page, timeout=120)
    wait_preview(page, node)
    show_in(page, renderer)
    state = wait_preview(page, node)
    assert state["entries"] == [{"index": 0, "count": 1, "failed": False,
                                 "before": 96, "after": 96}]
    assert "birefnet_preview" in state["widgets"]
    assert state["inNode"] == (renderer != "classic")
    box = state["picture"]
    assert box["w"] > 150 and abs(box["h"] / box["w"] - 64 / 96) < 0.02, box
    assert state["split"] == pytest.approx(0.5)
    assert_preview_shows(comfyui, page, state)

    # Drag the split handle to a quarter of the width with the mouse: the picture follows.
    before_drag = pixels(page, as_clip(box))
    drag_split(page, box, 0.5, 0.25)
    moved = page.evaluate(PREVIEW_STATE, node)
    assert moved["split"] == pytest.approx(0.25, abs=0.03), moved["split"]
    assert not page.evaluate(f"() => window.app.graph.getNodeById({node!r}).birefnetPreview"
                             ".dragging")
    assert moved["pos"] == state["pos"], "dragging the split must not move the node"
    assert_preview_shows(comfyui, page, moved)
    after_drag = pixels(page, as_clip(moved["picture"]))
    band = slice(int(0.3 * after_drag.shape[1]), int(0.45 * after_drag.shape[1]))
    assert np.abs(after_drag[:, band] - before_drag[:, band]).mean() > 5, \
        "the picture did not change between the old and the new split"

    saved = page.evaluate(SAVED_VALUES, node)
    assert saved["values"] == saved["expected"], "the preview must stay out of the workflow"
    assert screenshot(page, tmp_path / f"segment_preview_{renderer}.png").stat().st_size > 0
    if renderer == "nodes2_switched":           # and back to the canvas
        switch_nodes2(page, False)
        back = wait_preview(page, node)
        assert not back["inNode"]
        assert_preview_shows(comfyui, page, back)
    assert_no_pack_errors(console_messages)


def test_refine_edges_preview(comfyui, page, console_messages, input_image):
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
        assert state["frameLabel"] is None and state["label"] == ""
        assert state["prev"] is None and state["next"] is None, "no arrows for one frame"
        assert_preview_shows(comfyui, page, state)
    assert_no_pack_errors(console_messages)


def pick_model(page, loader, name: str) -> None:
    """Choose name in the Loader's model combo with the mouse, in either renderer."""
    if nodes2_shown(page):
        page.locator(f'[data-node-id="{loader}"] [data-widget-name="model"] '
                     'button[role="combobox"]').click()
        page.get_by_role("option", name=name, exact=True).click()
        return
    widget = page.evaluate("""(id) => {
      const node = window.app.graph.getNodeById(id);
      const widget = node.widgets.find((w) => w.name === 'model');
      const [x, y] = window.app.canvas.ds.convertOffsetToCanvas(
          [node.pos[0] + node.size[0] / 2, node.pos[1] + (widget.last_y ?? widget.y) + 10]);
      const box = window.app.canvas.canvas.getBoundingClientRect();
      return [box.left + x, box.top + y];
    }""", loader)
    page.mouse.click(*widget)
    page.locator(".litecontextmenu .litemenu-entry", has_text=name).first.click()


def test_loader_shows_on_disk_or_download(rendered_page, renderer, console_messages, input_image,
                                          tmp_path):
    page = rendered_page
    ids = build(page, input_image, "BiRefNetSegment")
    loader = ids["loader"]
    show_in(page, renderer)
    view = f"() => ({STATUS_VIEW})({loader!r})"
    page.wait_for_function(f"() => ({view})()?.shownState === 'on disk'", timeout=10_000)
    on_disk = page.evaluate(view)
    assert on_disk["name"] == CHECKPOINT_NAME and on_disk["label"] == "on disk"
    # The route names files relative to the model folders, never by server path.
    assert on_disk["detail"] == f"birefnet/{CHECKPOINT_NAME}", on_disk
    assert on_disk["text"].split("\n") == ["on disk", f"birefnet/{CHECKPOINT_NAME}"]
    assert on_disk["dot"] == "rgb(76, 175, 80)" and on_disk["onTop"], on_disk
    assert on_disk["inNode"] == (renderer != "classic")

    # Refreshing the node definitions asks the server again.
    with page.expect_request(lambda request: "/birefnet/models" in request.url, timeout=10_000):
        page.evaluate("async () => { await window.app.refreshComboInNodes(); }")

    pick_model(page, loader, "BiRefNet_HR")
    page.wait_for_function(f"() => ({view})()?.shownState === 'download'", timeout=10_000)
    download = page.evaluate(view)
    assert download["name"] == "BiRefNet_HR" and "download" in download["label"]
    assert "ZhengPeng7/BiRefNet_HR" in download["detail"] and " to " in download["detail"]
    lines = download["text"].split("\n")
    assert lines[0].startswith("download on first run") and lines[1].startswith("from "), lines
    assert lines[2].startswith("to ") and download["dot"] == "rgb(255, 179, 0)", download
    assert download["onTop"] and download["box"]["h"] >= 3 * 15, download
    screenshot(page, tmp_path / f"loader_download_{renderer}.png")
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert "birefnet_model_status" not in prompt[str(loader)]["inputs"]
    assert prompt[str(loader)]["inputs"]["model"] == "BiRefNet_HR"
    assert_no_pack_errors(console_messages)


def test_workflow_round_trip(page, console_messages, input_image):
    ids = build(page, input_image, "BiRefNetSegment")
    redraw(page)
    saved = page.evaluate(SAVED_VALUES, ids["loader"])
    assert saved["values"] == saved["expected"] == [CHECKPOINT_NAME, "cpu", "fp32", "auto",
                                                    "auto", False]
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


def test_video_matte_frame_stepping(comfyui, rendered_page, renderer, console_messages,
                                    input_image, tmp_path):
    page = rendered_page
    ids = build(page, input_image, "BiRefNetVideoMatte", repeat=3, batch_size=BATCH[renderer])
    node = ids["node"]
    queue_and_wait(page, timeout=120)
    wait_preview(page, node)
    show_in(page, renderer)
    state = wait_preview(page, node)
    entries = state["entries"]
    indices = [e["index"] for e in entries]
    assert len(entries) >= 2 and {e["count"] for e in entries} == {3}
    assert indices[0] == 0 and indices == sorted(set(indices)), indices
    assert state["current"] == 0 and state["frameLabel"] == "frame 1 of 3"
    assert state["label"] == "frame 1 of 3"
    assert state["prev"] and state["next"], "a batch has frame arrows"
    header = pixels(page, as_clip(state["header"]))
    assert header.std() > 10, "the frame arrows and label are not drawn"

    def click(which: str) -> dict:
        box = page.evaluate(PREVIEW_STATE, node)[which]
        page.mouse.click(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
        page.wait_for_timeout(100)
        return page.evaluate(PREVIEW_STATE, node)

    for step in range(1, len(entries) + 1):        # forward through the frames and round
        shown = click("next")
        current = step % len(entries)
        assert shown["current"] == current
        assert shown["label"] == shown["frameLabel"] == f"frame {indices[current] + 1} of 3"
        assert shown["pos"] == state["pos"], "the arrows must not move the node"
    assert click("prev")["current"] == len(entries) - 1
    shown = click("next")
    assert shown["current"] == 0
    assert_preview_shows(comfyui, page, shown)
    screenshot(page, tmp_path / f"video_matte_preview_{renderer}.png")
    assert_no_pack_errors(console_messages)
