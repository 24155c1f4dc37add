#!/usr/bin/env bash
# Copy the minimal part of a local ComfyUI (the files that `import comfy.ldm.wan.model, comfy.ops` loads) into
# the git-ignored folder .comfy/ so the GPU machine, which has no ComfyUI and no network, can import
# ComfyUI's own WanModel:   bench/fidelity/prepare_comfy.sh   then   run(..., carry=[".comfy", ".peers"]).
# ComfyUI's code is never committed (/.comfy/ is in .gitignore).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="${COMFYUI_PATH:-$REPO/../shared/comfyui/0.3.64}"
DEST="$REPO/.comfy"
PY="${PYTHON:-python3}"
[ -f "$SRC/comfy/ldm/wan/model.py" ] || { echo "prepare_comfy: no ComfyUI at $SRC" >&2; exit 1; }
mkdir -p "$DEST"   # never removed: bench/run_e2e_gpu.sh fills the same folder with a superset
"$PY" - "$SRC" "$DEST" <<'PYEOF'
import os, shutil, sys
src, dest = sys.argv[1], sys.argv[2]
sys.path.insert(0, src)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.ldm.wan.model, comfy.ops  # noqa: E401,F401
files = sorted({m.__file__ for m in list(sys.modules.values())
                if getattr(m, "__file__", None) and os.path.abspath(m.__file__).startswith(os.path.abspath(src) + os.sep)})
for f in files:
    rel = os.path.relpath(f, src)
    os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
    if not os.path.exists(os.path.join(dest, rel)):
        shutil.copy2(f, os.path.join(dest, rel))
for extra in ("LICENSE", "comfyui_version.py"):
    if os.path.isfile(os.path.join(src, extra)):
        shutil.copy2(os.path.join(src, extra), os.path.join(dest, extra))
print(f"prepare_comfy: {len(files)} files from {src}")
PYEOF
git -C "$REPO" check-ignore -q "$DEST" || echo "prepare_comfy: warning: $DEST is not git-ignored" >&2
echo "prepare_comfy: done, $(du -sh "$DEST" | cut -f1) in $DEST"
