"""The pack's DOM widgets under the current frontend's Nodes 2.0 renderer, through what that
renderer does to widgets: it unmounts the widgets of nodes scrolled out of view and mounts them
again (viewport virtualization, frontend PR #14104), hides them in a collapsed node, and builds
every node anew when a graph is loaded. After each, the Segment preview, the Loader's status and
the Evaluate table must show what they showed before, checked on the page's pixels: the preview
against the images it shows (tests/web_views.py), the status dot against its colour, the table
against its own screenshot taken before.

Needs the current frontend (COMFYUI_FRONTEND_ROOT; tests/run.sh's ComfyUI 0.21.0 part sets it).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.browser import (  # noqa: F401 - pytest fixtures
    NO_NODES2,
    browser,
    console_messages,
    current_frontend,
    nodes2_shown,
    open_comfyui,
    queue_and_wait,
    set_nodes2,
    skip_first_run_dialogs,
)
from tests.comfyui_server import CHECKPOINT_NAME
from tests.test_web import assert_no_pack_errors, build, input_image, redraw, wait_preview  # noqa: F401,E501
from tests.web_views import METRICS_VIEW, PREVIEW_STATE, STATUS_VIEW, as_clip, assert_preview_shows, pixels  # noqa: E501

GREEN = (76, 175, 80)          # the status dot of a file on disk (web/js/birefnet.js)

# Adds an Evaluate node fed the Segment mask twice, moves SaveImage out of its way.
ADD_EVALUATE = """
([segmentId, saveId]) => {
  const graph = window.app.graph;
  const segment = graph.getNodeById(segmentId);
  const node = LiteGraph.createNode('BiRefNetEvaluate');
  node.pos = [760, 40];
  graph.add(node);
  const mask = segment.outputs.findIndex((o) => o.name === 'mask');
  const slot = (name) => node.inputs.findIndex((input) => input.name === name);
  segment.connect(mask, node, slot('mask'));
  segment.connect(mask, node, slot('ground_truth'));
  graph.getNodeById(saveId).pos = [760, 640];
  window.app.canvas.setDirty(true, true);
  return node.id;
}
"""

# Whether each of the three widgets' elements is on the page, drawn, and where. Seen in 1.58.1
# (Debian's Chromium): 20 000 px out of view the elements stay connected and
# checkVisibility({contentVisibilityAuto}) is true, although a node's content has
# `content-visibility: auto`; a frontend that unmounts them (PR #14104) mounts them again on the
# way back, and the checks after it hold either way.
MOUNTED = """
(ids) => Object.fromEntries(Object.entries(ids).map(([key, id]) => {
  const node = window.app.graph.getNodeById(id);
  const element = {
    preview: node.birefnetPreview?.view?.root,
    status: node.birefnetStatusView?.root,
    table: node.widgets?.find((w) => w.name === 'birefnet_metrics')?.content,
  }[key];
  const connected = !!element?.isConnected;
  return [key, { connected,
                 drawn: connected && element.checkVisibility({ contentVisibilityAuto: true }),
                 nodeShown: !!document.querySelector(`.lg-node[data-node-id="${id}"]`),
                 // the node's box against the window: [right < 0 or bottom < 0] is out of view
                 outOfView: (() => {
                   const r = document.querySelector(`.lg-node[data-node-id="${id}"]`)
                     ?.getBoundingClientRect();
                   return !r || r.right < 0 || r.bottom < 0 || r.left > innerWidth ||
                          r.top > innerHeight;
                 })() }];
}))
"""

DOT_BOX = """
(id) => {
  const r = window.app.graph.getNodeById(id).birefnetStatusView.dot.getBoundingClientRect();
  return { x: r.x, y: r.y, w: r.width, h: r.height };
}
"""


def set_offset(page, x: float, y: float) -> None:
    page.evaluate("""([x, y]) => { const canvas = window.app.canvas;
                       canvas.ds.offset[0] = x; canvas.ds.offset[1] = y;
                       canvas.setDirty(true, true); }""", [x, y])
    for _ in range(3):            # let the renderer follow the view (mount or unmount)
        redraw(page)
        page.wait_for_timeout(150)


def offset(page) -> list[float]:
    return page.evaluate("() => [...window.app.canvas.ds.offset]")


def collapse(page, ids: list) -> None:
    """Toggle the collapsed state of the nodes (LGraphNode.collapse), as the node's menu does."""
    page.evaluate("(ids) => ids.forEach((id) => window.app.graph.getNodeById(id).collapse(true))",
                  ids)
    redraw(page)
    page.wait_for_timeout(300)


