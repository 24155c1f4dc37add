#!/usr/bin/env bash
# Sequence-parallel bench on a multi-GPU machine (the `run` tool's nvidia-h200-x8 kind; nothing multi-GPU has been
# measured yet). The GPU machine has no network, so yunchang comes in as a wheel carried in .peers/:
#
#   python3 -m pip download yunchang==0.6.4 --no-deps -d .peers/wheels            # here, once
#   run(command="bash bench/run_ulysses_gpu.sh", carry=[".peers"], kind="nvidia-h200-x8")
#
# For each model and each Ulysses degree P in DEGREES that fits the GPU count, one torchrun of bench_ulysses.py
# (dense, SparseFlow, SparseFlow + head balancing; heuristic and mixed routing), then the scaling table.
# MODELS="wan14b_720p wan22_5b_720p" and DEGREES="1 2 4 8" pick the runs (split them if one call nears 10 min);
# JSON rows, logs and summary.md go to $OUT/ulysses.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench_out}/ulysses"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import yunchang" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-index --find-links .peers/wheels yunchang || {
        echo "run_ulysses_gpu: yunchang is missing and .peers/wheels has no wheel (see the header)" >&2; exit 2; }
fi
nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m | tee -a "$OUT/gpu.txt"
ngpu=$(python3 -c "import torch; print(torch.cuda.device_count())")
rc=0
for model in ${MODELS:-wan14b_720p wan22_5b_720p}; do
    for p in ${DEGREES:-1 2 4 8}; do
        if (( p > ngpu )); then
            echo "run_ulysses_gpu: P=$p skipped: $ngpu GPUs" | tee -a "$OUT/bench.log"
            continue
        fi
        start=$(date +%s)
        python3 -m torch.distributed.run --standalone --nproc-per-node "$p" bench/bench_ulysses.py --model "$model" \
            --out "$OUT" 2>&1 | tee -a "$OUT/bench.log"
        rc=$(( rc | PIPESTATUS[0] ))
        echo "run_ulysses_gpu: $model P=$p exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.log"
    done
done
python3 bench/bench_ulysses.py --summarize "$OUT" | tee "$OUT/summary.md"
exit "$rc"
