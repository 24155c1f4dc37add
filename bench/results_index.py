"""bench/RESULTS.md: one row per kept result file (bench/results, bench/e2e/results): what it measured, the GPU, the
commit, when, the command that made it and the docs that cite it.

GPU, commit, time and (for the end-to-end JSON) the command come from the files themselves; what each measured is
written below, once per file. `python3 bench/results_index.py` rewrites bench/RESULTS.md; tests/test_docs.py fails
when a result file has no entry here or RESULTS.md is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("bench/results", "bench/e2e/results")
INDEX = REPO / "bench" / "RESULTS.md"
E2E = "bash bench/run_e2e_gpu.sh gpu"

# file name -> (what it measured, command when it cannot be read from the file, GPU when the file does not say)
KERNEL = {
    "bench_h200_30f771b.json": ("kernel vs peers, every provider at every shape (the current kernel's figures)",
                                "SPARSEFLOW_COMMIT=30f771b bash bench/run_gpu.sh bench", None),
    "bench_h200_30f771b.md": ("the table of bench_h200_30f771b.json", "(written by the same run)", "NVIDIA H200"),
    "bench_h200_tiers_08926ac.json": ("issue 16: SparseFlow rows once per launch tier (hopper: the H200's own; a100 "
                                      "and consumer forced: what an A100 / RTX 30-50 card's configs give here, a proxy)"
                                      " vs SDPA default, 1.3B and 14B (kernels/ of 08926ac; device .git was stale)",
                                      "bash bench/run_gpu.sh tiers  (TIER_PARTS=\"bench sweep\")", None),
    "bench_h200_tiers_08926ac.md": ("the table of bench_h200_tiers_08926ac.json", "(written by the same run)",
                                    "NVIDIA H200"),
    "bench_h200_tiers_08926ac_sweep.json": ("issue 16: every tier's configs side by side (and Hopper's with pointer "
                                            "loads), window 0 + anchor 0 with compensation and a third of heads "
                                            "linear", "(the same run)", None),
    "bench_h200_tiers_08926ac_sweep.md": ("the table of bench_h200_tiers_08926ac_sweep.json", "(the same run)",
                                          "NVIDIA H200"),
    "tests_h200_tiers_08926ac.log": ("GPU tests: kernel, op, prologue, block add + norm on the H200's own tier, then "
                                     "the kernel tests with the consumer and a100 tiers forced",
                                     "python3 -m pytest tests/test_kernels.py tests/test_ops.py tests/test_prologue.py "
                                     "tests/test_residual_norm.py; TIER_PARTS=tests bash bench/run_gpu.sh tiers",
                                     "NVIDIA H200"),
    "bench_h200_int8_3fb78be.json": ("issue 21: fp16, int8-qk and fp8 (e4m3 v row-major, before 720fd4a) with the "
                                     "hopper and the 99 KiB consumer configs, SDPA default and Sage 1.0.6; 14B rows "
                                     "stop at fp8 random20 (stage cut at 300 s; rows from its log)",
                                     "bash bench/run_gpu.sh int8", "NVIDIA H200"),
    "bench_h200_int8_3fb78be.md": ("the table of bench_h200_int8_3fb78be.json", "(written from its rows)",
                                   "NVIDIA H200"),
    "bench_h200_fp8_vt_720fd4a.md": ("issue 21: fp8 with e4m3 v token-contiguous (720fd4a) beside fp16, 1.3B",
                                     "python3 bench/bench_attention.py --shapes wan13b_480p --providers sdpa_default "
                                     "--precision fp16,fp8 --tiers hopper", "NVIDIA H200"),
    "gpu_tests_h200_3fb78be.log": ("GPU tests this session: kernel + LSE + op, the int8 / fp8 tests (4 bit-for-bit "
                                   "pre-pass failures, fixed in fa2b956), the kernel tests with the consumer tier "
                                   "forced, then the fp8 / int8 tests at 720fd4a", "bash bench/run_gpu.sh tests; bash "
                                   "bench/run_gpu.sh int8; TEST_TIERS=consumer TIER_PARTS=tests bash bench/run_gpu.sh "
                                   "tiers; python3 -m pytest tests/test_kernels_fp8.py tests/test_kernels_int8.py",
                                   "NVIDIA H200"),
    "bench_h200_sweep_67a3401.json": ("issue 16: each tier's configs and fitting candidates (EXTRA_CONFIGS) on the "
                                      "all-sparse window 0 + anchor 0 case, 1.3B and 14B; none beat their tier's own",
                                      "EXTRA_CONFIGS=<docs/performance.md> SWEEP_CASES=window0-sparse bash "
                                      "bench/run_gpu.sh sweep", None),
    "bench_h200_sweep_67a3401.md": ("the table of bench_h200_sweep_67a3401.json", "(written by the same run)",
                                    "NVIDIA H200"),
    "bench_h200_sweep_fp8_67a3401.json": ("issue 21: fp8 configs and load paths of the hopper and consumer tiers, 1.3B "
                                          "window 0 (every head sparse): the dropped 128/128/8/3 and 128/64/8/3 timed",
                                          "EXTRA_CONFIGS=hopper:128/128/8/3 SWEEP_TIERS=hopper,consumer SWEEP_SHAPES="
                                          "wan13b_480p SWEEP_CASES=window0-sparse SWEEP_PRECISIONS=fp8 bash "
                                          "bench/run_gpu.sh sweep", None),
    "bench_h200_sweep_fp8_67a3401.md": ("the table of bench_h200_sweep_fp8_67a3401.json", "(written by the same run)",
                                        "NVIDIA H200"),
    "bench_h200_int8_f3401cf.json": ("issue 21: fp16, int8-qk and fp8 with the hopper and consumer configs, 1.3B, "
                                     "SDPA default and Sage 1.0.6 (fp8 configs re-admitted, fp8 on pointer loads)",
                                     "INT8_SHAPES=wan13b_480p bash bench/run_gpu.sh int8", None),
    "bench_h200_int8_f3401cf.md": ("the table of bench_h200_int8_f3401cf.json", "(written by the same run)",
                                   "NVIDIA H200"),
    "bench_h200_fp8_14b_f3401cf.json": ("issue 21: fp16 and fp8 with the hopper and consumer configs, 14B",
                                        "python3 bench/bench_attention.py --shapes wan14b_720p --providers "
                                        "sdpa_default --precision fp16,fp8 --tiers hopper,consumer", None),
    "bench_h200_fp8_14b_f3401cf.md": ("the table of bench_h200_fp8_14b_f3401cf.json", "(written by the same run)",
                                      "NVIDIA H200"),
    "gpu_tests_h200_f3401cf.log": ("GPU tests at f3401cf: the int8 / fp8 tests on the H200's own tier (52 passed), "
                                   "the fp8 kernel tests with the consumer tier forced (14 passed)",
                                   "python3 -m pytest tests/test_kernels_int8.py tests/test_quantize.py "
                                   "tests/test_kernels_fp8.py tests/test_fp8.py; SPARSEFLOW_LAUNCH_TIER=consumer "
                                   "python3 -m pytest tests/test_kernels_fp8.py", "NVIDIA H200"),
    "bench_h200_sweep_comp_d9bf54c.json": ("issues 16, 17: each tier's configs on 1.3B window 0 (every head sparse) "
                                           "without and with pooled compensation (window0-sparse+comp)",
                                           "SWEEP_SHAPES=wan13b_480p SWEEP_CASES=window0-sparse,window0-sparse+comp "
                                           "bash bench/run_gpu.sh sweep", None),
    "bench_h200_sweep_comp_d9bf54c.md": ("the table of bench_h200_sweep_comp_d9bf54c.json", "(written by the same run)",
                                         "NVIDIA H200"),
    "bench_compensation_14dc4c4.jsonl": ("issues 16, 17: compensation's cost split: block-means pre-pass alone, and "
                                         "the kernel with and without compensation, hopper and consumer launches, "
                                         "1.3B and 14B", "python3 bench/bench_compensation.py", "NVIDIA H200"),
    "bench_compensation_b794896.jsonl": ("issues 16, 17: compensation's cost split after the bias pre-pass "
                                         "(b794896's kernel; the JSON's commit is the device copy's stale HEAD)",
                                         "python3 bench/bench_compensation.py", "NVIDIA H200"),
    "bench_h200_tiers_b794896.json": ("issues 16, 17: the whole op and the kernel with each tier's configs forced, "
                                      "1.3B and 14B, after the compensation bias pre-pass (b794896's kernel)",
                                      "python3 bench/bench_attention.py --shapes wan13b_480p,wan14b_720p --providers "
                                      "sdpa_default --tiers hopper,a100,consumer", None),
    "bench_h200_tiers_b794896.md": ("the table of bench_h200_tiers_b794896.json", "(written by the same run)",
                                    "NVIDIA H200"),
    "bench_h200_tiers_f6ed1ac.json": ("issue 16: the whole op and the kernel with each tier's configs forced, 1.3B and "
                                      "14B, with the rtx50 tier (RTX 50: consumer configs, K/V through descriptors); "
                                      "the fused kernel of f6ed1ac (run on the tree before its _query_block refactor, "
                                      "whose sm_90 code is the same); the JSON's commit names that tree",
                                      "python3 bench/bench_attention.py --shapes wan13b_480p,wan14b_720p --providers "
                                      "sdpa_default --tiers hopper,a100,rtx50,consumer", None),
    "bench_h200_tiers_f6ed1ac.md": ("the table of bench_h200_tiers_f6ed1ac.json", "(written by the same run)",
                                    "NVIDIA H200"),
    "bench_h200_precisions_prelim_f6ed1ac.json": ("issues 16, 21: 1.3B, fp16 / int8-qk / fp8 x hopper / rtx50 / "
                                                  "consumer tiers, on a tree before f6ed1ac: its fused kernel, but an "
                                                  "intermediate quantize pre-pass whose fp8 v was wrong (a runtime "
                                                  "`if` between two e4m3 casts; gpu_tests_h200_f6ed1ac.log): its fp8 "
                                                  "rows are void, fp16 and int8-qk rows stand",
                                                  "python3 bench/bench_attention.py --shapes wan13b_480p --providers "
                                                  "sdpa_default --precision fp16,int8-qk,fp8 --tiers "
                                                  "hopper,rtx50,consumer", None),
    "bench_h200_precisions_prelim_f6ed1ac.md": ("the table of bench_h200_precisions_prelim_f6ed1ac.json",
                                                "(written by the same run)", "NVIDIA H200"),
    "profile_prepass_230b8a0.jsonl": ("issue 21: device time per kernel of one 1.3B whole-op call, fp16 / int8-qk / "
                                      "fp8, without and with compensation, before the pre-pass changes (230b8a0)",
                                      "python3 bench/profile_prepass.py", "NVIDIA H200"),
    "profile_prepass_f6ed1ac.jsonl": ("issue 21: the same after the pre-pass changes of f6ed1ac (Markstein division "
                                      "for q and k, 16-byte e4m3 stores), on its tree but for the software e4m3 "
                                      "rounding's sign of zero (fixed after the run)",
                                      "python3 bench/profile_prepass.py", "NVIDIA H200"),
    "profile_prepass_bfdcefa.jsonl": ("issue 21: device time per kernel of one 1.3B whole-op call at bfdcefa (the "
                                      "base of the next two), in the same call as profile_prepass_b7a6116.jsonl (its "
                                      "rows' commit field, set from the call's environment, corrected to the tree's)",
                                      "cd <tree of bfdcefa> && python3 bench/profile_prepass.py", "NVIDIA H200"),
    "profile_prepass_b7a6116.jsonl": ("issue 21: the same at b7a6116 (e4m3 v by Markstein's division and the hardware "
                                      "cast; a k-mean + v-amax pass that measured slower than torch's)",
                                      "python3 bench/profile_prepass.py", "NVIDIA H200"),
    "profile_prepass_bc1cdeb.jsonl": ("issue 21: the same at bc1cdeb (its k-mean pass: the int8-qk rows are 7d32421's "
                                      "k_mean; fp8 rows took v's amax in that pass too, which 7d32421 left to torch)",
                                      "python3 bench/profile_prepass.py --calls 10", "NVIDIA H200"),
    "bench_h200_precisions_b7a6116.json": ("issues 16, 21: 1.3B, fp16 / int8-qk / fp8 with the hopper and consumer "
                                           "tiers (whole op and kernel)",
                                           "python3 bench/bench_attention.py --shapes wan13b_480p --providers "
                                           "sdpa_default --precision fp16,int8-qk,fp8 --tiers hopper,consumer", None),
    "bench_h200_precisions_b7a6116.md": ("the table of bench_h200_precisions_b7a6116.json", "(written by the same run)",
                                         "NVIDIA H200"),
    "bench_h200_tiers_prec_bc1cdeb.json": ("issue 16: 1.3B and 14B, fp16 / int8-qk with the a100, rtx50 and consumer "
                                           "tiers forced (the measurement behind precision auto)",
                                           "python3 bench/bench_attention.py --shapes wan13b_480p,wan14b_720p "
                                           "--providers sdpa_default --precision fp16,int8-qk --tiers "
                                           "a100,rtx50,consumer", None),
    "bench_h200_tiers_prec_bc1cdeb.md": ("the table of bench_h200_tiers_prec_bc1cdeb.json", "(written by the same run)",
                                         "NVIDIA H200"),
    "profile_prepass_961fa01.jsonl": ("issue 21: the same at 961fa01 (the quantize pass one program per tensor, "
                                      "Markstein's division with the 2^100 lift for q and k; its fp8 rows: the split "
                                      "variant 9c276e0 dropped)", "python3 bench/profile_prepass.py", "NVIDIA H200"),
    "profile_prepass_8d8a14e.jsonl": ("issue 21: the same at 8d8a14e (int8-qk rows: the int8 pass as shipped, its PTX "
                                      "equal to 9c276e0's; fp8 rows: one program for q, k, v with the lift, a variant "
                                      "9c276e0 dropped for 9d4ba5c's)", "python3 bench/profile_prepass.py",
                                      "NVIDIA H200"),
    "bench_h200_tiers_int8_961fa01.json": ("issue 16: 1.3B, int8-qk with the a100, rtx50 and consumer tiers forced, "
                                           "after the quantize pass's split (961fa01)",
                                           "python3 bench/bench_attention.py --shapes wan13b_480p --providers "
                                           "sdpa_default --precision int8-qk --tiers a100,rtx50,consumer", None),
    "bench_h200_tiers_int8_961fa01.md": ("the table of bench_h200_tiers_int8_961fa01.json", "(written by the same run)",
                                         "NVIDIA H200"),
    "bench_h200_tiers_int8_5fc9408.json": ("issue 16: the same 1.3B int8-qk rows with the a100 and consumer tiers at "
                                           "5fc9408 (the shipped quantize pass)",
                                           "python3 bench/bench_attention.py --shapes wan13b_480p --providers "
                                           "sdpa_default --precision int8-qk --tiers a100,consumer", None),
    "bench_h200_tiers_int8_5fc9408.md": ("the table of bench_h200_tiers_int8_5fc9408.json", "(written by the same run)",
                                         "NVIDIA H200"),
    "bench_h200_sweep_int8_961fa01.json": ("issue 16: every config of the hopper, a100 and rtx50 tiers at int8-qk "
                                           "(TMA tiers with pointer loads too, an A100 4-stage candidate), 1.3B and "
                                           "14B, window 0 + anchor 0 with and without compensation / linear heads",
                                           "python3 bench/bench_attention.py --sweep --precision int8-qk --shapes "
                                           "wan13b_480p,wan14b_720p --tiers hopper,a100,rtx50 --cases "
                                           "window0+anchor0,window0-sparse --extra-configs a100:128/64/8/4", None),
    "bench_h200_sweep_int8_961fa01.md": ("the table of bench_h200_sweep_int8_961fa01.json", "(written by the same run)",
                                         "NVIDIA H200"),
    "gpu_tests_h200_8d8a14e.log": ("GPU tests of the quantize pass's split: int8 / fp8 kernels and pre-pass bit for "
                                   "bit (961fa01 and 8d8a14e: 57 passed each)",
                                   "python3 -m pytest tests/test_kernels_int8.py tests/test_kernels_fp8.py "
                                   "tests/test_quantize.py tests/test_quantize_division.py tests/test_fp8.py",
                                   "NVIDIA H200"),
    "gpu_tests_h200_consumer_f35182b.log": ("GPU tests: the in-place QK prologue (tests/test_prologue.py, 10 passed), "
                                            "then the kernel, int8 and fp8 kernel tests with the consumer tier's "
                                            "configs forced (24, 17, 17 passed)",
                                            "python3 -m pytest tests/test_prologue.py; SPARSEFLOW_LAUNCH_TIER=consumer "
                                            "python3 -m pytest tests/test_kernels.py tests/test_kernels_int8.py "
                                            "tests/test_kernels_fp8.py", "NVIDIA H200"),
    "memory_peaks_h200_1ff52c9.log": ("issue 17: what is alive at the peak, by allocation site (one sampler step per "
                                      "configuration), 5B / 14B / 1.3B, before and after the FFN pieces' threshold, 5B "
                                      "on both trees at 1ff52c9",
                                      "bash bench/run_e2e_gpu.sh trees MODEL --memory-peak CONFIGS (see its header)",
                                      "NVIDIA H200"),
    "gpu_tests_h200_170a858.log": ("GPU tests at 170a858: the int8-qk pre-pass bit for bit with block scales near and "
                                   "under 2^-64 (the lifted division), the fp8 pre-pass, both at the Wan 1.3B shape: "
                                   "15 passed",
                                   "python3 -m pytest tests/test_kernels_int8.py tests/test_kernels_fp8.py "
                                   "-k 'prepass or k_mean or full_wan13b'", "NVIDIA H200"),
    "gpu_tests_h200_bc1cdeb.log": ("GPU tests of this stop's trees (bfdcefa + variants, b7a6116, bc1cdeb, 7d32421): "
                                   "int8 / fp8 "
                                   "kernels and pre-pass bit for bit, consumer-forced kernel tests, LSE, pre-pass, op",
                                   "python3 -m pytest (files named in the log's header)", "NVIDIA H200"),
    "gpu_tests_h200_f6ed1ac.log": ("GPU tests of the trees leading to f6ed1ac, two calls (the header says which "
                                   "tree each ran): rtx50 tier forced, own tier, int8-qk / fp8 kernels and pre-pass "
                                   "bit for bit at the Wan 1.3B shape, the consumer tier's quantized cases, and the "
                                   "e4m3 v variants' diagnostic",
                                   "python3 -m pytest tests/test_kernels_int8.py tests/test_kernels_fp8.py ...; "
                                   "SPARSEFLOW_LAUNCH_TIER=rtx50 python3 -m pytest tests/test_kernels.py "
                                   "tests/test_kernels_lse.py", "NVIDIA H200"),
    "gpu_tests_h200_b794896.log": ("GPU tests of the compensation bias pre-pass: kernel, pre-pass, LSE, op, int8 and "
                                   "fp8 kernel tests on the H200's tier and with the consumer tier forced (the "
                                   "header says which run saw which tree)",
                                   "python3 -m pytest tests/test_kernels.py tests/test_prepass.py ...; "
                                   "SPARSEFLOW_LAUNCH_TIER=consumer python3 -m pytest tests/test_kernels.py "
                                   "tests/test_kernels_lse.py", "NVIDIA H200"),
    "ncu_h200_w0_13b_tma16_d9bf54c.txt": ("Nsight Compute: 1.3B window 0 (every head sparse), fp16, 128/128/8/3, "
                                          "descriptors (the hopper tier's launch)",
                                          "CASES=w0_13b PROFILE_ARGS=\"--config 128/128/8/3\" bash bench/run_gpu.sh "
                                          "profile", "NVIDIA H200"),
    "ncu_h200_w0_13b_ptr16_64_d9bf54c.txt": ("the same at 128/64/8/3 with pointer loads (the consumer tier's launch)",
                                             "CASES=w0_13b PROFILE_ARGS=\"--config 128/64/8/3 --pointers\" bash "
                                             "bench/run_gpu.sh profile", "NVIDIA H200"),
    "ncu_h200_w0_13b_ptr8_d9bf54c.txt": ("the same at fp8, 128/128/8/3, pointer loads (the hopper tier's fp8 launch)",
                                         "CASES=w0_13b PROFILE_ARGS=\"--config 128/128/8/3 --pointers --precision "
                                         "fp8\" bash bench/run_gpu.sh profile", "NVIDIA H200"),
    "bench_h100_v3.json": ("Version 3 kernel bench, 1.3B and 14B (kernel of ef8dd86 = ea46e08)",
                           "python3 bench/bench_attention.py --shapes wan13b_480p,wan14b_720p "
                           "--providers sdpa_cudnn,flex,sla_triton,sol_attn_topk --out $OUT/bench", None),
    "bench_h100_v3.md": ("the table of bench_h100_v3.json", "(written by the same run)", "NVIDIA H100 80GB HBM3"),
    "sweep_h100_v3.json": ("Version 3 sweep of kernel variants x launch configs (kernel of ef8dd86)",
                           "SWEEP_SHAPES=wan13b_480p,wan14b_720p bash bench/run_gpu.sh sweep", None),
    "sweep_h100_v3.md": ("the table of sweep_h100_v3.json", "(written by the same run)", "NVIDIA H100 80GB HBM3"),
    "prologue_h100.json": ("fused QK-norm + RoPE vs ComfyUI 0.3.64's path at the three Wan shapes",
                           "bash bench/run_gpu.sh prologue", None),
    "prologue_h200_f813e22.txt": ("fused QK-norm + RoPE vs ComfyUI 0.3.64's path, the kernel before 0f93c2f (RoPE "
                                  "matrices read per pair of every head)", "python3 bench/bench_prologue.py",
                                  "NVIDIA H200"),
    "prologue_h200_0f93c2f.txt": ("the same after 0f93c2f (one head's RoPE matrices per token, broadcast over its "
                                  "heads), same call as prologue_h200_f813e22.txt",
                                  "python3 bench/bench_prologue.py", "NVIDIA H200"),
    "gpu_run_h200_prologue_edges_f813e22.log": ("one call: the two prologue benches, tests/test_prologue.py with "
                                                "0f93c2f's kernel (11 passed on the H200's tier, 11 with the consumer "
                                                "tier forced), then the sparseflow_edgeNN e2e rows (1.3B, 5B)",
                                                "bash .ab/callA.sh (the commands are in the log's === lines)",
                                                "NVIDIA H200"),
    "ncu_h200_5b_30f771b.txt": ("Nsight Compute: 5B windows 0 and 2 vs 1.3B window 0 (per-program fixed cost)",
                                "CASES=w0_5b,w2_5b,w0_13b bash bench/run_gpu.sh profile", "NVIDIA H200"),
    "ncu_h100_lut_6f73ecf.txt": ("Nsight Compute: random LUT masks vs window 0 (the gather's cost)",
                                 "CASES=random10_13b,random10_14b,w0_13b bash bench/run_gpu.sh profile",
                                 "NVIDIA H100 80GB HBM3"),
    "ncu_h100_tma.txt": ("Nsight Compute: window 0, all-dense, 14B window 0 and the QK prologue (`tma` variant)",
                         "bash bench/run_gpu.sh profile", "NVIDIA H100 80GB HBM3"),
    "gpu_tests_v3.log": ("GPU tests of the kernel and the op (Version 3)", "bash bench/run_gpu.sh tests",
                         "NVIDIA H100 80GB HBM3"),
    "gpu_tests_block_prologue_b3ca391.txt": ("GPU tests of the block add + norm and the QK prologue",
                                             "python3 -m pytest tests/test_residual_norm.py tests/test_prologue.py",
                                             "NVIDIA H100 80GB HBM3"),
    "gpu_check_h100.log": ("the op at the 1.3B shape: all-dense and a heuristic layer vs SDPA (07:45Z update)",
                           "PYTHONPATH=. python3 bench/gpu_check.py", "NVIDIA H100 80GB HBM3"),
    "profile_wan22_5b_sparseflow_f3db494.txt": ("torch.profiler, one 5B model call (step 0, window 0), SparseFlow "
                                                "defaults at f3db494 (6 FFN pieces, addcmul adds), newest-shape tree: "
                                                "GPU busy / idle and kernel time per family",
                                                "NEWEST_CONFIGS=default,sparseflow,sparseflow_ffnx15,"
                                                "sparseflow_ffnwhole OLD_CONFIGS=- bash bench/run_e2e_gpu.sh trees "
                                                "wan22_5b --steps 4 --warmup-steps 1 --profile sparseflow,default",
                                                "NVIDIA H200"),
    "profile_wan22_5b_default_f3db494.txt": ("the same call, ComfyUI's default attention",
                                             "(as profile_wan22_5b_sparseflow_f3db494.txt)", "NVIDIA H200"),
    "profile_wan21_1.3b_sparseflow_f3db494.txt": ("torch.profiler, one 1.3B model call, SparseFlow defaults, ComfyUI "
                                                  "0.3.64 (the newest tree's profile of the same call was overwritten)",
                                                  "NEWEST_CONFIGS=default,sparseflow,sparseflow@consumer "
                                                  "OLD_CONFIGS=default,sparseflow,sparseflow@consumer bash "
                                                  "bench/run_e2e_gpu.sh trees wan21_1.3b --steps 4 --warmup-steps 2 "
                                                  "--profile sparseflow", "NVIDIA H200"),
    "profile_wan22_5b_sparseflow_99e7aeb.txt": ("torch.profiler, one 5B model call at 99e7aeb (4 FFN pieces, the gated "
                                                "adds in the fused kernel), newest-shape tree",
                                                "NEWEST_CONFIGS=default,sparseflow,sparseflow_ffnx10,sparseflow_ffnx25,"
                                                "sparseflow_ffnwhole OLD_CONFIGS=- bash bench/run_e2e_gpu.sh trees "
                                                "wan22_5b --steps 4 --warmup-steps 1 --profile sparseflow",
                                                "NVIDIA H200"),
    "profile_wan21_14b_sparseflow_99e7aeb.txt": ("torch.profiler, one 14B model call at 99e7aeb (2 FFN pieces), "
                                                 "newest-shape tree",
                                                 "NEWEST_CONFIGS=default,sparseflow,sparseflow_ffnx10 OLD_CONFIGS=- "
                                                 "bash bench/run_e2e_gpu.sh trees wan21_14b --steps 2 "
                                                 "--warmup-steps 1 --profile sparseflow", "NVIDIA H200"),
    "sweep_passes_h200_99e7aeb.txt": ("launch shapes of the QK prologue and the add + norm kernel at the Wan shapes "
                                      "(BLOCK_T x warps), shipped = 99e7aeb's (prologue 8 warps); a scratch script "
                                      "equal in what it launches to bench/sweep_block_passes.py",
                                      "python3 bench/sweep_block_passes.py (its first form)", "NVIDIA H200"),
    "sweep_passes_h200_caf648e.txt": ("the same sweep after caf648e (both kernels at 4 warps), from the repo's script",
                                      "python3 bench/sweep_block_passes.py", "NVIDIA H200"),
    "sweep_quant_h200_fda78a1.txt": ("issue 16: launch shapes of the int8-qk pre-pass at Wan 1.3B and 14B (k-sum "
                                     "span / rows / warps; quantize pass in one tile or two passes over pieces of "
                                     "16 / 32 / 64 tokens, 4 or 8 warps); 'shipped' in the file = the candidate "
                                     "defaults of that run (256/32/4, rows 32), which lost to 512/32/4 and one tile",
                                     "python3 bench/sweep_quant_passes.py (at fda78a1)", "NVIDIA H200"),
    "target_int8_h200_fda78a1.txt": ("issue 16: whole int8-qk op on the target case (Wan 1.3B window 0 + anchor 0, "
                                     "every head sparse) with the a100 and consumer tiers forced vs SDPA default: "
                                     "once with the candidate pre-pass shapes, twice with the shipped ones",
                                     "python3 bench/sweep_quant_passes.py --skip-sweep --target-tiers a100,consumer",
                                     "NVIDIA H200"),
    "gpu_tests_h200_fda78a1.log": ("GPU tests of the int8-qk pre-pass at every launch shape of the test's list, "
                                   "bit for bit with the reference at the Wan 1.3B shape (fda78a1's working tree)",
                                   "python3 -m pytest -rs tests/test_kernels_int8.py -k 'prepass or k_mean'",
                                   "NVIDIA H200"),
    "prologue_h200_caf648e.txt": ("fused QK-norm + RoPE vs ComfyUI 0.3.64's path at caf648e (4 warps)",
                                  "python3 bench/bench_prologue.py", "NVIDIA H200"),
    "gpu_tests_h200_caf648e.log": ("GPU tests of the QK prologue and the block add + norm (the in-place gated add "
                                   "at the 5B piece shape included) at caf648e, and the prologue tests with the "
                                   "consumer tier forced",
                                   "python3 -m pytest -rs tests/test_prologue.py tests/test_residual_norm.py; "
                                   "SPARSEFLOW_LAUNCH_TIER=consumer python3 -m pytest -rs tests/test_prologue.py",
                                   "NVIDIA H200"),
    "profile_wan21_1.3b_default.txt": ("torch.profiler table of one 1.3B model call, default attention",
                                       f"{E2E} wan21_1.3b --configs default,sparseflow --steps 4 "
                                       "--profile sparseflow,default", "NVIDIA H100 80GB HBM3"),
    "profile_wan21_1.3b_sparseflow_before_blocks.txt": ("the same, SparseFlow before the fused block passes",
                                                        "(as profile_wan21_1.3b_default.txt)", "NVIDIA H100 80GB HBM3"),
    "profile_wan21_1.3b_sparseflow_blocks.txt": ("the same, SparseFlow with the fused block passes",
                                                 "(as profile_wan21_1.3b_default.txt)", "NVIDIA H100 80GB HBM3"),
}
E2E_NOTES = {
    "": "Versions 1-2: the first end-to-end run (steps 1.. timed); working tree of 07:00Z on HEAD 0dbbd67",
    "_after_pair_cache": "Versions 1-2: after the per-call host fix (pair counts cached)",
    "_prologue_tma": "Version 3: fused QK prologue, `tma` kernel",
    "_v3": "Version 3: fused QK prologue, `tma_lean` kernel (code of ef8dd86)",
    "_compile_ef8dd86": "Version 3 TorchCompileModel at ef8dd86 (a per-layer graph break)",
    "_compile_ea46e08_regressed": "Version 3 TorchCompileModel at ea46e08 (recompiled every step)",
    "_compile_32c9a73": "Version 3 TorchCompileModel at 32c9a73 (one graph for every window)",
    "_v4_before_blocks_profile": "Version 4: before the fused block passes",
    "_v4_first_blocks_version": "Version 4: the first version of the fused block passes",
    "_v4": "Version 4: fused block passes before the GELU epilogue; each fusion isolated (step-time breakdown)",
    "_v4_4steps": "Version 4: 14B over 4 steps before the GELU epilogue (step-time breakdown)",
    "_v4_gelu": "Version 4: with the FFN's GELU epilogue",
    "_v4_gelu_4steps": "Version 4: with the FFN's GELU epilogue, 14B over 4 steps",
    "_v4_final": "Version 4: final code (schedules, sparsity 0.3)",
    "_compile_v4": "Version 4 TorchCompileModel",
    "_v5": "sparsity slider and calibrated map (steps 1.. timed)",
    "_v5_20steps": "end to end, 20 steps, every step timed",
    "_v5_warm": "end to end, 4 steps, every step timed",
    "_v5_compile": "TorchCompileModel (1.3B: every configuration; 14B against the `_v5_rest` default)",
    "_v5_rest": "calibrated map, Sage; 5B compiled rows; the saved 14B default",
    "_v5_dense": "the `dense` schedule against the `_v5_rest` 14B default",
    "_v5_compile2": "Sage and calibrated map compiled (5B); sol_attn compiled and the saved 14B default",
    "_v5_sagec": "Sage + compile against the `_v5_compile2` 14B default",
    "_v5_calc": "calibrated map + compile against the `_v5_compile2` 14B default",
    "_v5_defc": "default + compile on the H200 (against the `_v5_compile2` 14B default)",
    "_newest": "issue 17: the newest-shape tree (0.3.64 + newest-overlay + comfy-kitchen 0.2.40's kernels) at 65110d7",
    "_0364": "issues 16-18: ComfyUI 0.3.64 in the same call as `_newest` (1.3B: the RTX configs forced, @consumer)",
    "_newest_3fb78be": "issues 17, 19: the newest-shape tree at 3fb78be, with the Compare node's cost (8 steps; the "
                       "run wrote e2e_wan21_1.3b_newest.json, renamed to keep the earlier run)",
    "_q_f3401cf": "issue 21: 14B with int8-qk and fp8 beside fp16, core sol_attn and Sage (2 steps after a 1-step "
                  "warm-up; written as e2e_wan21_14b.json)",
    "_0364_f3401cf": "issue 21: 1.3B fp8 (and with the RTX configs forced) beside fp16 on ComfyUI 0.3.64 (4 steps; "
                     "written as e2e_wan21_1.3b_0364.json)",
    "_newest_b794896": "issues 16, 17: the newest-shape tree after the compensation bias pre-pass (1.3B 8 steps "
                       "after 2 warm-up; 14B 2 steps after 1; the JSON's commit is the device copy's stale HEAD)",
    "_0364_b794896": "issues 16, 17: ComfyUI 0.3.64 in the same call as `_newest_b794896` (1.3B, the RTX configs "
                     "forced as @consumer)",
    "_newest_f6ed1ac": "issues 16, 17, 21: the newest-shape tree at f6ed1ac's kernels (1.3B, 4 steps after 2; the "
                       "JSON's commit names the tree: f6ed1ac but the e4m3 rounding's sign of zero)",
    "_newest_9c276e0": "issues 16, 17: the newest-shape tree at 9c276e0 (quantize pass split per tensor; 1.3B, 4 "
                       "steps after 1, the RTX 30 / 40 configs forced as @consumer: precision auto = int8-qk)",
    "_0364_9c276e0": "issues 16, 17: ComfyUI 0.3.64 in the same call as `_newest_9c276e0`, with @consumer at fp16 "
                     "beside auto",
    "_newest_6195b20": "issue 17: peak memory: the FFN in token pieces (then from a 256 MiB hidden tensor, so 1.3B "
                       "too), norm1's output freed after v, the QK prologue in place; newest-shape tree, 5B and 1.3B, "
                       "4 steps after 1 (sites at the peak: memory_peaks_h200_1ff52c9.log)",
    "_0364_6195b20": "issue 17: ComfyUI 0.3.64 in the same call as `_newest_6195b20` (1.3B; @consumer: the RTX 30 / 40 "
                     "configs forced)",
    "_newest_4b8876c": "issue 17: 14B 720p on the newest-shape tree with the memory changes (2 steps after 1); 1.3B "
                       "with the FFN whole (sparseflow_ffnwhole) beside the pieces in one call: what the pieces cost",
    "_newest_f35182b": "issues 16, 17: the FFN in pieces from a 1.25 GiB hidden tensor (1.3B 480p whole again); "
                       "newest-shape tree, 1.3B, 4 steps after 1",
    "_0364_f35182b": "issues 16, 17: ComfyUI 0.3.64 in the same call as `_newest_f35182b` (@consumer: the RTX 30 / 40 "
                     "configs forced; its step 2 includes a kernel compile)",
    "_0364_947c1d7": "issues 16, 17: ComfyUI 0.3.64 with this stop's memory changes, 1.3B, 4 steps after a 2-step "
                     "warm-up (@consumer: the RTX 30 / 40 configs forced; its one-step warm-up run is `_0364_f35182b`)",
    "_newest_1ff52c9": "issue 17: 5B 720p on the newest-shape tree with this stop's final code (the FFN in pieces, "
                       "norm1 handed over, the in-place prologue), 4 steps after 1",
    "_0364_1ff52c9": "issue 17: ComfyUI 0.3.64 in the same call as `_newest_1ff52c9`",
    "_newest_748e614": "issues 16, 17: 1.3B at this stop's last commit, newest-shape tree, 4 steps after 1 (the FFN "
                       "whole at 1.3B 480p; the row's memory_at_peak has the sites at the peak)",
    "_0364_748e614": "issues 16, 17: ComfyUI 0.3.64 in the same call as `_newest_748e614`",
    "_newest_f813e22": "issue 17: what the dense edge layers cost: sparseflow_edge02 / _edge04 (first and last layer "
                       "sparse at window 2 / 4) beside the defaults, sol_attn and quality; 1.3B and 5B, 4 steps "
                       "after 1",
    "_0364_f813e22": "issue 17: ComfyUI 0.3.64 in the same call as `_newest_f813e22` (1.3B)",
    "_newest_ef13fc0": "issues 16, 17: the default routing heuristic_sparse_edges and 0f93c2f's prologue; "
                       "sparseflow_dense_edges = the old default; 1.3B and 5B 4 steps after 1, 14B 2 steps after 1",
    "_0364_ef13fc0": "issues 16, 17: ComfyUI 0.3.64 in the same call as `_newest_ef13fc0` (1.3B)",
    "_newest_ef13fc0b": "issue 17: 5B, what the FFN's token pieces cost at ef13fc0: sparseflow_ffnwhole beside the "
                        "defaults (a later call than `_newest_ef13fc0`), 4 steps after 1",
    "_newest_f3db494": "issues 16, 17: 5B with FFN pieces of 1.5 streams (sparseflow_ffnx15) and whole beside the "
                       "defaults (6 pieces), --profile sparseflow,default; 1.3B with the RTX 30 / 40 configs forced "
                       "(@consumer) and the new default routing, 4 steps after a 2-step warm-up",
    "_0364_f3db494": "issue 16: ComfyUI 0.3.64 in the same call as `_newest_f3db494` (1.3B, @consumer)",
    "_newest_99e7aeb": "issue 17: the FFN pieces' gated add in the fused kernel and pieces of up to 1.5 streams "
                       "(the defaults) beside 1.0 (sparseflow_ffnx10), 2.5 and whole; 5B 4 steps after 1, 14B 2 after "
                       "1, --profile sparseflow",
    "_newest_caf648e": "issues 16, 17: this stop's last kernels (the block passes at 4 warps): 1.3B and 5B 4 steps "
                       "after 1 with sol_attn and quality, 14B 2 steps after 1",
    "_0364_caf648e": "issues 16, 17: ComfyUI 0.3.64 in the same call as `_newest_caf648e` (1.3B)",
    "_newest_caf648eb": "issue 17: 5B at caf648e again, a later call than `_newest_caf648e` (run-to-run spread of the "
                        "speed-up), 4 steps after 1",
    "_auto_7d32421": "issue 16: precision auto with the RTX 30 / 40 configs forced (int8-qk) against fp16 with the "
                     "same configs, ComfyUI 0.3.64, 1.3B, 4 steps after a 1-step warm-up",
    "_0364_f6ed1ac": "issues 16, 21: ComfyUI 0.3.64 in the same call as `_newest_f6ed1ac`: the RTX 50 configs "
                     "forced (@rtx50), int8-qk and fp8 with f6ed1ac's pre-pass",
    "_0364_3fb78be": "issues 16, 19, 21: ComfyUI 0.3.64 in the same call as `_newest_3fb78be`: Compare, int8-qk, the "
                     "RTX configs forced (@consumer), sol_attn, Sage (8 steps; written as e2e_wan21_1.3b_0364.json)",
}
TREE_TAGS = {"_newest": "NEWEST_CONFIGS", "_0364": "OLD_CONFIGS"}  # `run_e2e_gpu.sh trees` runs, one file per tree
# runs whose flags the JSON does not record
SAVED_REFERENCE = {"e2e_wan21_14b_v5_rest.json": "_v5_rest", "e2e_wan21_14b_v5_compile2.json": "_v5_compile2"}
USED_REFERENCE = {"e2e_wan21_14b_v5_compile.json": "_v5_rest", "e2e_wan21_14b_v5_dense.json": "_v5_rest",
                  "e2e_wan21_14b_v5_sagec.json": "_v5_compile2", "e2e_wan21_14b_v5_calc.json": "_v5_compile2",
                  "e2e_wan21_14b_v5_defc.json": "_v5_compile2"}


def _e2e_row(path: Path) -> tuple[str, str, str, str, str]:
    data = json.loads(path.read_text())
    env, model = data["env"], data["model"]["model"]
    tag = path.stem.removeprefix(f"e2e_{model}")
    configs = ",".join(r["config"] for r in data["rows"])
    cmd = f"{E2E} {model} --configs {configs} --steps {env['steps']}"
    # a tree run, also renamed: _0364_<commit>
    tree_tag = next((t for t in TREE_TAGS if tag == t or tag.startswith(t + "_")), None)
    if tree_tag is not None:
        other = "OLD_CONFIGS" if tree_tag == "_newest" else "NEWEST_CONFIGS"
        cmd = (f"{TREE_TAGS[tree_tag]}={configs} {other}=<the other file's, or -> "
               f"bash bench/run_e2e_gpu.sh trees {model} --steps {env['steps']}")
        tag = ""
    if env.get("warmup_steps"):
        cmd += f" --warmup-steps {env['warmup_steps']}"
    if not any(r.get("breakdown_s") for r in data["rows"]):
        cmd += " --breakdown none"
    peaks = [r["config"] for r in data["rows"] if r.get("memory_at_peak")]
    if peaks:
        cmd += f" --memory-peak {','.join(peaks)}"
    cmd += f" --tag {tag}" if tag else ""
    tag = path.stem.removeprefix(f"e2e_{model}")
    if path.name in SAVED_REFERENCE:
        cmd += " --save-reference"
    if path.name in USED_REFERENCE:
        cmd += f" --reference .e2e_ref/reference_{model}{USED_REFERENCE[path.name]}"
    return E2E_NOTES[tag], env.get("gpu", "?"), env.get("commit", "?"), env.get("timestamp", "?")[:16], cmd


def _kernel_row(path: Path) -> tuple[str, str, str, str, str]:
    what, cmd, gpu = KERNEL[path.name]
    env = json.loads(path.read_text()).get("env", {}) if path.suffix == ".json" else {}
    name = path.stem
    commit = env.get("commit") or next((p for p in name.split("_") if len(p) == 7 and p.isalnum()
                                        and (any(c.isdigit() for c in p) or set(p) <= set("abcdef"))), "?")
    return what, env.get("gpu") or gpu, commit, env.get("timestamp", "")[:16], cmd


def result_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).iterdir() if p.is_file())


def missing_entries() -> list[str]:
    """Result files that have no description here."""
    out = []
    for p in result_files():
        if p.name.startswith("e2e_") and p.suffix == ".json":
            model = json.loads(p.read_text())["model"]["model"]
            if p.stem.removeprefix(f"e2e_{model}") not in E2E_NOTES:
                out.append(str(p.relative_to(REPO)))
        elif p.name not in KERNEL:
            out.append(str(p.relative_to(REPO)))
    return out


def _status(name: str, current: str) -> str:
    """current when docs/performance.md names the file, else history."""
    return "current" if name in current else "history"


def render() -> str:
    lines = [
        "# Result files",
        "",
        "Every file in `bench/results/` and `bench/e2e/results/`: what it measured, the GPU and the commit it",
        "records (`3469371` is a stale commit field from before `SPARSEFLOW_COMMIT`; the description names the",
        "code), the time (UTC) and the command that made it, run on the GPU machine at that commit (bench/README.md",
        "says what to carry; an end-to-end run's command is rebuilt from the file's own settings, and the exact",
        "invocations of the older runs are in docs/history/performance-2026-11-25.md). *current*: docs/performance.md",
        "quotes it; *history*: only the history does. Generated by `python3 bench/results_index.py`.",
        "",
        "| file | measured | GPU | commit | time | command | status |",
        "|---|---|---|---|---|---|---|",
    ]
    current = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    for p in result_files():
        row = _e2e_row(p) if p.name.startswith("e2e_") and p.suffix == ".json" else _kernel_row(p)
        what, gpu, commit, when, cmd = row
        rel = p.relative_to(REPO).as_posix()
        lines.append(f"| `{rel}` | {what} | {gpu} | {commit[:7] if len(commit) == 40 else commit} "
                     f"| {when.replace('T', ' ')} | `{cmd}` | {_status(p.name, current)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    missing = missing_entries()
    if missing:
        print("no entry in bench/results_index.py for: " + ", ".join(missing), file=sys.stderr)
        return 1
    INDEX.write_text(render(), encoding="utf-8")
    print(f"wrote {INDEX.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
