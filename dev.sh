#!/usr/bin/env bash
# SparseFlow developer entry point. On a fresh machine each command does all of its own set-up:
#   bash dev.sh demo    # install what is missing, then run the main job: python -m sparseflow demo
#   bash dev.sh test    # install what is missing, then run the whole test suite (CI runs exactly this)
# Set-up installs torch + torchvision (the ordinary build; it runs on a CPU) only when they are missing and pins
# them for every later install, so nothing here ever replaces the torch you have. When ComfyUI is present at
# $COMFYUI_PATH (default /opt/ComfyUI) its requirements are installed too (never torch/torchvision/torchaudio/
# spandrel), so the integration tests run; this script never downloads ComfyUI itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY="${PYTHON:-python3}"
COMFYUI_PATH="${COMFYUI_PATH:-/opt/ComfyUI}"
export COMFYUI_PATH

setup() {
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "dev.sh: installing torch + torchvision"
    "$PY" -m pip install -q torch torchvision
  fi
  local keep
  keep="$(mktemp)"
  "$PY" -m pip freeze 2>/dev/null | grep -iE '^(torch|torchvision|torchaudio|triton)==' > "$keep" || true
  "$PY" -m pip install -q -c "$keep" -r requirements.txt -r requirements-dev.txt
  if [ -f "$COMFYUI_PATH/main.py" ] && [ -f "$COMFYUI_PATH/requirements.txt" ]; then
    local reqs
    reqs="$(mktemp)"
    grep -viE '^\s*(torch|torchvision|torchaudio|spandrel)\b' "$COMFYUI_PATH/requirements.txt" > "$reqs"
    "$PY" -m pip install -q -c "$keep" -r "$reqs"
    # spandrel is in ComfyUI's requirements but pulls a torch of its own, so it goes in with --no-deps (its needs are
    # already there). Without it core's upscale nodes fail to import and the pinned frontend (1.27.10) throws while
    # building every model-file combo widget, so no Wan workflow loads cleanly in the browser tests.
    "$PY" -c "import spandrel" 2>/dev/null || "$PY" -m pip install -q --no-deps spandrel
  else
    echo "dev.sh: no ComfyUI at $COMFYUI_PATH: ComfyUI integration tests will be SKIPPED (set COMFYUI_PATH)"
  fi
  if [ -x tests/browser/setup.sh ]; then
    bash tests/browser/setup.sh || echo "dev.sh: browser test set-up failed: browser tests will be SKIPPED"
  fi
  "$PY" - "$keep" <<'PY'
import sys, importlib.metadata as md
want = dict(line.strip().split("==") for line in open(sys.argv[1]) if "==" in line)
for name, ver in want.items():
    have = md.version(name)
    assert have == ver, f"dev.sh: {name} changed from {ver} to {have} during set-up"
PY
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
    setup
    set +e
    "$PY" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "dev.sh: pytest collected no tests (exit 5): that is a broken checkout, failing" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash dev.sh demo [demo options] | bash dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac
