"""Shared pytest fixtures, and the suite's two selections (tests/run.sh uses both).

``--comfyui-only``: only the tests that need a ComfyUI (marker ``comfyui``), which tests/run.sh
runs a second time against ComfyUI 0.21.0. A test needs one when it uses the server fixture
``comfyui`` (directly or through another fixture: the browser's ``page``), or imports ComfyUI
into the test process (tests/comfyui_inprocess.py: at module level, in the test or in one of its
fixtures), or carries ``@pytest.mark.comfyui``. New test files are picked up by that, unedited.

``--fast``: the fast tier, the tests named in tests/fast_tests.txt (marker ``fast``), with a
record of which functions of birefnet_core/ and nodes/ they ran (tests/fast_tier.py); its last
test fails unless every module was run by one of them.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

from tests import fast_tier
from tests.comfyui_inprocess import import_pack
from tests.comfyui_server import ComfyUIServer, ComfyUIUnavailable, launch

# dtype "auto" on the CPU follows the CPU (bfloat16 where it is native: the AMD EPYC CI machine,
# not the Intel Xeon one). The suite compares auto runs with float32 references, so it fixes the
# answer for itself and every ComfyUI or CLI it starts; tests/test_cpu_features.py checks the
# decision itself with its inputs injected.
os.environ.setdefault("BIREFNET_CPU_BF16", "0")

INPROCESS_NAMES = ("import_pack", "comfyui_inprocess")
TESTS = Path(__file__).resolve().parent


def pytest_addoption(parser):
    group = parser.getgroup("birefnet")
    group.addoption("--comfyui-only", action="store_true",
                    help="run only the tests that need a ComfyUI (server or in-process)")
    group.addoption("--fast", action="store_true",
                    help="run the fast tier of tests/fast_tests.txt and check that it runs "
                         "every module of birefnet_core/ and nodes/")


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs a ComfyUI (server or imported); "
                                       "tests/run.sh runs these in both ComfyUIs")
    config.addinivalue_line("markers", "fast: in the fast tier (tests/fast_tests.txt)")


def _source_mentions_inprocess(function) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return any(name in source for name in INPROCESS_NAMES)


def _defined_in_tests(function) -> bool:
    try:
        return Path(inspect.getfile(function)).resolve().is_relative_to(TESTS)
    except TypeError:
        return False


def uses_comfyui(item) -> bool:
    """Whether a collected test needs a ComfyUI (see the module docstring)."""
    if item.get_closest_marker("comfyui") or "comfyui" in getattr(item, "fixturenames", ()):
        return True
    module = getattr(item, "module", None)
    if module is not None and getattr(module, "import_pack", None) is import_pack:
        return True
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for definitions in (info.name2fixturedefs.values() if info else ()):
        functions += [definition.func for definition in definitions]
    return any(f is not None and _defined_in_tests(f) and _source_mentions_inprocess(f)
               for f in functions)


def _deselect(config, items: list, keep) -> None:
    kept = [item for item in items if keep(item)]
    dropped = [item for item in items if not keep(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_collection_modifyitems(session, config, items):
    fast_names = fast_tier.read_list()
    for item in items:
        if uses_comfyui(item):
            item.add_marker(pytest.mark.comfyui)
        if fast_tier.listed(item.nodeid, fast_names):
            item.add_marker(pytest.mark.fast)
    if config.getoption("--comfyui-only"):
        _deselect(config, items, lambda item: item.get_closest_marker("comfyui"))
    if config.getoption("--fast"):
        _deselect(config, items, lambda item: item.get_closest_marker("fast"))
        items.sort(key=lambda item: item.nodeid.startswith(fast_tier.CHECK_ID))  # check last
    else:        # the module check needs the record that only a --fast session keeps
        _deselect(config, items, lambda item: not item.nodeid.startswith(fast_tier.CHECK_ID))


def pytest_collection_finish(session):
    if session.config.getoption("--fast"):
        fast_tier.start_recording()


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory) -> ComfyUIServer:
    """A real ComfyUI server with the pack installed, shared by the session (comfyui_server.py).

    It fails (never skips) when no ComfyUI is installed: tests/run.sh installs one.
    """
    try:
        server = launch(tmp_path_factory.mktemp("comfyui"))
    except ComfyUIUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
