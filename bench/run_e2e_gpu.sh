#!/usr/bin/env bash
# End-to-end ComfyUI bench (bench/e2e_comfy.py) on the GPU machine, on ComfyUI 0.3.64 and on the newest-shape tree.
#
#   bash bench/run_e2e_gpu.sh prepare              # here, once: fills .comfy_e2e/, .comfy_e2e_newest/, .whl/, .peers/
#   run(command="bash bench/run_e2e_gpu.sh trees wan21_1.3b", carry=[".comfy_e2e", ".comfy_e2e_newest", ".whl",
#       ".peers"], timeout_s=600)
#       # one model on both trees in one call: the newest-shape tree with NEWEST_CONFIGS, then 0.3.64 with OLD_CONFIGS
#       # (defaults below; either may be "-" to skip that tree); extra args go to e2e_comfy.py of both, e.g.
#   NEWEST_CONFIGS=default,sol_attn,sparseflow,sparseflow_quality OLD_CONFIGS=- bash bench/run_e2e_gpu.sh trees \
#       wan21_14b --warmup-steps 1 --save-reference
#   bash bench/run_e2e_gpu.sh gpu wan22_5b --configs default,sparseflow --steps 3   # 0.3.64 only, as before
#   ... gpu wan21_14b --configs default,sage --save-reference   # keeps the default run in $OUT/reference_*.safetensors;
#   copy those files back into .e2e_ref/ (git-ignored), carry it, and a later call compares against them:
#   ... gpu wan21_14b --configs default+compile,sparseflow+compile --reference .e2e_ref/reference_wan21_14b
#   bash bench/run_e2e_gpu.sh trees tiny           # CPU: the same two-tree path on a tiny checkpoint (tests do this)
#
# .comfy_e2e/  the .py files of ComfyUI 0.3.64's comfy/, comfy_api/ and the root modules they import (about
#          3 MB; from $COMFYUI_SRC, default ../shared/comfyui/0.3.64 when present, else /opt/ComfyUI;
#          see docs/testing.md). Never committed.
# .comfy_e2e_newest/  the same files with ../shared/comfyui/newest-overlay/files copied over them and its
#          with_comfy_kitchen.py applied: newest ComfyUI's Wan forward (containers, attn1/attn2 patches, block_index,
#          grid_sizes) calling comfy_kitchen's apply_rope1 and adaln on CUDA as newest ComfyUI does.
# .whl/    torchsde 0.2.6 + trampoline 0.1.2: the only packages ComfyUI's sampling stack imports that the GPU
#          image lacks (checked against KINDS.md's package list: comfy.k_diffusion.sampling imports torchsde).
# .peers/  sageattention 1.0.6 and comfy-kitchen 0.2.40 (sol_attn for core "Model Sparse Attention", and the newest
#          tree's apply_rope1 / adaln), from bench/prepare_peers.sh.
# .peers_sage/  sageattention alone (0.1 MB): carried instead of .peers (41 MB, comfy-kitchen's CUDA .so) beside
#          .e2e_ref/ (a saved 14B default run, 19 MB), which together with .peers would pass the 64 MiB carry limit;
#          the command then sets SPARSEFLOW_PEERS=.peers_sage (bench/e2e/boot.py).
# E2E_TREES=DIR puts/reads .comfy_e2e and .comfy_e2e_newest in DIR instead of the repository root (tests).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
mode="${1:-}"
shift || true
SHARED="${SPARSEFLOW_SHARED:-$REPO/../shared}"
TREES="${E2E_TREES:-$REPO}"
NEWEST_TREE_NAME="newest-overlay+comfy-kitchen"

