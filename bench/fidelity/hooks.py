"""Attention overrides for the fidelity model: SparseFlow plans per (layer, step), core sol_attn, q/k/v capture.

Each override has ComfyUI's hook signature (`optimized_attention_override` in `transformer_options`,
COMFY_NOTES §1): `override(func, q, k, v, heads, mask=None, ..., **kwargs)` with q, k, v in (B, L, H*D).
Self-attention is told apart from cross-attention by `q.shape == k.shape` (the context has 4 tokens); the
layer index is a counter of self-attention calls modulo the layer count (one forward = one pass over the
layers). Cross-attention always runs dense through SDPA, as in the dense baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE, SPARSE, AttentionPlan
from comfyui_sparseflow.sparseflow.reference import reference_attention
from comfyui_sparseflow.sparseflow.routing import RoutingMap
from comfyui_sparseflow.sparseflow.schedule import Keyframe, Schedule, StepParams

from .model import sdpa_override, to_half

__all__ = ["CaptureOverride", "DenseOverride", "SolAttnOverride", "SparseFlowOverride", "op_attention",
           "plan_for", "sigma_at_percent"]

log = logging.getLogger("sparseflow.bench.fidelity.hooks")

FIXED = Schedule((Keyframe(0.0, 0, compensation=True),), name="fixed")  # calibrated maps: windows per head


def op_attention() -> tuple[Callable[..., torch.Tensor], str]:
    """The public SparseFlow op (`sparseflow.ops.attention`, Triton on CUDA) or, until it exists, the reference."""
    try:
        from comfyui_sparseflow.sparseflow.ops import attention
    except ImportError as e:
        log.warning("sparseflow.ops not importable (%s): using sparseflow.reference.reference_attention", e)

        def ref(q, k, v, plan, *, heads=None):
            return reference_attention(q, k, v, plan, heads=heads)

        return ref, "reference"

    def op(q, k, v, plan, *, heads=None):
        return attention(q, k, v, plan, heads=heads)

    return op, "sparseflow.ops"


def sigma_at_percent(percent: float, shift: float) -> float:
    """ComfyUI ModelSamplingDiscreteFlow.percent_to_sigma: time_snr_shift(shift, 1 - p), 1 at p <= 0."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    t = 1.0 - percent
    return shift * t / (1 + (shift - 1) * t)


def plan_for(geometry: Geometry, rmap: RoutingMap, layer: int, params: StepParams, *, block: int = 128,
             anchors: tuple[int, ...] = (0,), linear_kind: str = "pooled", precision: str = "fp16") -> AttentionPlan:
    """The plan of one layer at one step: map windows/topk of -1 take the step's; `dense` makes sparse heads dense."""
    routes = list(rmap.head_routes(layer))
    if params.dense:
        routes = [DENSE if r == SPARSE else r for r in routes]
    window = tuple(params.window if w < 0 else w for w in rmap.head_window(layer))
    topk = tuple(params.topk if t < 0 else t for t in rmap.head_topk(layer))
    return AttentionPlan(geometry, tuple(routes), window, topk, anchors=anchors, compensation=params.compensation,
                         linear_kind=linear_kind, block=block, precision=precision)


class _StepAware:
    """Sampler bookkeeping shared by the overrides: step index, step count, sigma, self-attention call counter."""

    def __init__(self, layers: int) -> None:
        self.layers = layers
        self.step, self.steps, self.sigma, self.calls = 0, 1, 1.0, 0

    def begin_step(self, step: int, steps: int, sigma: float) -> None:
        self.step, self.steps, self.sigma, self.calls = step, steps, float(sigma), 0

    @property
    def progress(self) -> float:
        return self.step / max(1, self.steps - 1)

    def _layer(self) -> int:
        layer = self.calls % self.layers
        self.calls += 1
        return layer


class DenseOverride(_StepAware):
    """Dense SDPA everywhere (the baseline); counts calls like the others."""

    def __call__(self, func, q, k, v, heads, mask=None, **kwargs):
        if q.shape == k.shape and mask is None:
            self._layer()
        return sdpa_override(func, q, k, v, heads, mask=mask, **kwargs)


