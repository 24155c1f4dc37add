"""Where a quantized call's time goes: the device time of each kernel of one `fused_attention` call, by precision.

Runs the whole op (pre-pass + fused kernel, the device's own tier, autotuned first) on Wan 2.1 1.3B 480p x 81f,
bf16, every head sparse, window 0 + anchor 0 (the kernel bench's whole-op row), with and without pooled
compensation, at precisions fp16, int8-qk and fp8 (spec §8), under torch.profiler, and prints per kernel its mean
device time per call. One JSON line per (precision, compensation):

    python3 bench/profile_prepass.py [--calls 20] [--out FILE]      # on the GPU machine
"""

from __future__ import annotations

import argparse
import collections
import json

import torch
from bench_setup import SHAPES, environment, make_inputs
from comfyui_sparseflow.kernels import fused_attention
from comfyui_sparseflow.sparseflow.plan import FP8, FP16, INT8_QK, SPARSE, uniform_plan
from torch.profiler import ProfilerActivity, profile


def kernel_times(fn, calls: int) -> dict[str, float]:
    """Mean device time per call (ms) of each kernel `fn` launches, over `calls` calls after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total: dict[str, float] = collections.defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            total[ev.name[:90]] += ev.device_time_total / 1000.0 if hasattr(ev, "device_time_total") \
                else ev.cuda_time_total / 1000.0
    return {name: round(ms / calls, 4) for name, ms in sorted(total.items(), key=lambda kv: -kv[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--shape", default="wan13b_480p", choices=sorted(SHAPES))
    p.add_argument("--out", default="")
    a = p.parse_args()
    env = environment()
    batch, heads, g = SHAPES[a.shape]
    q, k, v = make_inputs(batch, heads, g)[0]
    rows = []
    for comp in (False, True):
        for precision in (FP16, INT8_QK, FP8):
            plan = uniform_plan(g, heads, route=SPARSE, window=0, anchors=(0,), compensation=comp, block=128,
                                precision=precision)
            times = kernel_times(lambda plan=plan: fused_attention(q, k, v, plan, heads=heads), a.calls)
            row = {"shape": a.shape, "precision": precision, "compensation": comp, **env,
                   "device_ms_per_call": round(sum(times.values()), 4), "kernels_ms": times}
            rows.append(row)
            print(json.dumps(row), flush=True)
            print(f"\n{a.shape} {precision} compensation={comp}: {row['device_ms_per_call']:.3f} ms of device time")
            for name, ms in times.items():
                print(f"  {ms:8.4f}  {name}")
    if a.out:
        with open(a.out, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
