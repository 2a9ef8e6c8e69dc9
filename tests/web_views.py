"""What the pack's DOM widgets show in a ComfyUI page, read off the page itself: their state,
where their elements are on screen, whether they are on top there, and their pixels compared
with what they should show. Used by tests/test_web.py and tests/test_web_workflows.py in both
renderers of the current frontend (classic canvas, Nodes 2.0) and in the 2024 frontend.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# A node's preview: its state, and its elements' boxes in page pixels (null when not shown).
# onTop: the topmost element at three points of the picture is the picture (nothing covers it:
# neither the canvas nor another node). inNode: whether the element sits in a Nodes 2.0 node.
PREVIEW_STATE = """
(id) => {
  const node = window.app.graph.getNodeById(id);
  const state = node.birefnetPreview;
  if (!state) return null;
  const view = state.view;
  const box = (el) => {
    if (!el || el.style.display === 'none') return null;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 ? { x: r.x, y: r.y, w: r.width, h: r.height } : null;
  };
  const picture = box(view.picture);
  const onTop = !!picture && [0.1, 0.5, 0.9].every((f) => {
    const hit = document.elementFromPoint(picture.x + f * picture.w, picture.y + picture.h / 2);
    return !!hit && view.picture.contains(hit);
  });
  return {
    split: state.split, current: state.current, frameLabel: state.frameLabel,
    label: view.label.textContent,
    entries: state.entries.map((e) => ({
      index: e.index, count: e.count, failed: e.failed,
      before: e.ready.before && e.before.naturalWidth,
      after: e.ready.after && e.after.naturalWidth })),
    urls: state.entries.map((e) => [e.before.src, e.after.src]),
    picture, prev: box(view.prev), next: box(view.next), header: box(view.header),
    onTop, inNode: !!view.root.closest('.lg-node'),
    widgets: node.widgets.map((w) => w.name), size: [node.size[0], node.size[1]],
    pos: [node.pos[0], node.pos[1]],
  };
}
"""

# The Loader's status element: its text, state, dot colour, box and whether it is on top.
STATUS_VIEW = """
(id) => {
  const node = window.app.graph.getNodeById(id);
  const status = node.birefnetModelStatus;
  const view = node.birefnetStatusView;
  if (!status || !view) return null;
  const r = view.root.getBoundingClientRect();
  const hit = r.width > 0 ? document.elementFromPoint(r.x + 12, r.y + 8) : null;
  return {
    name: status.name, state: status.state, label: status.label, detail: status.detail,
    shownState: view.root.dataset.state, text: view.root.innerText,
    dot: getComputedStyle(view.dot).backgroundColor,
    box: { x: r.x, y: r.y, w: r.width, h: r.height },
    onTop: !!hit && view.root.contains(hit), inNode: !!view.root.closest('.lg-node'),
  };
}
"""

# The Evaluate node's table element: its text, box and whether it is on top.
METRICS_VIEW = """
(id) => {
  const node = window.app.graph.getNodeById(id);
  const widget = node.widgets.find((w) => w.name === 'birefnet_metrics');
  if (!widget || !node.birefnetMetrics) return null;
  const table = widget.content;
  const r = table.getBoundingClientRect();
  const hit = r.width > 0 ? document.elementFromPoint(r.x + Math.min(40, r.width / 2), r.y + 6)
                          : null;
  return { lines: node.birefnetMetrics, text: table.textContent,
           box: { x: r.x, y: r.y, w: r.width, h: r.height },
           // in CSS pixels (before the canvas zoom): what the element has and what it needs
           client: [table.clientWidth, table.clientHeight],
           scroll: [table.scrollWidth, table.scrollHeight],
           onTop: !!hit && table.contains(hit), inNode: !!table.closest('.lg-node') };
}
"""


def as_clip(box: dict) -> dict:
    """A page.screenshot clip of a {x, y, w, h} box, shrunk to whole pixels inside it."""
    left, top = int(np.ceil(box["x"])), int(np.ceil(box["y"]))
    right, bottom = int(np.floor(box["x"] + box["w"])), int(np.floor(box["y"] + box["h"]))
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def pixels(page, clip: dict) -> np.ndarray:
    png = page.screenshot(clip=clip)
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(np.float64)


def fetch_image(comfyui, url: str, mode: str) -> Image.Image:
    path = url[url.index("/view"):]
    with Image.open(io.BytesIO(comfyui.get_bytes(path))) as image:
        return image.convert(mode)


def expected_preview(comfyui, before_url: str, after_url: str, box: dict, clip: dict,
                     split: float) -> np.ndarray:
    """What the picture box should show in clip (whole pixels inside it): the source left of
    the split, the RGBA cutout over an 8 px checkerboard (#c4c4c4 / #f2f2f2, anchored at the
    box's corner) right of it."""
    size = (round(box["w"]), round(box["h"]))
    before = np.asarray(fetch_image(comfyui, before_url, "RGB").resize(size, Image.BILINEAR))
    after = np.asarray(fetch_image(comfyui, after_url, "RGBA").resize(size, Image.BILINEAR))
    y, x = np.mgrid[0:size[1], 0:size[0]]
    checker = np.where(((x // 8 + y // 8) % 2 == 0)[..., None], 0xC4, 0xF2).astype(np.float64)
    alpha = after[..., 3:].astype(np.float64) / 255
    cutout = after[..., :3] * alpha + checker * (1 - alpha)
    left = (x < split * size[0])[..., None]
    full = np.where(left, before.astype(np.float64), cutout)
    dx, dy = clip["x"] - round(box["x"]), clip["y"] - round(box["y"])
    return full[dy:dy + clip["height"], dx:dx + clip["width"]]


def preview_error(comfyui, page, state: dict) -> np.ndarray:
    """|shown - expected| over the preview's picture, the columns of the split line and its
    handle left out."""
    box, (before_url, after_url) = state["picture"], state["urls"][state["current"]]
    clip = as_clip(box)
    shown = pixels(page, clip)
    expected = expected_preview(comfyui, before_url, after_url, box, clip, state["split"])
    split_x = int(round(state["split"] * box["w"] + box["x"] - clip["x"]))
    keep = np.ones(shown.shape[1], bool)
    keep[max(0, split_x - 8): split_x + 8] = False
    return np.abs(shown - expected)[:, keep]


def assert_preview_shows(comfyui, page, state: dict) -> None:
    """The picture shows the source and the cutout at the state's split. What differs is how
    the browser scales the 96x64 PNGs to ~256 px (its own filter, not PIL's bilinear): measured
    here (Debian's Chromium, x86 CPU, 2024 and 1.58.1 frontends, both renderers) a median of
    0.2-0.4 and a 95th percentile of 1.3-1.4 levels; with the pictures hidden (checkerboard
    only, what Nodes 2.0 showed of the canvas-drawn preview) 39-44 and 205-226. The bounds sit
    between, wide of the first so another build's scaling filter (sharper edges at the ellipse
    and the bar) still passes."""
    assert state["onTop"], f"the preview is covered or not shown: {state}"
    area = pixels(page, as_clip(state["picture"]))
    assert area.std() > 10 and len(np.unique(area.reshape(-1, 3), axis=0)) > 50, \
        "the preview area is blank"
    error = preview_error(comfyui, page, state)
    assert np.median(error) < 6 and np.percentile(error, 95) < 25, \
        (np.median(error), np.percentile(error, 95))

# Pairs of nodes (titles) whose boxes, title bars included, overlap by more than a pixel.
OVERLAPPING_NODES = """
() => {
  const nodes = window.app.graph._nodes;
  const boxes = nodes.map((node) => {
    const [x, y, w, h] = node.getBounding();
    return { title: node.title, x, y, w, h };
  });
  const pairs = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
    const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
    const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
    if (w > 1 && h > 1) pairs.push([a.title, b.title, Math.round(w), Math.round(h)]);
  }));
  return pairs;
}
"""

# Whether every image-output node (SaveImage, PreviewImage) of the graph shows its images.
OUTPUT_IMAGES_SHOWN = """
() => window.app.graph._nodes
  .filter((n) => ['SaveImage', 'PreviewImage'].includes(n.type))
  .every((n) => n.imgs && n.imgs.length && n.imgs.every((image) => image.complete))
"""

# Put the graph's top-left corner at the view's (scale 1); the page size [w, h] that shows all.
SHOW_WHOLE_GRAPH = """
() => {
  const boxes = window.app.graph._nodes.map((node) => node.getBounding());
  const left = Math.min(...boxes.map((b) => b[0])), top = Math.min(...boxes.map((b) => b[1]));
  const right = Math.max(...boxes.map((b) => b[0] + b[2]));
  const bottom = Math.max(...boxes.map((b) => b[1] + b[3]));
  const canvas = window.app.canvas;
  canvas.ds.scale = 1;
  canvas.ds.offset[0] = 80 - left;      // clear of the current frontend's side bar
  canvas.ds.offset[1] = 120 - top;      // and of its top bars
  canvas.setDirty(true, true);
  return [Math.ceil(right - left + 160), Math.ceil(bottom - top + 600)];
}
"""