def collapsed(page, node_id) -> bool:
    return page.evaluate("(id) => !!window.app.graph.getNodeById(id).flags?.collapsed", node_id)


class Shown:
    """What the three widgets show, read off the page, and the checks against the first look."""

    def __init__(self, comfyui, page, ids: dict):
        self.comfyui, self.page, self.ids = comfyui, page, ids
        self.table_pixels: np.ndarray | None = None

    def check(self, when: str) -> None:
        self.check_preview(when)
        self.check_status(when)
        self.check_table(when)

    def check_preview(self, when: str) -> None:
        state = wait_preview(self.page, self.ids["preview"])
        assert state["inNode"], f"{when}: the preview is not inside its Nodes 2.0 node"
        assert state["entries"] and not state["entries"][0]["failed"], (when, state)
        assert_preview_shows(self.comfyui, self.page, state)

    def check_status(self, when: str) -> None:
        view = self.page.evaluate(STATUS_VIEW, self.ids["status"])
        assert view and view["shownState"] == "on disk", (when, view)
        assert view["text"].split("\n") == ["on disk", f"birefnet/{CHECKPOINT_NAME}"], (when, view)
        assert view["onTop"] and view["inNode"], (when, view)
        # The dot's middle pixels are its colour (a 10 px disc: the inner 4x4 has no edge).
        dot = self.page.evaluate(DOT_BOX, self.ids["status"])
        middle = {"x": round(dot["x"] + dot["w"] / 2) - 2, "y": round(dot["y"] + dot["h"] / 2) - 2,
                  "width": 4, "height": 4}
        shown = pixels(self.page, middle).reshape(-1, 3)
        assert np.abs(shown - np.array(GREEN)).max() <= 2, (when, shown.mean(axis=0))
        text = pixels(self.page, as_clip(view["box"]))
        assert text.std() > 10, f"{when}: the status is not drawn"

    def check_table(self, when: str) -> None:
        table = self.page.evaluate(METRICS_VIEW, self.ids["table"])
        assert table and table["text"] == "\n".join(table["lines"]), (when, table)
        assert "maxFm" in table["text"] and table["onTop"] and table["inNode"], (when, table)
        (width, height), (needs_width, needs_height) = table["client"], table["scroll"]
        assert needs_width <= width + 1 and needs_height <= height + 1, (when, table)
        shown = pixels(self.page, as_clip(table["box"]))
        assert shown.std() > 10, f"{when}: the table is not drawn"
        if self.table_pixels is None:
            self.table_pixels = shown
            return
        # The same text at the same place in the same browser: the same pixels.
        assert shown.shape == self.table_pixels.shape, (when, shown.shape)
        assert np.abs(shown - self.table_pixels).max() <= 2, \
            f"{when}: the table's pixels changed"


@pytest.fixture
def nodes2_page(browser, comfyui, console_messages):
    if not current_frontend():
        pytest.skip(NO_NODES2)
    skip_first_run_dialogs(comfyui)
    set_nodes2(comfyui, True)
    page = open_comfyui(browser, comfyui.base_url, console_messages)
    try:
        yield page
    finally:
        page.close()
        set_nodes2(comfyui, False)


def run_graph(comfyui, page, image: str, batch_size: int) -> dict:
    """Loader -> Segment (-> SaveImage, -> Evaluate of its mask against itself), queued and run;
    the ids of the nodes whose widgets are checked."""
    ids = build(page, image, "BiRefNetSegment", batch_size=batch_size)
    evaluate = page.evaluate(ADD_EVALUATE, [ids["node"], ids["save"]])
    queue_and_wait(page, timeout=120)
    page.wait_for_function("(id) => !!window.app.graph.getNodeById(id).birefnetMetrics",
                           arg=evaluate, timeout=30_000)
    return {"preview": ids["node"], "status": ids["loader"], "table": evaluate}


