"""Write the example workflows: ``workflows/<name>.api.json`` from tools/workflow_sources.py,
and, with ``--ui``, the UI-format ``workflows/<name>.json`` and a thumbnail ``<name>.png``
made by the real frontend (a ComfyUI server with every node the workflows use, driven by
headless Chromium: the API workflow is loaded with app.loadApiJson, arranged, serialised and
photographed).

    python tools/build_workflows.py                      # API files only
    python tools/build_workflows.py --ui --server http://127.0.0.1:8188
    python tools/build_workflows.py --ui 01_transparent_png 05_headless_folder   # only these
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.workflow_sources import WORKFLOWS  # noqa: E402

FOLDER = ROOT / "workflows"


def write_api_files(names: list[str]) -> list[Path]:
    written = []
    for name in names:
        path = FOLDER / f"{name}.api.json"
        path.write_text(json.dumps(WORKFLOWS[name](), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", action="store_true", help="also write UI files and thumbnails")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="workflows to write (default: all of tools/workflow_sources.py)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(WORKFLOWS))
    if unknown:
        parser.error(f"no workflow named {', '.join(unknown)} in tools/workflow_sources.py "
                     f"(known: {', '.join(WORKFLOWS)})")
    names = args.names or list(WORKFLOWS)
    FOLDER.mkdir(exist_ok=True)
    for path in write_api_files(names):
        print(f"wrote {path.relative_to(ROOT)}")
    if args.ui:
        from tools.ui_workflows import write_ui_files
        for path in write_ui_files(args.server, FOLDER, names):
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
