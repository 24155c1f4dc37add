"""One launch of the fused SparseFlow kernel (and of the QK prologue) per case, for Nsight Compute.

Warms each case up first (compile, tables, pre-pass), then brackets exactly one call with
cudaProfilerStart/Stop, so `ncu --profile-from-start off` measures that launch and nothing else:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --section Occupancy ... \\
        python3 bench/profile_kernel.py --cases w0_13b,dense_13b,w0_14b

(`bash bench/run_gpu.sh profile` runs that with the sections docs/performance.md reports.) The kernel runs at
the config the autotuner picks on these shapes (BLOCK_M 128, BLOCK_N 128, 8 warps, 3 stages) so no autotune
launch is profiled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.fused import fused_attention  # noqa: E402
from sparseflow.geometry import Geometry  # noqa: E402
from sparseflow.plan import DENSE, SPARSE, uniform_plan  # noqa: E402

CONFIG = (128, 128, 8, 3)
CASES = {  # name: (batch, heads, geometry, route, window)
    "w0_13b": (1, 12, Geometry(21, 30, 52), SPARSE, 0),
    "w1_13b": (1, 12, Geometry(21, 30, 52), SPARSE, 1),
    "dense_13b": (1, 12, Geometry(21, 30, 52), DENSE, 0),
    "w0_14b": (1, 40, Geometry(21, 45, 80), SPARSE, 0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="w0_13b,dense_13b,w0_14b")
    p.add_argument("--prologue", action="store_true", help="also one fused QK prologue launch at the 1.3B shape")
    a = p.parse_args()
    cudart = torch.cuda.cudart()
    for name in a.cases.split(","):
        batch, heads, g, route, window = CASES[name]
        plan = uniform_plan(g, heads, route=route, window=window, anchors=(0,), block=128)
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(batch, g.length, heads * 128, device="cuda", generator=gen, dtype=torch.bfloat16)
                   for _ in range(3))
        for _ in range(3):
            fused_attention(q, k, v, plan, heads=heads, _config=CONFIG)
        torch.cuda.synchronize()
        cudart.cudaProfilerStart()
        fused_attention(q, k, v, plan, heads=heads, _config=CONFIG)
        torch.cuda.synchronize()
        cudart.cudaProfilerStop()
        print(f"profiled {name}: B={batch} H={heads} L={g.length} route={route} window={window}", flush=True)
        del q, k, v
    if a.prologue:
        from bench.bench_prologue import rope_freqs
        from sparseflow.prologue import norm_rope_qk

        q, k = (torch.randn(2, 32760, 1536, device="cuda", dtype=torch.float16) for _ in range(2))
        w = torch.ones(1536, device="cuda", dtype=torch.float16)
        f = rope_freqs(32760, 128, "cuda")
        for _ in range(3):
            norm_rope_qk(q, k, w, w, f, 1e-6, 128)
        torch.cuda.synchronize()
        cudart.cudaProfilerStart()
        norm_rope_qk(q, k, w, w, f, 1e-6, 128)
        torch.cuda.synchronize()
        cudart.cudaProfilerStop()
        print("profiled prologue_13b", flush=True)


if __name__ == "__main__":
    main()