def test_widgets_survive_scrolling_out_and_back(comfyui, nodes2_page, console_messages,
                                                input_image):
    page = nodes2_page
    ids = run_graph(comfyui, page, input_image, batch_size=21)
    assert nodes2_shown(page)
    shown = Shown(comfyui, page, ids)
    shown.check("as first shown")
    home = offset(page)
    set_offset(page, home[0] - 20_000, home[1] - 20_000)
    away = page.evaluate(MOUNTED, ids)
    assert all(entry["outOfView"] for entry in away.values()), \
        f"the nodes did not leave the view: {away}"
    set_offset(page, *home)
    back = page.evaluate(MOUNTED, ids)
    assert all(entry["drawn"] and entry["nodeShown"] and not entry["outOfView"]
               for entry in back.values()), back
    shown.check("scrolled out and back")
    # Out and back twice more, in another direction: the elements are mounted once each time.
    for dx, dy in ((3_000, 0), (0, 3_000)):
        set_offset(page, home[0] + dx, home[1] + dy)
        set_offset(page, *home)
    shown.check("scrolled out and back three times")
    assert page.evaluate("() => document.querySelectorAll('.birefnet_preview-host').length") == 1
    assert_no_pack_errors(console_messages)


def test_widgets_survive_collapsing_and_expanding(comfyui, nodes2_page, console_messages,
                                                  input_image):
    page = nodes2_page
    ids = run_graph(comfyui, page, input_image, batch_size=22)
    shown = Shown(comfyui, page, ids)
    shown.check("as first shown")
    nodes = list(ids.values())
    collapse(page, nodes)
    assert all(collapsed(page, node) for node in nodes)
    hidden = page.evaluate(PREVIEW_STATE, ids["preview"])
    assert hidden["picture"] is None or not hidden["onTop"], \
        f"a collapsed node still shows its preview: {hidden}"
    table = page.evaluate(METRICS_VIEW, ids["table"])
    assert table["box"]["w"] == 0 or not table["onTop"], f"a collapsed node shows its table: {table}"
    collapse(page, nodes)
    assert not any(collapsed(page, node) for node in nodes)
    shown.check("collapsed and expanded")
    assert_no_pack_errors(console_messages)


def test_widgets_after_the_graph_is_reloaded(comfyui, nodes2_page, console_messages, input_image):
    page = nodes2_page
    ids = run_graph(comfyui, page, input_image, batch_size=23)
    Shown(comfyui, page, ids).check("as first shown")
    workflow = page.evaluate("() => window.app.graph.serialize()")
    page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
    redraw(page)
    page.wait_for_timeout(300)
    # The loaded nodes are new: no preview or table until they run (neither is saved in the
    # workflow), no element of the old nodes is left on the page, and the Loader shows its file.
    assert page.evaluate(PREVIEW_STATE, ids["preview"]) is None
    assert page.evaluate(METRICS_VIEW, ids["table"]) is None
    assert page.evaluate("() => document.querySelectorAll('.birefnet_preview-host').length") == 0
    page.wait_for_function(f"() => ({STATUS_VIEW})({ids['status']!r})?.shownState === 'on disk'",
                           timeout=10_000)
    reloaded = Shown(comfyui, page, ids)
    reloaded.check_status("reloaded")
    # Run again (another batch_size: the server would serve the old outputs from its cache and
    # send no preview) and everything shows again, once.
    page.evaluate("""(id) => { window.app.graph.getNodeById(id).widgets
                      .find((w) => w.name === 'batch_size').value = 24; }""", ids["preview"])
    queue_and_wait(page, timeout=120)
    page.wait_for_function("(id) => !!window.app.graph.getNodeById(id).birefnetMetrics",
                           arg=ids["table"], timeout=30_000)
    reloaded.check("reloaded and run again")
    assert page.evaluate("() => document.querySelectorAll('.birefnet_preview-host').length") == 1
    assert_no_pack_errors(console_messages)