class SparseFlowOverride(_StepAware):
    """SparseFlow attention on self-attention: plan from the routing map, the schedule and the step."""

    def __init__(self, geometry: Geometry, rmap: RoutingMap, schedule: Schedule,
                 attention: Callable[..., torch.Tensor], **plan_kwargs) -> None:
        super().__init__(rmap.layers)
        self.geometry, self.rmap, self.schedule, self.attention = geometry, rmap, schedule, attention
        self.plan_kwargs = plan_kwargs
        self._plans: dict = {}

    def params(self) -> StepParams:
        return self.schedule.at(self.progress)

    def plan(self, layer: int, params: StepParams) -> AttentionPlan:
        key = (layer, params)
        if key not in self._plans:
            self._plans[key] = plan_for(self.geometry, self.rmap, layer, params, **self.plan_kwargs)
        return self._plans[key]

    def __call__(self, func, q, k, v, heads, mask=None, **kwargs):
        if q.shape != k.shape or mask is not None or q.shape[1] != self.geometry.length:
            return sdpa_override(func, q, k, v, heads, mask=mask, **kwargs)
        plan = self.plan(self._layer(), self.params())
        return self.attention(to_half(q), to_half(k), to_half(v), plan, heads=heads).to(q.dtype)


class SolAttnOverride(_StepAware):
    """ComfyUI core "Model Sparse Attention" (comfy_kitchen.sol_attn) as it runs on Wan self-attention.

    Dense while sigma > percent_to_sigma(start_percent) (core default start 0.2); `min_tokens` (core default
    12288) is not applied, since the fidelity model has fewer tokens: sol_attn runs on every eligible call.
    """

    def __init__(self, layers: int, tau: float, topk_ratio: float, shift: float, start_percent: float = 0.2,
                 extra_tokens: int = 256) -> None:
        super().__init__(layers)
        self.tau, self.topk_ratio, self.extra_tokens = tau, topk_ratio, extra_tokens
        self.sigma_start = sigma_at_percent(start_percent, shift)

    def sparse_now(self) -> bool:
        return self.sigma <= self.sigma_start + 1e-9

    def __call__(self, func, q, k, v, heads, mask=None, **kwargs):
        if q.shape != k.shape or mask is not None:
            return sdpa_override(func, q, k, v, heads, mask=mask, **kwargs)
        self._layer()
        if not self.sparse_now():
            return sdpa_override(func, q, k, v, heads, mask=mask, **kwargs)
        from bench.peers import sol_attn

        b, n, c = q.shape
        qs, ks, vs = (t.view(b, n, heads, c // heads).to(torch.bfloat16) for t in (q, k, v))
        out = sol_attn(qs, ks, vs, topk_ratio=self.topk_ratio, tau=self.tau, extra_tokens=self.extra_tokens)
        return out.reshape(b, n, c).to(q.dtype)


@dataclass
class Capture:
    layer: int
    step: int
    q: torch.Tensor  # (B, H, L, D)
    k: torch.Tensor
    v: torch.Tensor


class CaptureOverride(DenseOverride):
    """Dense attention that keeps the self-attention q/k/v (B, H, L, D) of the chosen steps (all layers)."""

    def __init__(self, layers: int, steps_to_keep: set[int], device: str | torch.device | None = None) -> None:
        super().__init__(layers)
        self.keep, self.device = set(steps_to_keep), device
        self.captures: list[Capture] = []

    def __call__(self, func, q, k, v, heads, mask=None, **kwargs):
        if q.shape == k.shape and mask is None and self.step in self.keep:
            b, n, c = q.shape
            layer = self.calls % self.layers
            dev = self.device or q.device
            q4, k4, v4 = (to_half(t.detach()).view(b, n, heads, c // heads).transpose(1, 2).contiguous().to(dev)
                          for t in (q, k, v))
            self.captures.append(Capture(layer, self.step, q4, k4, v4))
        return super().__call__(func, q, k, v, heads, mask=mask, **kwargs)
