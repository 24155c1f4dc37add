#!/usr/bin/env bash
# On the GPU machine (the `run` tool, from the repo root, peers carried in .peers/ by bench/prepare_peers.sh):
# GPU tests of the kernel and the op, then the bench; logs, JSON rows and the markdown table go to $OUT.
#
#   bash bench/run_gpu.sh [all|tests|bench|sweep|tiers|profile|prologue|int8]  SHAPES=wan13b_480p,wan14b_720p picks shapes
#   sweep: every launch tier's configs side by side (bench_attention.py --sweep; kernels/configs.py), plus
#          EXTRA_CONFIGS candidates
#   tiers: the kernel tests with each smaller tier's configs forced ($SPARSEFLOW_LAUNCH_TIER: what an A100 and an
#          RTX 30/40/50 card get, on this GPU), then the bench's SparseFlow rows once per tier, and the config sweep
#          (TIER_PARTS="tests bench sweep" picks parts; TEST_TIERS, TIERS, TIER_SHAPES pick tiers and shapes)
#   profile: Nsight Compute on one launch per case of bench/profile_kernel.py (CASES=w0_13b,dense_13b,w0_14b;
#            PROFILE_ARGS="--config 128/64/8/3 --pointers --precision fp8" another launch, PROFILE_TAG names the file)
#   prologue: the fused QK-norm + RoPE prologue against ComfyUI's code path (bench/bench_prologue.py)
#   int8: the int8-qk and fp8 paths (spec §8): their GPU tests against the quantized references, then the bench's
#         SparseFlow rows at fp16, int8-qk and fp8 with the hopper and the 99 KiB consumer configs (TIERS, INT8_SHAPES
#         pick them; PRECISIONS=fp16,int8-qk narrows the precisions)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STAGE="${1:-all}"
SHAPES="${SHAPES:-wan13b_480p,wan13b_480p_b2,wan14b_720p,wan22_5b_720p}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
rc=0
if [[ "$STAGE" == all || "$STAGE" == tests ]]; then
    start=$(date +%s)
    python3 -m pytest tests/test_kernels.py tests/test_kernels_lse.py tests/test_ops.py -q -s -p no:cacheprovider \
        -o addopts="-rs" --durations=8 2>&1 | tee "$OUT/tests.log"
    rc=${PIPESTATUS[0]}
    echo "run_gpu: tests exit $rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.log"
fi
if [[ "$STAGE" == all || "$STAGE" == bench ]]; then
    python3 bench/bench_attention.py --shapes "$SHAPES" --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log"
    rc=$(( rc | PIPESTATUS[0] ))
fi
PARTS="${TIER_PARTS:-tests bench sweep}"
if [[ "$STAGE" == tiers && "$PARTS" == *tests* ]]; then
    for tier in ${TEST_TIERS:-consumer a100}; do
        start=$(date +%s)
        SPARSEFLOW_LAUNCH_TIER=$tier python3 -m pytest tests/test_kernels.py -q -s -p no:cacheprovider \
            -o addopts="-rs" 2>&1 | tee "$OUT/tests_$tier.log"
        rc=$(( rc | PIPESTATUS[0] ))
        echo "run_gpu: kernel tests with tier $tier forced: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s" \
            | tee -a "$OUT/tests_$tier.log"
    done
fi
if [[ "$STAGE" == tiers && "$PARTS" == *bench* ]]; then
    python3 bench/bench_attention.py --shapes "${TIER_SHAPES:-wan13b_480p,wan14b_720p}" --providers sdpa_default \
        --tiers "${TIERS:-hopper,a100,consumer}" --out "$OUT/bench_tiers" 2>&1 | tee "$OUT/bench_tiers.log"
    rc=$(( rc | PIPESTATUS[0] ))
fi
if [[ "$STAGE" == tiers && "$PARTS" == *sweep* ]]; then
    python3 bench/bench_attention.py --sweep --shapes "${TIER_SHAPES:-wan13b_480p,wan14b_720p}" \
        --cases window0+anchor0 --tiers "${TIERS:-hopper,a100,consumer}" --out "$OUT/bench_tiers" 2>&1 \
        | tee "$OUT/sweep_tiers.log"
    rc=$(( rc | PIPESTATUS[0] ))
fi
if [[ "$STAGE" == sweep ]]; then
    # SWEEP_CASES, SWEEP_TIERS, EXTRA_CONFIGS (tier:BM/BN/warps/stages,...: candidates beside the tiers' own) and
    # SWEEP_PRECISIONS (one sweep each) narrow or widen it
    for precision in ${SWEEP_PRECISIONS:-fp16}; do
        python3 bench/bench_attention.py --sweep --shapes "${SWEEP_SHAPES:-wan13b_480p,wan14b_720p}" \
            --cases "${SWEEP_CASES:-}" --tiers "${SWEEP_TIERS:-}" --extra-configs "${EXTRA_CONFIGS:-}" \
            --precision "$precision" --out "$OUT/bench_$precision" 2>&1 | tee "$OUT/sweep_$precision.log"
        rc=$(( rc | PIPESTATUS[0] ))
    done
fi
if [[ "$STAGE" == profile ]]; then
    ncu --profile-from-start off --clock-control none --kernel-name regex:'_fused_fwd_kernel|_norm_rope_kernel' \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section InstructionStats \
        python3 bench/profile_kernel.py --cases "${CASES:-w0_13b,dense_13b,w0_14b}" ${PROFILE_ARGS:---prologue} 2>&1 \
        | tee "$OUT/ncu${PROFILE_TAG:-}.txt"
    rc=$(( rc | PIPESTATUS[0] ))
fi
if [[ "$STAGE" == int8 ]]; then
    python3 -m pytest tests/test_kernels_int8.py tests/test_quantize.py tests/test_kernels_fp8.py tests/test_fp8.py \
        -q -s -p no:cacheprovider -o addopts="-rs" 2>&1 | tee "$OUT/tests_int8.log"
    rc=${PIPESTATUS[0]}
    python3 bench/bench_attention.py --shapes "${INT8_SHAPES:-wan13b_480p,wan14b_720p}" --providers sdpa_default,sage \
        --precision "${PRECISIONS:-fp16,int8-qk,fp8}" --tiers "${TIERS:-hopper,consumer}" --out "$OUT/bench_int8" 2>&1 \
        | tee "$OUT/bench_int8.log"
    rc=$(( rc | PIPESTATUS[0] ))
fi
if [[ "$STAGE" == prologue ]]; then
    python3 bench/bench_prologue.py --out "$OUT" 2>&1 | tee "$OUT/prologue.log"
    rc=$(( rc | PIPESTATUS[0] ))
fi
exit "$rc"
