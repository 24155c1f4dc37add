"""One rank of the CPU Ulysses checks (tests/test_ulysses.py): gloo, torch.multiprocessing spawn.

Every rank makes the same full q, k, v from a seed, keeps its sequence shard, runs `ulysses_attention` and compares
its output rows with the single-process reference on the full tensors; it writes its largest differences as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

GEOMETRY = (4, 4, 8)  # frames, height, width: 128 tokens, 2 blocks of 64 per frame pair
HEADS, DIM, BATCH = 8, 64, 2


def wan_like_plan(plan_mod, geometry_mod, linear_kind: str = "pooled"):
    """Mixed routes clustered the way a calibrated Wan layer can be: the dense heads first."""
    routes = (0, 0, 1, 1, 2, 1, 2, 1)
    window = (0, 0, 0, 1, 0, 2, 0, 1)
    topk = (0, 0, 1, 0, 0, 0, 0, 2)
    return plan_mod.AttentionPlan(geometry_mod.Geometry(*GEOMETRY), routes, window, topk, anchors=(0,),
                                  compensation=True, linear_kind=linear_kind, block=64)


def run(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        __import__("pack_package").load_pack_package()
        from comfyui_sparseflow.sparseflow import geometry, plan
        from comfyui_sparseflow.sparseflow.heads_placement import placement_for
        from comfyui_sparseflow.sparseflow.reference import dense_attention, reference_attention
        from comfyui_sparseflow.sparseflow.ulysses import ulysses_attention

        results = {}
        for kind in ("pooled", "feature"):
            p = wan_like_plan(plan, geometry, kind)
            length = p.geometry.length
            gen = torch.Generator().manual_seed(7)
            q, k, v = (torch.randn(BATCH, length, HEADS * DIM, generator=gen, dtype=torch.float64) for _ in range(3))
            want = reference_attention(q, k, v, p, heads=HEADS)
            rows = slice(rank * length // world, (rank + 1) * length // world)
            for balance in (False, True):
                placement = placement_for(p, world, balance)
                got = ulysses_attention(q[:, rows], k[:, rows], v[:, rows], p, heads=HEADS, placement=placement,
                                        backend="reference")
                key = f"{kind}/balance={balance}"
                results[key] = {"max_abs_diff": float((got - want[:, rows]).abs().max()),
                                "identity": placement.is_identity, "shape": list(got.shape)}
        # the dense baseline through the same path: a custom local attention over all-dense routes
        p = plan.AttentionPlan(geometry.Geometry(*GEOMETRY), (0,) * HEADS, (0,) * HEADS, (0,) * HEADS, block=64)
        got = ulysses_attention(q[:, rows], k[:, rows], v[:, rows], p, heads=HEADS,
                                local=lambda a, b, c, rp: dense_attention(a, b, c))
        want = dense_attention(*(t.view(BATCH, length, HEADS, DIM).transpose(1, 2) for t in (q, k, v)))
        want = want.transpose(1, 2).reshape(BATCH, length, HEADS * DIM)
        results["dense/local"] = {"max_abs_diff": float((got - want[:, rows]).abs().max()), "identity": True,
                                  "shape": list(got.shape)}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()
