"""One run's plans: an `AttentionPlan` per (geometry, layer, step parameters), its tensor code and each layer's call.

Host work per attention call is cached here (docs/design.md "Host work per call is cached"): plans per (geometry,
layer, window, topk, compensation), their `ops.encode_plan` tensors, and the routing map's per-layer routes,
windows and top-k read once as Python tuples, so the attention path reads no tensor values (torch.compile then
traces it without a data-dependent graph break per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sparseflow.geometry import Geometry
from ..sparseflow.plan import DENSE, AttentionPlan
from ..sparseflow.schedule import StepParams
from .config import COMFY_BACKEND, PatchConfig
from .context import LayerCall

__all__ = ["LayerRoutes", "PlanCache"]


@dataclass(frozen=True)
class LayerRoutes:
    """One layer of the routing map as Python tuples: per head route, window (-1 = the step's), top-k (-1 = the
    step's)."""

    routes: tuple[int, ...]
    window: tuple[int, ...]
    topk: tuple[int, ...]


class PlanCache:
    """The plans of one sampling run (made fresh by the OUTER_SAMPLE wrapper, so no clone shares them)."""

    def __init__(self, config: PatchConfig) -> None:
        self.config = config
        rmap = config.routing
        self.layers = tuple(LayerRoutes(rmap.head_routes(i), rmap.head_window(i), rmap.head_topk(i))
                            for i in range(rmap.layers))
        self.plans: list[AttentionPlan] = []
        self._index: dict[tuple, int] = {}
        self._codes: dict[int, torch.Tensor] = {}

    def plan(self, geometry: Geometry, layer: int, params: StepParams) -> tuple[AttentionPlan, int]:
        """(plan, its index in `plans`), cached per (geometry, layer, window, topk, compensation)."""
        cfg = self.config
        window = cfg.window_at(params)
        key = (geometry, layer, window, params.topk, params.compensation)
        if key not in self._index:
            lr = self.layers[layer]
            win = tuple(window if w < 0 else w for w in lr.window)
            topk = tuple(params.topk if t < 0 else t for t in lr.topk)
            self._index[key] = len(self.plans)
            self.plans.append(AttentionPlan(geometry, lr.routes, win, topk, anchors=cfg.anchors,
                                            compensation=params.compensation, linear_kind=cfg.linear_kind,
                                            block=cfg.block, precision=cfg.precision))
        pid = self._index[key]
        return self.plans[pid], pid

    def layer_call(self, geometry: Geometry, layer: int, params: StepParams, t: torch.Tensor) -> LayerCall:
        """How `layer`'s self-attention runs at these step parameters, for inputs like `t`."""
        if params.dense or all(r == DENSE for r in self.layers[layer].routes):
            return LayerCall("dense", backend=COMFY_BACKEND)
        from ..sparseflow import ops

        plan, pid = self.plan(geometry, layer, params)
        try:
            backend = ops.backend_for(t, plan, self.config.backend)
        except ValueError as e:
            return LayerCall("pass", reason=str(e))
        if pid not in self._codes:
            self._codes[pid] = ops.encode_plan(plan)
        return LayerCall("sparse", self._codes[pid], backend, pid)
