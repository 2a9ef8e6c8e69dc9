"""The package's rooms and the one-way arrows between them, read from the import statements.

birefnet_core is a library of its own: nothing in it imports ComfyUI, the node pack, the
tests, the benchmarks or the optional distributed/export engines at import time; and inside
it each subpackage imports only the rooms below it (the network knows nothing of checkpoints,
inference or matting). The node pack never imports the optional engines either.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import birefnet_core

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "birefnet_core"

# The rooms each room may import (besides itself). Top-level modules (the commands and the
# package __init__) may import any room.
ALLOWED = {
    "errors": set(),
    "data": {"errors"},
    "network": {"errors"},
    "weights": {"errors", "network"},
    "matting": {"errors"},
    "metrics": {"errors"},
    "inference": {"errors", "network", "weights", "matting", "data"},
    "training": {"errors", "network", "weights", "inference", "data"},
    # A command package (python -m birefnet_core.bulk): any room, and the CLI's model opening.
    "bulk": {"errors", "network", "weights", "matting", "inference", "data", "cli"},
    # ONNX export and its runtime (python -m birefnet_core.export); onnx stays optional.
    "export": {"errors", "network", "weights", "inference", "data"},
}
FOREIGN = ("comfy", "comfy_extras", "folder_paths", "server", "nodes", "tests", "bench", "tools")
OPTIONAL_ENGINES = ("ray", "onnx", "onnxruntime")


def _room(path: Path) -> str | None:
    parts = path.relative_to(CORE).parts
    return parts[0] if len(parts) > 1 else (None if path.stem not in ALLOWED else path.stem)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name within or outside the package, level) of every import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                names = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
                found += [(n, node.level) for n in names]
            else:
                found.append((node.module, 0))
    return found


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_imports_flow_one_way(path):
    room = _room(path)
    for name, _level in _imports(path):
        top = name.split(".")[0]
        assert top not in FOREIGN, f"{path.name} imports {name}: the core must stay standalone"
        if top != "birefnet_core" or room is None:
            continue
        parts = name.split(".")
        target = parts[1] if len(parts) > 1 else "the package root"
        if target == room:
            continue
        assert target in ALLOWED[room], (
            f"birefnet_core/{path.relative_to(CORE)} ({room}) imports {name}; {room} may import "
            f"only {sorted(ALLOWED[room]) or 'nothing of the package'}")


def test_node_pack_never_imports_the_optional_engines():
    for path in sorted((ROOT / "nodes").rglob("*.py")) + [ROOT / "__init__.py"]:
        for name, _ in _imports(path):
            assert name.split(".")[0] not in OPTIONAL_ENGINES, f"{path.name} imports {name}"


def test_every_room_has_a_docstring_and_every_public_name_resolves():
    for init in sorted(CORE.glob("*/__init__.py")):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
    for name in birefnet_core.__all__:
        assert getattr(birefnet_core, name) is not None, name


def test_importing_the_core_loads_no_optional_engine():
    code = ("import sys, birefnet_core, birefnet_core.cli, birefnet_core.evaluate, "
            "birefnet_core.finetune, birefnet_core.bulk, birefnet_core.export; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{OPTIONAL_ENGINES!r} + ('comfy',)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("command", ["birefnet_core", "birefnet_core.evaluate",
                                     "birefnet_core.finetune", "birefnet_core.bulk",
                                     "birefnet_core.export"])
def test_commands_answer_help(command):
    result = subprocess.run([sys.executable, "-m", command, "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"python -m {command}" in result.stdout