copy_py() {  # copy_py SRC DEST: the .py files ComfyUI's sampling stack and comfy_api.latest import
    rm -rf "$2" && mkdir -p "$2"
    # comfy_api.latest (nodes/patch.py's `io`) pulls in comfy_execution, protocol.py and ComfyUI's nodes.py
    (cd "$1" && find comfy comfy_api comfy_execution comfy_config app utils middleware api_server \
        -name '*.py' -print0 | tar --null -cf - -T - ./*.py) | tar -xf - -C "$2"
}

build_trees() {
    local src="${COMFYUI_SRC:-}"
    if [ -z "$src" ]; then
        if [ -f "$SHARED/comfyui/0.3.64/comfy/sd.py" ]; then src="$SHARED/comfyui/0.3.64"; else src=/opt/ComfyUI; fi
    fi
    [ -f "$src/comfy/sd.py" ] || { echo "run_e2e_gpu: no ComfyUI at $src" >&2; exit 1; }
    local overlay="$SHARED/comfyui/newest-overlay"
    [ -d "$overlay/files" ] || { echo "run_e2e_gpu: no newest overlay at $overlay" >&2; exit 1; }
    copy_py "$src" "$TREES/.comfy_e2e"
    copy_py "$src" "$TREES/.comfy_e2e_newest"
    cp -r "$overlay/files/." "$TREES/.comfy_e2e_newest/"
    python3 "$overlay/with_comfy_kitchen.py" "$TREES/.comfy_e2e_newest" >/dev/null
    echo "run_e2e_gpu: ComfyUI $(grep -o '"[0-9.]*"' "$TREES/.comfy_e2e/comfyui_version.py") .py files from $src" \
        "into .comfy_e2e/ and, with the newest overlay + with_comfy_kitchen.py, into .comfy_e2e_newest/"
}

prepare() {
    local exclude
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    for ignored in /.comfy_e2e/ /.comfy_e2e_newest/ /.whl/ /.peers/ /.peers_sage/ /.e2e_ref/; do
        grep -qxF "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >> "$exclude"
    done
    build_trees
    mkdir -p .whl
    for pkg in torchsde==0.2.6 trampoline==0.1.2; do
        ls .whl/"${pkg%%==*}"-"${pkg##*==}"-*.whl >/dev/null 2>&1 && continue
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl "$pkg"
    done
    [ -f .peers/site/comfy_kitchen/__init__.py ] || bash bench/prepare_peers.sh
    rm -rf .peers_sage && mkdir -p .peers_sage/site && cp -r .peers/site/sageattention* .peers_sage/site/
    du -sh .comfy_e2e .comfy_e2e_newest .whl .peers .peers_sage
}

setup_gpu() {
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    OUT_DIR="${OUT:-$REPO/bench/e2e_out}"
    mkdir -p "$OUT_DIR"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm \
        --format=csv,noheader || true
}

e2e() {  # e2e MODEL [args]: one e2e_comfy.py run; one log for every run of this call ($OUT brings back few files)
    local model="$1" what=(--model "$1")
    [ "$model" = tiny ] && what=(--tiny)
    python3 bench/e2e_comfy.py "${what[@]}" --out "$OUT_DIR" "${@:2}" 2>&1 \
        | grep -v -e "torchaudio missing" | tee -a "$OUT_DIR/log_e2e.txt" | grep -v -E " INFO |^[WI][0-9]{4} " || true
}

gpu() {
    [ -f .comfy_e2e/comfy/sd.py ] || { echo "run_e2e_gpu: .comfy_e2e/ missing: run prepare here, carry it" >&2; exit 1; }
    setup_gpu
    for model in ${1//,/ }; do
        e2e "$model" "${@:2}"
    done
}

trees() {  # trees MODEL [args]: the newest-shape tree, then 0.3.64, in one call
    local model="$1" newest old
    newest="${NEWEST_CONFIGS:-default,sol_attn,sparseflow,sparseflow_quality,sparseflow_noblock,sparseflow_nofuse}"
    old="${OLD_CONFIGS:-default,sparseflow}"
    if [ "$model" = tiny ]; then
        newest="${NEWEST_CONFIGS:-default,sparseflow_quality}" old="${OLD_CONFIGS:-default,sparseflow_quality}"
    fi
    for dir in .comfy_e2e .comfy_e2e_newest; do
        [ -f "$TREES/$dir/comfy/sd.py" ] || { echo "run_e2e_gpu: $TREES/$dir missing: run prepare here, carry it" >&2; exit 1; }
    done
    setup_gpu
    if [ "$newest" != - ]; then
        COMFYUI_PATH="$TREES/.comfy_e2e_newest" SPARSEFLOW_E2E_TREE="$NEWEST_TREE_NAME" \
            e2e "$model" --configs "$newest" --tag _newest "${@:2}"
    fi
    if [ "$old" != - ]; then
        COMFYUI_PATH="$TREES/.comfy_e2e" SPARSEFLOW_E2E_TREE=0.3.64 e2e "$model" --configs "$old" --tag _0364 "${@:2}"
    fi
}

case "$mode" in
    prepare) prepare ;;
    build-trees) build_trees ;;
    gpu) gpu "$@" ;;
    trees) trees "$@" ;;
    *) echo "usage: bash bench/run_e2e_gpu.sh prepare | build-trees | gpu MODEL[,MODEL...] [e2e_comfy.py args]" \
            "| trees MODEL [e2e_comfy.py args]" >&2; exit 2 ;;
esac
