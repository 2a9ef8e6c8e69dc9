"""Every UI-format workflow in workflows/ in headless Chromium against a real ComfyUI: it loads,
the frontend turns it into exactly its API-format twin, and each one that needs no Stable
Diffusion checkpoint runs (synthetic BiRefNet checkpoint) with the pack's previews appearing
on its BiRefNet nodes and no console errors from the pack."""
from __future__ import annotations

import json

import pytest

from tests.browser import (  # noqa: F401 - pytest fixtures
    browser,
    console_messages,
    load_ui_workflow,
    nodes2_shown,
    pack_console_errors,
    page,
    queue_and_wait,
    rendered_page,
    renderer,
    switch_nodes2,
)
from tests.comfyui_server import CHECKPOINT_NAME
from tests.test_comfyui_e2e import structured_image
from tests.test_workflows import FOLDER, NEEDS_SD_CHECKPOINT, _write_example_video, api_workflow
from tests.workflow_checks import masked_example
from tests.web_views import (
    METRICS_VIEW,
    OUTPUT_IMAGES_SHOWN,
    OVERLAPPING_NODES,
    SHOW_WHOLE_GRAPH,
    as_clip,
    pixels,
)
from tools.workflow_sources import (
    EXAMPLE_BACKGROUND,
    EXAMPLE_IMAGE,
    EXAMPLE_MASKED,
    EXAMPLE_VIDEO,
    WORKFLOWS,
)

PREVIEW_NODES = ("BiRefNetSegment", "BiRefNetRefineEdges", "BiRefNetVideoMatte")

# The synthetic checkpoint on the CPU at 64 px, and a batch_size of the test's own (the files
# say 4) so that no node is served from the cache of an earlier prompt: every BiRefNet node
# runs and sends its preview.
FOR_TESTS = """([checkpoint, batchSize]) => {
  const set = (node, name, value) => {
    const widget = (node.widgets || []).find((w) => w.name === name);
    if (widget) widget.value = value;
  };
  for (const node of window.app.graph._nodes) {
    if (node.type === 'BiRefNetLoader') {
      set(node, 'model', checkpoint); set(node, 'device', 'cpu'); set(node, 'dtype', 'fp32');
      set(node, 'patch_order', 'current');
    }
    if (['BiRefNetSegment', 'BiRefNetVideoMatte', 'BiRefNetDetail'].includes(node.type)) {
      set(node, 'resolution', 64); set(node, 'batch_size', batchSize);
    }
  }
  return window.app.graph._nodes.filter((n) => %s.includes(n.type)).map((n) => n.id);
}""" % json.dumps(list(PREVIEW_NODES))

AS_PROMPT = """async () => (await window.app.graphToPrompt()).output"""


