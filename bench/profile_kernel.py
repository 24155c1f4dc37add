"""One launch of the fused SparseFlow kernel (and of the QK prologue) per case, for Nsight Compute.

Warms each case up first (compile, tables, pre-pass), then brackets exactly one call with
cudaProfilerStart/Stop, so `ncu --profile-from-start off` measures that launch and nothing else:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --section Occupancy ... \\
        python3 bench/profile_kernel.py --cases w0_13b,dense_13b,w0_14b   # or random10_13b,random10_14b

(`bash bench/run_gpu.sh profile` runs that with the sections docs/performance.md reports.) The kernel runs at
the config the autotuner picks on these shapes (BLOCK_M 128, BLOCK_N 128, 8 warps, 3 stages) so no autotune
launch is profiled; `--config`, `--pointers` (K/V through pointers, as the a100 and consumer tiers and fp8 read
them) and `--precision` (spec §8) profile another launch of the same cases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pack loader, as tests load it
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.kernels import fused_attention  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, PRECISIONS, SPARSE, AttentionPlan, uniform_plan  # noqa: E402

CONFIG = (128, 128, 8, 3)
CASES = {  # name: (batch, heads, geometry, route, window, density of a random LUT-only mask or None)
    "w0_13b": (1, 12, Geometry(21, 30, 52), SPARSE, 0, None),
    "w0c_13b": (1, 12, Geometry(21, 30, 52), SPARSE, 0, None),  # in COMPENSATED
    "w0c_14b": (1, 40, Geometry(21, 45, 80), SPARSE, 0, None),  # in COMPENSATED
    "w1_13b": (1, 12, Geometry(21, 30, 52), SPARSE, 1, None),
    "dense_13b": (1, 12, Geometry(21, 30, 52), DENSE, 0, None),
    "w0_14b": (1, 40, Geometry(21, 45, 80), SPARSE, 0, None),
    # Wan 2.2 5B 720p x 121f: 880 tokens (6.9 key blocks) per frame, so window 0 rows hold 7..22 key tiles
    "w0_5b": (1, 24, Geometry(31, 22, 40), SPARSE, 0, None),
    "w2_5b": (1, 24, Geometry(31, 22, 40), SPARSE, 2, None),
    # the kernel bench's random block masks (LUT-only mode: exactly the listed key blocks, no window or anchors)
    "random10_13b": (1, 12, Geometry(21, 30, 52), SPARSE, 0, 0.1),
    "random10_14b": (1, 40, Geometry(21, 45, 80), SPARSE, 0, 0.1),
}
# cases with pooled compensation, as the default schedule runs (docs/performance.md: it costs 14-32 % of the call)
COMPENSATED = {"w0c_13b", "w0c_14b"}


def random_lut(batch: int, heads: int, n: int, density: float) -> torch.Tensor:
    """Ascending key-block lists, round(density * n) random blocks per query block (the sweep's random masks)."""
    pick = torch.rand(batch, heads, n, n, generator=torch.Generator().manual_seed(1)).argsort(-1)
    return torch.sort(pick[..., :round(density * n)], -1).values.to(torch.int32).cuda()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="w0_13b,dense_13b,w0_14b")
    p.add_argument("--prologue", action="store_true", help="also one fused QK prologue launch at the 1.3B shape")
    p.add_argument("--config", default="/".join(map(str, CONFIG)), help="BLOCK_M/BLOCK_N/warps/stages")
    p.add_argument("--pointers", action="store_true", help="K/V through pointers instead of tensor descriptors")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS)
    a = p.parse_args()
    config = tuple(int(x) for x in a.config.split("/"))
    cudart = torch.cuda.cudart()
    for name in a.cases.split(","):
        batch, heads, g, route, window, density = CASES[name]
        lut = None
        if density is None:
            plan = uniform_plan(g, heads, route=route, window=window, anchors=(0,), compensation=name in COMPENSATED,
                                block=128)
        else:
            lut = random_lut(batch, heads, -(-g.length // 128), density)
            plan = AttentionPlan(g, (SPARSE,) * heads, (0,) * heads, (lut.shape[-1],) * heads, anchors=(), block=128)
        plan = plan.with_precision(a.precision)
        kwargs = {"heads": heads, "_config": config, "lut": lut, "_lut_only": lut is not None,
                  "_descriptors": False if a.pointers else None}
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(batch, g.length, heads * 128, device="cuda", generator=gen, dtype=torch.bfloat16)
                   for _ in range(3))
        for _ in range(3):
            fused_attention(q, k, v, plan, **kwargs)
        torch.cuda.synchronize()
        cudart.cudaProfilerStart()
        fused_attention(q, k, v, plan, **kwargs)
        torch.cuda.synchronize()
        cudart.cudaProfilerStop()
        what = f"random LUT {density:g}" if lut is not None else f"route={route} window={window}"
        print(f"profiled {name}: B={batch} H={heads} L={g.length} {what} config {a.config} precision {a.precision}"
              f"{' pointers' if a.pointers else ''}", flush=True)
        del q, k, v
    if a.prologue:
        from comfyui_sparseflow.sparseflow.prologue import norm_rope_qk

        from bench.bench_prologue import rope_freqs

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
