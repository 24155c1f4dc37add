"""What the pooled compensation (docs/spec.md §5.2) costs a sparse call: its pre-pass and its kernel loop, apart.

Times, per Wan shape (1.3B 480p, 14B 720p; bf16, every head sparse, window 0 + anchor 0), the two compensation
pre-passes alone (`kernels/prepass.py`: the block means `pooled_means`, the bias rows `compensation_bias`) and
`fused_attention` with and without compensation at the hopper tier's config (128/128/8/3, descriptors) and the
consumer tier's (128/64/8/3, pointers), each launched directly:

    python3 bench/bench_compensation.py          # on the GPU machine; one JSON line per shape
"""

from __future__ import annotations

import json

import torch
import triton.testing as tt
from bench_setup import SHAPES, environment, make_inputs
from comfyui_sparseflow.kernels import fused_attention
from comfyui_sparseflow.kernels.prepass import compensation_bias, geometry_tables, plan_tensors, pooled_means
from comfyui_sparseflow.sparseflow.inputs import to_bhld
from comfyui_sparseflow.sparseflow.plan import SPARSE, uniform_plan

LAUNCHES = {"hopper 128/128/8/3 descriptors": ((128, 128, 8, 3), True),
            "consumer 128/64/8/3 pointers": ((128, 64, 8, 3), False)}


def main() -> None:
    env = environment()
    for name in ("wan13b_480p", "wan14b_720p"):
        batch, heads, g = SHAPES[name]
        q, k, v = make_inputs(batch, heads, g)[0]  # ComfyUI's (B, L, H*D) layout; the copies for peers are dropped
        kb, vb = to_bhld(k, heads), to_bhld(v, heads)
        tabs = geometry_tables(g, 128, kb.device)
        def means(kb=kb, vb=vb, tabs=tabs, heads=heads):
            return pooled_means(kb, vb, tabs.blk_start, tabs.blk_stop, list(range(heads)), 128)
        row = {"shape": name, **env, "pooled_means_ms": round(tt.do_bench(means, warmup=50, rep=200,
                                                                          return_mode="median"), 4)}
        plans = {comp: uniform_plan(g, heads, route=SPARSE, window=0, anchors=(0,), compensation=comp, block=128)
                 for comp in (False, True)}
        def bias(plan=plans[True], heads=heads, dev=kb.device):
            return compensation_bias(plan, plan_tensors(plan, dev), list(range(heads)), dev)
        row["compensation_bias_ms"] = round(tt.do_bench(bias, warmup=50, rep=200, return_mode="median"), 4)
        for label, (cfg, tma) in LAUNCHES.items():
            for comp, plan in plans.items():
                def fn(plan=plan, cfg=cfg, tma=tma, qkv=(q, k, v), heads=heads):
                    return fused_attention(*qkv, plan, heads=heads, _config=cfg, _descriptors=tma)
                fn()
                torch.cuda.synchronize()
                row[f"{label}, compensation {'on' if comp else 'off'} ms"] = round(
                    tt.do_bench(fn, warmup=50, rep=200, return_mode="median"), 4)
        print(json.dumps(row), flush=True)
        q = k = v = kb = vb = None  # free the inputs before the next shape
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
