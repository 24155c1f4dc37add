#!/usr/bin/env bash
# End-to-end ComfyUI bench (bench/e2e_comfy.py) on the GPU machine, and the carry it needs.
#
#   bash bench/run_e2e_gpu.sh prepare              # here, once: fills .comfy_e2e/, .whl/, .peers/ (all git-ignored)
#   run(command="bash bench/run_e2e_gpu.sh gpu wan21_1.3b", carry=[".comfy_e2e", ".whl", ".peers"], timeout_s=540)
#   bash bench/run_e2e_gpu.sh gpu wan22_5b --configs default,sparseflow --steps 3   # extra args go to e2e_comfy.py
#   ... gpu wan21_14b --configs default,sage --save-reference   # keeps the default run in $OUT/reference_*.safetensors;
#   copy those files back into .e2e_ref/ (git-ignored), carry it, and a later call compares against them:
#   ... gpu wan21_14b --configs default+compile,sparseflow+compile --reference .e2e_ref/reference_wan21_14b
#
# .comfy_e2e/  the .py files of ComfyUI 0.3.64's comfy/, comfy_api/ and the root modules they import (about
#          3 MB; copied from $COMFYUI_SRC, default ../shared/comfyui/0.3.64, see docs/testing.md). Never committed.
# .whl/    torchsde 0.2.6 + trampoline 0.1.2: the only packages ComfyUI's sampling stack imports that the GPU
#          image lacks (checked against KINDS.md's package list: comfy.k_diffusion.sampling imports torchsde).
# .peers/  sageattention 1.0.6 and comfy-kitchen 0.2.40 (sol_attn), from bench/prepare_peers.sh.
# .peers_sage/  sageattention alone (0.1 MB): carried instead of .peers (41 MB, comfy-kitchen's CUDA .so) beside
#          .e2e_ref/ (a saved 14B default run, 19 MB), which together with .peers would pass the 64 MiB carry limit;
#          the command then sets SPARSEFLOW_PEERS=.peers_sage (bench/e2e/boot.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
mode="${1:-}"
shift || true

prepare() {
    local src="${COMFYUI_SRC:-$REPO/../shared/comfyui/0.3.64}"
    for ignored in /.comfy_e2e/ /.whl/ /.peers/ /.peers_sage/ /.e2e_ref/; do
        grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >> .git/info/exclude
    done
    if [ ! -f .comfy_e2e/comfy/sd.py ]; then
        [ -f "$src/comfy/sd.py" ] || { echo "run_e2e_gpu: no ComfyUI at $src" >&2; exit 1; }
        mkdir -p .comfy_e2e
        # comfy_api.latest (nodes/patch.py's `io`) pulls in comfy_execution, protocol.py and ComfyUI's nodes.py
        (cd "$src" && find comfy comfy_api comfy_execution comfy_config app utils middleware api_server \
            -name '*.py' -print0 | tar --null -cf - -T - ./*.py) | tar -xf - -C .comfy_e2e
        echo "run_e2e_gpu: copied ComfyUI $(grep -o '"[0-9.]*"' .comfy_e2e/comfyui_version.py) .py files into .comfy_e2e/"
    else
        echo "run_e2e_gpu: .comfy_e2e/ already holds ComfyUI $(grep -o '"[0-9.]*"' .comfy_e2e/comfyui_version.py)"
    fi
    mkdir -p .whl
    for pkg in torchsde==0.2.6 trampoline==0.1.2; do
        ls .whl/"${pkg%%==*}"-"${pkg##*==}"-*.whl >/dev/null 2>&1 && continue
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl "$pkg"
    done
    [ -f .peers/site/comfy_kitchen/__init__.py ] || bash bench/prepare_peers.sh
    rm -rf .peers_sage && mkdir -p .peers_sage/site && cp -r .peers/site/sageattention* .peers_sage/site/
    du -sh .comfy_e2e .whl .peers .peers_sage
}

gpu() {
    [ -f .comfy_e2e/comfy/sd.py ] || { echo "run_e2e_gpu: .comfy_e2e/ missing: run prepare here, carry it" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    local out="${OUT:-$REPO/bench/e2e_out}"
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
    # one log for every run of this call ($OUT brings back at most 8 files: a json per model run, one log)
    for model in ${1//,/ }; do
        python3 bench/e2e_comfy.py --model "$model" --out "$out" "${@:2}" 2>&1 \
            | grep -v -e "torchaudio missing" | tee -a "$out/log_e2e.txt" | grep -v -E " INFO |^[WI][0-9]{4} " || true
    done
}

case "$mode" in
    prepare) prepare ;;
    gpu) gpu "$@" ;;
    *) echo "usage: bash bench/run_e2e_gpu.sh prepare | gpu MODEL[,MODEL...] [e2e_comfy.py args]" >&2; exit 2 ;;
esac
