"""The fast tier (tests/fast_tests.txt, ``bash tests/run.sh --fast``) names real tests and runs
every module of the pack; and the command-line entry points run as ``python -m`` runs them.

test_fast_tier_runs_every_module runs last in a ``--fast`` session (tests/conftest.py orders
it) and only there: other sessions do not record which code ran (tests/fast_tier.py).
"""
from __future__ import annotations

import ast
import runpy
import sys

import pytest

from tests import fast_tier


def test_fast_list_names_tests_that_exist():
    """Every entry names a test file of tests/ and, when it says so, a test function in it."""
    entries = fast_tier.read_list()
    assert entries, "tests/fast_tests.txt is empty"
    problems = []
    for entry in entries:
        file_name, _, rest = entry.partition("::")
        path = fast_tier.TESTS / file_name
        if not path.is_file():
            problems.append(f"{entry}: no file {path}")
            continue
        function = rest.split("[", 1)[0]
        if function:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {node.name for node in ast.walk(tree)
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
            if function not in names:
                problems.append(f"{entry}: {file_name} has no test {function}")
    assert not problems, "tests/fast_tests.txt names tests that do not exist:\n" + \
        "\n".join(problems)


def test_listed_matches_node_ids():
    entries = ["test_a.py::test_x", "test_b.py", "test_c.py::test_y[two]"]
    assert fast_tier.listed("test_a.py::test_x", entries)
    assert fast_tier.listed("tests/test_a.py::test_x[one]", entries)
    assert not fast_tier.listed("test_a.py::test_x_more", entries)
    assert fast_tier.listed("test_b.py::test_anything", entries)
    assert fast_tier.listed("test_c.py::test_y[two]", entries)
    assert not fast_tier.listed("test_c.py::test_y[one]", entries)


# test_export.py imports birefnet_core.export.__main__ (for its main), so runpy warns that the
# module it runs is already imported; running it again is what this test means to do.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package")
@pytest.mark.parametrize("package, words", [
    ("birefnet_core", ("--model", "--resolution")),
    ("birefnet_core.bulk", ("--input", "--output")),
    ("birefnet_core.export", ("MODEL", "--output")),
])
def test_entry_points_print_help(package, words, monkeypatch, capsys):
    """``python -m <package> --help`` exits 0 and prints its usage (run here, in-process, as
    ``python -m`` would run it)."""
    monkeypatch.setattr(sys, "argv", [package, "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module(package, run_name="__main__", alter_sys=True)
    assert stop.value.code in (0, None)
    shown = capsys.readouterr().out
    assert "usage:" in shown and all(word in shown for word in words), shown


def test_fast_tier_runs_every_module(request):
    """Every module of birefnet_core/ and nodes/ had code run by a test of this session."""
    if not fast_tier.recording():
        pytest.fail("run this check in a --fast session (bash tests/run.sh --fast): only there "
                    "is the code that the tests run recorded", pytrace=False)
    missing = fast_tier.modules_not_run()
    assert not missing, ("no test of the fast tier runs these modules; add one to "
                         f"tests/fast_tests.txt: {missing}")
