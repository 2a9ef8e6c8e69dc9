"""UI-format workflows and thumbnails from the API-format ones, made by ComfyUI's own frontend
in headless Chromium (Debian's /usr/bin/chromium, driven by the ``playwright`` package):
each API workflow is loaded with ``app.loadApiJson`` (which creates and arranges the nodes),
serialised with ``app.graph.serialize()`` and photographed with the view fitted to the graph.

Used by tools/build_workflows.py --ui; the server must have the pack and every node the
workflows use (a current ComfyUI for the video nodes).
"""
from __future__ import annotations

import json
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

SCALE = 0.8                  # above the zoom at which the frontend stops drawing text
THUMB_WIDTH = 1600

# Load, then lay out by depth (a column per longest distance from a source node).
_LOAD = """async (api) => {
    const settings = app.extensionManager && app.extensionManager.setting;
    for (const id of ["Comfy.Minimap.Visible", "Comfy.Graph.CanvasMenu"]) {
        try { if (settings) await settings.set(id, false); } catch (error) { /* older frontend */ }
    }
    app.graph.clear();
    await app.loadApiJson(api, "workflow");
    // Reload what it built: loadApiJson renumbers nodes after creating them, and an image
    // preview can stay attached to the old number.
    await app.loadGraphData(app.graph.serialize());
    await new Promise((done) => setTimeout(done, 1500));     // image previews resize nodes
    const nodes = app.graph._nodes, depth = new Map();
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
        for name in names:
            _open_fresh(page, server)                  # no previews left from the last one
            api = json.loads((folder / f"{name}.api.json").read_text(encoding="utf-8"))
            loaded = page.evaluate(_LOAD, api)
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
