"""Checking an API-format workflow against a ComfyUI's /object_info, the way the server's own
validation would: node types exist, required inputs are given, links point at existing outputs
of the right type, widget values are in range or in their option lists."""
from __future__ import annotations

# Combos whose options are the user's files: their values are examples, not checked.
FILE_INPUTS = {("LoadImage", "image"), ("LoadVideo", "file"),
               ("CheckpointLoaderSimple", "ckpt_name")}


def workflow_problems(workflow: dict, object_info: dict) -> list[str]:
    problems = []
    for node_id, node in workflow.items():
        kind = node.get("class_type")
        if kind not in object_info:
            problems.append(f"node {node_id}: unknown node type {kind!r}")
            continue
        spec = object_info[kind]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name in spec.get("required", {}):
            if name not in node["inputs"]:
                problems.append(f"node {node_id} ({kind}): required input {name!r} missing")
        for name, value in node["inputs"].items():
            if name not in declared:
                problems.append(f"node {node_id} ({kind}): no input named {name!r}")
                continue
            where = f"node {node_id} ({kind}).{name}"
            if isinstance(value, list):
                problems += _link_problems(where, value, declared[name], workflow, object_info)
            elif (kind, name) not in FILE_INPUTS:
                problems += _value_problems(where, value, declared[name])
    return problems


def _link_problems(where: str, link: list, spec: list, workflow: dict,
                   object_info: dict) -> list[str]:
    source_id, slot = link
    source = workflow.get(str(source_id))
    if source is None:
        return [f"{where}: links to missing node {source_id}"]
    outputs = object_info.get(source["class_type"], {}).get("output", [])
    if slot >= len(outputs):
        return [f"{where}: node {source_id} has no output {slot}"]
    wanted, given = _type_name(spec[0]), outputs[slot]
    if "*" not in (wanted, given) and wanted != given:
        return [f"{where}: wants {wanted}, node {source_id} output {slot} gives {given}"]
    return []


def _type_name(kind) -> str:
    return "COMBO" if isinstance(kind, list) else kind


def _value_problems(where: str, value, spec: list) -> list[str]:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":            # old and new combo layouts
        choices = kind if isinstance(kind, list) else options.get("options", [])
        return [] if value in choices else [f"{where}: {value!r} is not one of {choices}"]
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: {value!r} is not a number"]
        if kind == "INT" and not isinstance(value, int):
            return [f"{where}: {value!r} is not an integer"]
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{where}: {value} outside [{low}, {high}]"]
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return [f"{where}: {value!r} is not a boolean"]
    if kind == "STRING" and not isinstance(value, str):
        return [f"{where}: {value!r} is not text"]
    return []


def masked_example(image):
    """What ComfyUI's mask editor saves after the user painted the middle of ``image``: an RGBA
    copy whose alpha is 0 where painted (LoadImage's MASK output is 1 there)."""
    from PIL import Image
    masked = image.convert("RGBA")
    alpha = Image.new("L", masked.size, 255)
    alpha.paste(0, (masked.width // 4, masked.height // 4,
                    3 * masked.width // 4, 3 * masked.height // 4))
    masked.putalpha(alpha)
    return masked
