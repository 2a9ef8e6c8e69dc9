"""UI-format workflows and thumbnails from the API-format ones, made by ComfyUI's own frontend
in headless Chromium (Debian's /usr/bin/chromium, driven by the ``playwright`` package):
each API workflow is loaded with ``app.loadApiJson`` (which creates and arranges the nodes),
serialised with ``app.graph.serialize()`` and photographed with the view fitted to the graph.

Used by tools/build_workflows.py --ui; the server must have the pack and every node the
workflows use (a current ComfyUI for the video nodes) and, in its input folder, ComfyUI's own
``example.png`` (every install ships it; the loaders show it) and a video named as 04's
LoadVideo names it. The current frontend's menus and notices are hidden (focus mode) for the
picture.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tools.workflow_sources import EXAMPLE_IMAGE

ROOT = Path(__file__).resolve().parent.parent

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

SCALE = 0.8                  # above the zoom at which the frontend stops drawing text
THUMB_WIDTH = 1600

# Room (canvas units) kept free in nodes that show a picture once an image is picked or the
# graph has run, so that they grow into it and not over the node below: the frontends give an
# image preview at least 220 px under the widgets; the pack's before/after preview is at most
# 22 + 384 + 20 px (web/js/birefnet_preview.js: header, picture, margins).
MEDIA_ROOM = 240
PREVIEW_ROOM = 426
MEDIA_NODES = ["LoadImage", "SaveImage", "PreviewImage", "LoadVideo", "SaveVideo",
               "BiRefNetSaveMatte"]
PREVIEW_NODES = ["BiRefNetSegment", "BiRefNetRefineEdges", "BiRefNetVideoMatte", "BiRefNetDetail"]

# Load, make room for the pictures nodes will show, then lay out by depth (a column per longest
# distance from a source node).
_LOAD = """async ([api, rooms]) => {
    const settings = app.extensionManager && app.extensionManager.setting;
    for (const id of ["Comfy.Minimap.Visible", "Comfy.Graph.CanvasMenu", "Comfy.Graph.CanvasInfo",
                      "Comfy.VueNodes.Enabled"]) {
        try { if (settings) await settings.set(id, false); } catch (error) { /* older frontend */ }
    }
    const commands = app.extensionManager && app.extensionManager.command;
    try {
        if (commands && !document.body.dataset.birefnetFocus) {
            await commands.execute("Workspace.ToggleFocusMode");   // no menus over the canvas
            document.body.dataset.birefnetFocus = "1";
        }
    } catch (error) { /* older frontend */ }
    const hide = document.createElement("style");
    hide.textContent = ".p-toast { display: none !important; }";       // notices
    document.head.append(hide);
    app.graph.clear();
    await app.loadApiJson(api, "workflow");
    // Reload what it built: loadApiJson renumbers nodes after creating them, and an image
    // preview can stay attached to the old number.
    await app.loadGraphData(app.graph.serialize());
    await new Promise((done) => setTimeout(done, 1500));     // image previews resize nodes
    const nodes = app.graph._nodes, depth = new Map();
    for (const node of nodes) {
        const room = rooms[node.type];
        if (!room) continue;
        const needed = node.computeSize()[1] + room;
        if (node.size[1] < needed) node.setSize([node.size[0], needed]);
    }
    const depthOf = (node) => {
        if (depth.has(node.id)) return depth.get(node.id);
        depth.set(node.id, 0);
        let deepest = 0;
        (node.inputs || []).forEach((_, slot) => {
            const source = node.getInputNode(slot);
            if (source) deepest = Math.max(deepest, depthOf(source) + 1);
        });
        depth.set(node.id, deepest);
        return deepest;
    };
    nodes.forEach(depthOf);
    const columns = [];
    for (const node of [...nodes].sort((a, b) => a.id - b.id)) {
        (columns[depth.get(node.id)] ||= []).push(node);
    }
    let x = 40, height = 0;
    for (const column of columns.filter(Boolean)) {
        let y = 60;
        for (const node of column) { node.pos = [x, y]; y += node.size[1] + 70; }
        x += Math.max(...column.map((node) => node.size[0])) + 70;
        height = Math.max(height, y);
    }
    app.graph.setDirtyCanvas(true, true);
    return {graph: app.graph.serialize(), width: x, height: height};
}"""

_FIT = """(scale) => {
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [0, 0];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
}"""


def write_ui_files(server: str, folder: Path, names: list[str]) -> list[Path]:
    from playwright.sync_api import sync_playwright
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        check_example_inputs(server)
        for name in names:
            _open_fresh(page, server)                  # no previews left from the last one
            api = json.loads((folder / f"{name}.api.json").read_text(encoding="utf-8"))
            loaded = page.evaluate(_LOAD, [api, rooms()])
            page.set_viewport_size({"width": max(1000, int(loaded["width"] * SCALE) + 40),
                                    "height": max(600, int(loaded["height"] * SCALE) + 40)})
            page.wait_for_timeout(800)
            page.evaluate(_FIT, SCALE)
            page.wait_for_timeout(500)
            ui_path = folder / f"{name}.json"
            ui_path.write_text(json.dumps(portable(loaded["graph"]), indent=1) + "\n",
                               encoding="utf-8")
            thumb = folder / f"{name}.png"
            page.keyboard.press("Escape")
            page.locator("#graph-canvas").screenshot(path=str(thumb))
            _shrink(thumb, THUMB_WIDTH)
            written += [ui_path, thumb]
        browser.close()
    return written


def check_example_inputs(server: str) -> None:
    """The workflows' photo must be the server's own example.png: not uploaded, so that the
    thumbnails show what a fresh install shows."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback, no proxy
    with opener.open(f"{server}/object_info/LoadImage", timeout=30) as reply:
        choices = json.load(reply)["LoadImage"]["input"]["required"]["image"][0]
    if EXAMPLE_IMAGE not in choices:
        raise SystemExit(f"the server at {server} has no input/{EXAMPLE_IMAGE}: copy it from a "
                         "ComfyUI source tree's input folder (every ComfyUI ships one)")


