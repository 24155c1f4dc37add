#!/usr/bin/env bash
# Fidelity bench on the GPU machine: train the small Wan DiT, save it, evaluate every setting, plot. Output in $OUT.
#
#   bash bench/prepare_peers.sh; bash bench/fidelity/prepare_comfy.sh          # here, once (git-ignored folders)
#   run(command="bash bench/fidelity/run_gpu.sh", carry=[".comfy", ".peers"], timeout_s=540)
#
# Budgets (seconds, env): TRAIN_BUDGET (training, the step count is fixed after 20 timed steps), EVAL_BUDGET
# (quality stage), FULL_CAL_CAP (full-size calibration timing; extrapolated past it). Pass TRAIN_STEPS to
# reproduce a run's exact step count. The weights (~27 MB, over the 10 MB repo limit) are regenerated, not kept.
set -uo pipefail
OUT="${OUT:-/tmp/fidelity_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
WEIGHTS="${WEIGHTS:-/tmp/fidelity_wan_small.safetensors}"
steps_arg=()
[ -n "${TRAIN_STEPS:-}" ] && steps_arg=(--steps "$TRAIN_STEPS")
{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
python3 -m bench.fidelity.train --out "$WEIGHTS" --time-budget "${TRAIN_BUDGET:-240}" "${steps_arg[@]}" 2>&1 \
    | grep -v "^WARNING:root" | tee "$OUT/train.log" || exit 1
python3 -m bench.fidelity.evaluate --weights "$WEIGHTS" --out "$OUT/results.json" \
    --time-budget "${EVAL_BUDGET:-150}" --full-calibration-cap "${FULL_CAL_CAP:-60}" \
    --samples "$OUT/fidelity_samples.png" 2>&1 \
    | grep -v "^WARNING:root" | tee "$OUT/eval.log"
[ -f "$OUT/results.json" ] || exit 1
python3 -m bench.fidelity.report "$OUT/results.json" --plot "$OUT/fidelity_quality_vs_speed.png" 2>&1 \
    | tee "$OUT/report.md"
