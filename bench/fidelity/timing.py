"""Attention-op time of a whole sampling run per setting, against dense SDPA, at two shapes.

A run's attention time is the sum over (step, layer) of the op time of that call's plan; each distinct plan
is timed once with triton.testing.do_bench (median). Dense = ComfyUI 0.3.64's default attention
(`bench.peers.make_sdpa_default`). Shapes: the fidelity model's own calls (real captured q/k/v), and Wan 2.1
1.3B 480p (B=1, H=12, L=32760, structured synthetic q/k/v) with the same routing (a preset built at 30 x 12; a
calibrated map tiled to 30 x 12) and the same windows in latent frames, so the ratio is what the setting
would give at a size where attention dominates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import AttentionPlan
from comfyui_sparseflow.sparseflow.routing import RoutingMap
from comfyui_sparseflow.sparseflow.schedule import Schedule

from .hooks import plan_for

__all__ = ["PlanTimer", "sol_run_ms", "sparseflow_run_ms", "tile_map"]

log = logging.getLogger("sparseflow.bench.fidelity.timing")


def _bench(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


class PlanTimer:
    """Times plans on fixed q/k/v (B, H, L, D), caching by the plan's content."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 attention: Callable[..., torch.Tensor]) -> None:
        from bench.peers import make_sdpa_default

        self.q, self.k, self.v, self.attention = q, k, v, attention
        self.dense_ms = _bench(make_sdpa_default(q, k, v))
        self._cache: dict = {}

    def plan_ms(self, plan: AttentionPlan) -> float:
        key = (plan.routes, plan.window, plan.topk, plan.compensation, plan.anchors, plan.linear_kind, plan.block)
        if key not in self._cache:
            q, k, v, att = self.q, self.k, self.v, self.attention
            self._cache[key] = _bench(lambda: att(q, k, v, plan))
        return self._cache[key]


def tile_map(rmap: RoutingMap, layers: int, heads: int) -> RoutingMap:
    """`rmap` stretched to layers x heads: layer l takes row l * L0 // layers, head h takes column h % H0."""
    rows = torch.tensor([li * rmap.layers // layers for li in range(layers)])
    cols = torch.arange(heads) % rmap.heads

    def grow(t: torch.Tensor) -> torch.Tensor:
        return t[rows][:, cols].contiguous()

    err = None if rmap.error is None else grow(rmap.error)
    return RoutingMap(grow(rmap.routes), grow(rmap.window), grow(rmap.topk), err, rmap.family,
                      rmap.made_by + "+tiled", rmap.notes)


def sparseflow_run_ms(timer: PlanTimer, geometry: Geometry, rmap: RoutingMap, schedule: Schedule,
                      steps: int, precision: str = "fp16") -> tuple[float, float]:
    """(setting ms, dense ms) summed over every (step, layer) call of a run, at a Q·K precision (spec §8)."""
    total = 0.0
    for step in range(steps):
        params = schedule.at(step / max(1, steps - 1))
        for layer in range(rmap.layers):
            total += timer.plan_ms(plan_for(geometry, rmap, layer, params, precision=precision))
    return total, timer.dense_ms * steps * rmap.layers


def sol_run_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dense_ms: float, *, tau: float,
               topk_ratio: float, sparse_steps: int, steps: int, layers: int) -> tuple[float, float]:
    """(setting ms, dense ms) for core sol_attn: dense on the first steps (start percent), sol_attn after."""
    from bench.peers import sol_attn

    qs, ks, vs = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    ms = _bench(lambda: sol_attn(qs, ks, vs, topk_ratio=topk_ratio, tau=tau))
    total = (steps - sparse_steps) * layers * dense_ms + sparse_steps * layers * ms
    return total, steps * layers * dense_ms