def rooms() -> dict[str, int]:
    """Node type -> room to keep for the picture it shows."""
    return {**{kind: MEDIA_ROOM for kind in MEDIA_NODES},
            **{kind: PREVIEW_ROOM for kind in PREVIEW_NODES}}


def _shrink(path: Path, width: int) -> None:
    from PIL import Image
    with Image.open(path) as image:
        if image.width <= width:
            return
        small = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    small.save(path, optimize=True)


def _open_fresh(page, server: str) -> None:
    page.set_viewport_size({"width": 1600, "height": 900})
    page.goto(server)
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas",
                           timeout=60_000)
    # The current frontend restores or loads a workflow after that; wait until it has.
    page.wait_for_function("""() => { const store = window.app.extensionManager?.workflow;
                                      return !store || (!!store.activeWorkflow && !store.isBusy); }""",
                           timeout=60_000)
    page.wait_for_timeout(2000)                        # let the frontend finish its start-up
    page.keyboard.press("Escape")                      # the first-run template dialog
    page.wait_for_timeout(300)


def portable(graph: dict) -> dict:
    """The serialised graph in a form every frontend since 2024 loads: the current frontend
    lists each widget as an input slot too, which the 2024 one reads as "widget converted to
    input" (and then loses the value), so unlinked widget slots are dropped; empty (null)
    fields of slots are dropped as well. Linked widget slots stay: both read them the same."""
    for node in graph.get("nodes", []):
        node["inputs"] = [_compact(slot) for slot in node.get("inputs", [])
                          if not ("widget" in slot and slot.get("link") is None)]
        node["outputs"] = [_compact(slot) for slot in node.get("outputs", [])]
    return graph


def _compact(slot: dict) -> dict:
    return {key: value for key, value in slot.items() if value is not None or key == "link"}
