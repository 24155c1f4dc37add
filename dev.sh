#!/usr/bin/env bash
# SparseFlow developer entry point. On a fresh machine each command does all of its own set-up:
#   bash dev.sh demo    # install what is missing, then run the main job: python -m sparseflow demo
#   bash dev.sh test    # install what is missing, then run the whole test suite (CI runs exactly this)
# Set-up installs torch + torchvision (the ordinary build; it runs on a CPU) only when they are missing and pins
# them for every later install, so nothing here ever replaces the torch you have.
#
# ComfyUI for the integration tests: $COMFYUI_PATH when set, else ../shared/comfyui/0.3.64 beside this repository
# (the tests run a fresh writable copy of it: tests/comfy_trees.py), else a shallow clone of ComfyUI v0.3.64 where
# the network allows, else the ComfyUI tests are skipped with a loud line. Its requirements are installed (never
# torch/torchvision/torchaudio; spandrel with --no-deps; plus `requests`, which its server imports unlisted).
# Once a ComfyUI is found, SPARSEFLOW_REQUIRE_COMFYUI=1: a ComfyUI test that cannot run fails instead of skipping.
# `test` runs pytest twice: the whole suite on that ComfyUI, then the ComfyUI tests (-m comfyui) on the
# newest-shape tree (0.3.64 + ../shared/comfyui/newest-overlay) when ../shared has it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY="${PYTHON:-python3}"
COMFY_REQS=""   # requirements.txt of the ComfyUI the first run uses; empty when there is none
NEWEST=0        # 1 when the newest-shape tree can be made

find_comfy() {
  if [ -n "${COMFYUI_PATH:-}" ]; then
    if [ -f "$COMFYUI_PATH/main.py" ]; then
      COMFY_REQS="$COMFYUI_PATH/requirements.txt"
      echo "dev.sh: ComfyUI from COMFYUI_PATH=$COMFYUI_PATH"
    else
      echo "dev.sh: COMFYUI_PATH=$COMFYUI_PATH has no main.py: ComfyUI integration tests will be SKIPPED" >&2
    fi
  elif COMFY_REQS="$("$PY" tests/comfy_trees.py requirements 0.3.64 --clone)"; then
    echo "dev.sh: ComfyUI 0.3.64 from $(dirname "$COMFY_REQS") (the tests run a writable copy of it)"
  else
    COMFY_REQS=""
    echo "dev.sh: NO ComfyUI (see above): the ComfyUI integration and browser tests will be SKIPPED" >&2
  fi
  if "$PY" tests/comfy_trees.py requirements newest >/dev/null; then
    NEWEST=1
  else
    echo "dev.sh: no newest-shape ComfyUI tree: the second run (ComfyUI tests on it) is SKIPPED" >&2
  fi
}

setup() {
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "dev.sh: installing torch + torchvision"
    "$PY" -m pip install -q torch torchvision
  fi
  local keep
  keep="$(mktemp)"
  "$PY" -m pip freeze 2>/dev/null | grep -iE '^(torch|torchvision|torchaudio|triton)==' > "$keep" || true
  "$PY" -m pip install -q -c "$keep" -r requirements.txt -r requirements-dev.txt
  if [ "${1:-}" = with-comfy ]; then setup_comfy "$keep"; fi
  "$PY" - "$keep" <<'PY'
import sys, importlib.metadata as md
want = dict(line.strip().split("==") for line in open(sys.argv[1]) if "==" in line)
for name, ver in want.items():
    have = md.version(name)
    assert have == ver, f"dev.sh: {name} changed from {ver} to {have} during set-up"
PY
}

setup_comfy() {  # $1: the pip constraints file that keeps torch & co. as they are
  local keep="$1"
  find_comfy
  if [ -n "$COMFY_REQS" ]; then
    local reqs
    reqs="$(mktemp)"
    grep -viE '^\s*(torch|torchvision|torchaudio|spandrel)\b' "$COMFY_REQS" > "$reqs"
    # requests: app/frontend_management.py imports it and requirements.txt does not list it (0.3.64)
    "$PY" -m pip install -q -c "$keep" -r "$reqs" requests
    # spandrel is in ComfyUI's requirements but pulls a torch of its own, so it goes in with --no-deps (its needs are
    # already there). Without it core's upscale nodes fail to import and the pinned frontend (1.27.10) throws while
    # building every model-file combo widget, so no Wan workflow loads cleanly in the browser tests.
    "$PY" -c "import spandrel" 2>/dev/null || "$PY" -m pip install -q --no-deps spandrel
    export SPARSEFLOW_REQUIRE_COMFYUI="${SPARSEFLOW_REQUIRE_COMFYUI:-1}"
  fi
  if [ -x tests/browser/setup.sh ]; then
    bash tests/browser/setup.sh || echo "dev.sh: browser test set-up failed: the browser tests will FAIL (or skip" \
      "without ComfyUI)" >&2
  fi
}

run_tests() {
  local rc1 rc2=0
  echo "dev.sh: run 1: the whole suite (ComfyUI tree 0.3.64 unless COMFYUI_PATH names another)"
  set +e
  SPARSEFLOW_COMFY_TREE=0.3.64 "$PY" -m pytest "$@"
  rc1=$?
  set -e
  if [ "$rc1" -eq 5 ]; then
    echo "dev.sh: pytest collected no tests (exit 5): that is a broken checkout, failing" >&2
    rc1=1
  fi
  if [ "$NEWEST" -eq 1 ]; then
    echo "dev.sh: run 2: the ComfyUI tests (-m comfyui) on the newest-shape tree (0.3.64 + newest-overlay)"
    set +e
    env -u COMFYUI_PATH SPARSEFLOW_COMFY_TREE=newest SPARSEFLOW_REQUIRE_COMFYUI=1 "$PY" -m pytest -m comfyui "$@"
    rc2=$?
    set -e
    if [ "$rc2" -eq 5 ]; then
      echo "dev.sh: run 2 selected no ComfyUI test (the arguments name none)"
      rc2=0
    fi
  fi
  echo "dev.sh: run 1 (0.3.64) exit $rc1; run 2 (newest) $([ "$NEWEST" -eq 1 ] && echo "exit $rc2" || echo SKIPPED)"
  [ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]
}

cmd="${1:-}"
case "$cmd" in
  demo)
    shift
    setup
    exec "$PY" -m sparseflow demo "$@"
    ;;
  test)
    shift
    setup with-comfy
    run_tests "$@"
    ;;
  *)
    echo "usage: bash dev.sh demo [demo options] | bash dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac
