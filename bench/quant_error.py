"""Error of the int8-qk and fp8 paths (spec §8) against the fp16 path and against dense attention, on CPU.

The structured synthetic heads (`sparseflow.synthetic`: local -> sparse, smooth -> linear, global -> dense), each on
its natural route and on the dense route (the quantization alone), through the PyTorch reference operator: the
int8-qk and fp8 references are the math the kernel computes (the kernel equals them to fp16 rounding under the CPU
interpreter, tests/test_kernels_int8.py, tests/test_kernels_fp8.py), so these are the kernel's errors, measured
without a GPU. Errors are ||a - b|| / ||b|| over all elements.

    python3 bench/quant_error.py [--frames 9 --height 8 --width 16 --seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pack loader (as tests load it)
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, FP8, FP16, INT8_QK, LINEAR, SPARSE, AttentionPlan  # noqa: E402
from comfyui_sparseflow.sparseflow.reference import dense_attention, reference_attention  # noqa: E402
from comfyui_sparseflow.sparseflow.synthetic import structured_qkv  # noqa: E402

ROUTES = {"local": (SPARSE, "sparse w=1, anchor 0, top-2, comp."), "smooth": (LINEAR, "linear pooled"),
          "global": (DENSE, "dense")}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def measure(g: Geometry, kind: str, route: int, block: int, seed: int) -> dict[str, float]:
    """Errors of one head kind on one route: int8-qk and fp8 vs fp16 path, and each vs dense attention, on
    bf16-rounded inputs computed in fp32 (the kernels' math, without their output rounding)."""
    q, k, v = (t.to(torch.bfloat16).float() for t in structured_qkv(g, (kind,), dim=128, seed=seed))  # bf16 inputs
    plans = {p: AttentionPlan(g, (route,), (1,), (2,), anchors=(0,), compensation=True, block=block, precision=p)
             for p in (FP16, INT8_QK, FP8)}
    out = {p: reference_attention(q, k, v, plan) for p, plan in plans.items()}
    dense = dense_attention(q, k, v)
    return {"int8_vs_fp16": _rel(out[INT8_QK], out[FP16]), "fp8_vs_fp16": _rel(out[FP8], out[FP16]),
            "fp16_vs_dense": _rel(out[FP16], dense), "int8_vs_dense": _rel(out[INT8_QK], dense),
            "fp8_vs_dense": _rel(out[FP8], dense)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    g = Geometry(args.frames, args.height, args.width)
    print(f"geometry {args.frames}x{args.height}x{args.width} (L = {g.length}), head dim 128, bf16 inputs, "
          f"mean over seeds 0..{args.seeds - 1}; errors ||a - b|| / ||b||")
    print("| head | route | block | int8-qk vs fp16 path | fp8 vs fp16 path | fp16 path vs dense | int8-qk vs dense | "
          "fp8 vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, (natural, label) in ROUTES.items():
        for route, name in ((natural, label), (DENSE, "dense")) if natural != DENSE else ((DENSE, label),):
            for block in (64, 128):
                rows = [measure(g, kind, route, block, s) for s in range(args.seeds)]
                mean = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
                print(f"| {kind} | {name} | {block} | {mean['int8_vs_fp16']:.2e} | {mean['fp8_vs_fp16']:.2e} | "
                      f"{mean['fp16_vs_dense']:.2e} | {mean['int8_vs_dense']:.2e} | {mean['fp8_vs_dense']:.2e} |")


if __name__ == "__main__":
    main()
