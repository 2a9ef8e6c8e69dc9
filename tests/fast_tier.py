"""The fast tier (``bash tests/run.sh --fast``): which tests are in it, and which modules of the
pack its tests ran.

tests/fast_tests.txt names the tests, one a line (``file.py::test`` takes every parameter of
the test, ``file.py::test[param]`` one, ``file.py`` a whole file; ``#`` starts a comment).
While a ``--fast`` session runs its tests, cProfile (in C: far cheaper than a trace function
in Python) records every function that runs in the main thread; at the end
tests/test_fast_tier.py checks that each module of birefnet_core/ and nodes/ had code run by a
test (a function, or the module's own code for a ``__main__`` run in the test). A module that
defines no function (a package ``__init__`` that re-exports) counts once it is imported.
"""
from __future__ import annotations

import ast
import cProfile
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
LIST_FILE = TESTS / "fast_tests.txt"
PACKAGES = ("birefnet_core", "nodes")
CHECK_ID = "test_fast_tier.py::test_fast_tier_runs_every_module"

_profiler: cProfile.Profile | None = None


def read_list(path: Path = LIST_FILE) -> list[str]:
    """The entries of tests/fast_tests.txt, without comments, blank lines and a tests/ prefix."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append(entry.removeprefix("tests/"))
    return entries


def listed(nodeid: str, entries: list[str]) -> bool:
    """Whether a collected test's node id is named by one of the entries."""
    nodeid = nodeid.removeprefix("tests/")
    return any(nodeid == entry or nodeid.startswith(entry + "[") or
               nodeid.startswith(entry + "::") for entry in entries)


def start_recording() -> None:
    global _profiler
    _profiler = cProfile.Profile()
    _profiler.enable()


def recording() -> bool:
    return _profiler is not None


def pack_modules() -> list[Path]:
    """Every module file of birefnet_core/ and nodes/."""
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def defines_functions(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
               for node in ast.walk(tree))


def imported_files() -> set[Path]:
    files = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if name:
            files.add(Path(name).resolve())
    return files


def run_files() -> set[Path]:
    """The files whose code ran while recording (cProfile's keys: file, line, function)."""
    _profiler.disable()
    try:
        _profiler.create_stats()
        return {Path(filename).resolve() for filename, _, _ in _profiler.stats
                if not filename.startswith("~") and not filename.startswith("<")}
    finally:
        _profiler.enable()


def modules_not_run() -> list[str]:
    """The pack's modules (relative paths) that no recorded test ran."""
    ran, imported = run_files(), imported_files()
    missing = []
    for path in pack_modules():
        resolved = path.resolve()
        if resolved in ran:
            continue
        if not defines_functions(path) and path.name != "__main__.py" and resolved in imported:
            continue
        missing.append(path.relative_to(ROOT).as_posix())
    return missing