def ui_workflow(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.json").read_text(encoding="utf-8"))


def as_server_reads_it(prompt: dict, object_info: dict) -> dict:
    """Node types and the inputs the server takes (titles and frontend-only widgets such as
    the 2024 LoadImage's "upload" button dropped)."""
    def declared(kind: str) -> set[str]:
        spec = object_info[kind]["input"]
        return {*spec.get("required", {}), *spec.get("optional", {})}

    return {str(key): {"class_type": node["class_type"],
                       "inputs": {name: value for name, value in node["inputs"].items()
                                  if name in declared(node["class_type"])}}
            for key, node in prompt.items()}


def loadable(comfyui, name: str) -> bool:
    """The 2024 server in CI has no core video nodes: the video workflow is checked against
    ComfyUI 0.3.64's definitions in test_workflows.py and runs here only on a current server."""
    needed = {node["class_type"] for node in api_workflow(name).values()}
    missing = needed - set(comfyui.object_info())
    assert missing <= {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo"}, missing
    return not missing


def put_example_inputs(comfyui, name: str) -> None:
    comfyui.put_input_image(EXAMPLE_IMAGE, structured_image(seed=31))
    comfyui.put_input_image(EXAMPLE_BACKGROUND, structured_image(width=90, height=60, seed=32))
    comfyui.put_input_image(EXAMPLE_MASKED, masked_example(structured_image(seed=31)))
    if "video" in name:
        _write_example_video(comfyui, comfyui.input_dir / EXAMPLE_VIDEO)


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_ui_workflow_is_its_api_twin(comfyui, page, console_messages, name):
    if not loadable(comfyui, name):
        return
    put_example_inputs(comfyui, name)
    load_ui_workflow(page, ui_workflow(name))
    info = comfyui.object_info()
    assert as_server_reads_it(page.evaluate(AS_PROMPT), info) == \
        as_server_reads_it(api_workflow(name), info)
    assert pack_console_errors(console_messages) == []


@pytest.mark.parametrize("name", [n for n in WORKFLOWS if n not in NEEDS_SD_CHECKPOINT])
def test_ui_workflow_runs_and_shows_previews(comfyui, page, console_messages, name):
    if not loadable(comfyui, name):
        return
    put_example_inputs(comfyui, name)
    load_ui_workflow(page, ui_workflow(name))
    batch_size = 10 + list(WORKFLOWS).index(name)
    preview_nodes = page.evaluate(FOR_TESTS, [CHECKPOINT_NAME, batch_size])
    assert preview_nodes, f"{name} has no node that shows a preview"
    queue_and_wait(page, timeout=300)
    for node_id in preview_nodes:
        page.wait_for_function(
            """(id) => {
              const state = window.app.graph.getNodeById(id).birefnetPreview;
              return state && state.entries.length &&
                     state.entries.every((e) => e.ready.before && e.ready.after);
            }""", arg=node_id, timeout=30_000)
    # Nodes that now show pictures (previews, saved images) grew into the room the layout left
    # them (tools/ui_workflows.py): none covers another.
    # The 2024 frontend loads a node's images when it draws the node: show the whole graph.
    width, height = page.evaluate(SHOW_WHOLE_GRAPH)
    page.set_viewport_size({"width": min(4000, width), "height": min(3000, height)})
    page.wait_for_function(OUTPUT_IMAGES_SHOWN, timeout=30_000)
    for _ in range(3):
        page.evaluate("() => window.app.canvas.draw(true, true)")
        page.wait_for_timeout(200)
    assert page.evaluate(OVERLAPPING_NODES) == [], f"{name}: nodes overlap once it has run"
    assert pack_console_errors(console_messages) == []


# A batch_size per renderer, so that the server runs the nodes again (no cached outputs).
EVALUATE_BATCH = {"classic": 9, "nodes2": 8, "nodes2_switched": 7}


def test_evaluate_shows_its_table_on_the_node(comfyui, rendered_page, renderer, console_messages):
    page = rendered_page
    put_example_inputs(comfyui, "metrics")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": EXAMPLE_IMAGE}},
        "2": {"class_type": "BiRefNetLoader",
              "inputs": {"model": CHECKPOINT_NAME, "device": "cpu", "dtype": "fp32",
                         "patch_order": "current", "input_normalization": "auto"}},
        "3": {"class_type": "BiRefNetSegment",
              "inputs": {"model": ["2", 0], "image": ["1", 0], "resolution": 64,
                         "batch_size": EVALUATE_BATCH[renderer], "threshold": 0.0,
                         "invert": False,
                         "background_color": "#FFFFFF"}},
        "4": {"class_type": "BiRefNetEvaluate",
              "inputs": {"mask": ["3", 0], "ground_truth": ["3", 0]}},
    }
    page.evaluate("async (api) => { await window.app.loadApiJson(api, 'metrics'); }", prompt)
    queue_and_wait(page, timeout=120)
    node = page.wait_for_function(
        """() => {
          const node = window.app.graph._nodes.find((n) => n.type === 'BiRefNetEvaluate');
          return node && node.birefnetMetrics && node.id;
        }""", timeout=30_000).json_value()
    if renderer == "nodes2_switched":
        switch_nodes2(page, True)
    page.wait_for_timeout(200)
    table = page.evaluate(METRICS_VIEW, node)
    text = "\n".join(table["lines"])
    assert "maxFm" in text and "1 masks" in text
    # The element shows the whole table, on top, inside the node in Nodes 2.0.
    assert table["text"] == text and table["onTop"], table
    assert table["inNode"] == (renderer != "classic") and nodes2_shown(page) == table["inNode"]
    (width, height), (needs_width, needs_height) = table["client"], table["scroll"]
    assert height >= 15 * len(table["lines"]), table
    assert needs_width <= width + 1 and needs_height <= height + 1, f"the table is clipped: {table}"
    assert pixels(page, as_clip(table["box"])).std() > 10, "the table is not drawn"
    assert pack_console_errors(console_messages) == []
