"""The plan of one attention call: geometry plus per-head routes and parameters (docs/spec.md §4).

A plan is plain data shared by the reference operator, the Triton launcher, calibration and the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .geometry import Geometry

__all__ = ["AttentionPlan", "BLOCKS", "DENSE", "FP16", "FP8", "INT8_QK", "LINEAR", "LINEAR_KINDS", "PRECISIONS",
           "ROUTE_NAMES", "SPARSE", "PrecisionChoice", "uniform_plan"]

DENSE, SPARSE, LINEAR = 0, 1, 2
ROUTE_NAMES = ("dense", "sparse", "linear")
LINEAR_KINDS = ("pooled", "feature")
BLOCKS = (64, 128)
# Q·K precision (spec §8): "fp16" = the input dtype (fp16 or bf16) throughout; "int8-qk" = int8 q and smoothed k per
# spec block (sparseflow/quantize.py), P·V in the input dtype; "fp8" = int8-qk's Q·K plus P·V of exact keys in FP8 e4m3
# (V per channel, sparseflow/fp8.py)
FP16, INT8_QK, FP8 = "fp16", "int8-qk", "fp8"
PRECISIONS = (FP16, INT8_QK, FP8)
MAX_WINDOW = 4096
MAX_TOPK = 4096


@dataclass(frozen=True)
class PrecisionChoice:
    """A patch's Q·K precision (one of PRECISIONS) and why it is that one (the Patch node's "auto" picks per device:
    kernels/configs.py `auto_precision`); said in the log and the node's text."""

    precision: str
    reason: str


@dataclass(frozen=True)
class AttentionPlan:
    """Routes and parameters for every head of one self-attention call.

    `routes`, `window`, `topk` hold one entry per head. `anchors` are latent frame indices every sparse
    query block attends to (indices >= frames are ignored). `scale=None` means 1/sqrt(head_dim). `precision` is
    one of `PRECISIONS` (spec §8).
    """

    geometry: Geometry
    routes: tuple[int, ...]
    window: tuple[int, ...]
    topk: tuple[int, ...]
    anchors: tuple[int, ...] = (0,)
    compensation: bool = False
    linear_kind: str = "pooled"
    linear_own_block: bool = True
    block: int = 128
    scale: float | None = None
    precision: str = FP16
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        heads = len(self.routes)
        if heads == 0:
            raise ValueError("plan: routes must name at least one head")
        for name in ("window", "topk"):
            if len(getattr(self, name)) != heads:
                raise ValueError(f"plan: {name} has {len(getattr(self, name))} entries but routes has {heads}")
        for h, r in enumerate(self.routes):
            if r not in (DENSE, SPARSE, LINEAR):
                raise ValueError(f"plan: routes[{h}] = {r!r}; allowed codes are 0 dense, 1 sparse, 2 linear")
        for h, w in enumerate(self.window):
            if not isinstance(w, int) or not 0 <= w <= MAX_WINDOW:
                raise ValueError(f"plan: window[{h}] must be an int in [0, {MAX_WINDOW}], got {w!r}")
        for h, k in enumerate(self.topk):
            if not isinstance(k, int) or not 0 <= k <= MAX_TOPK:
                raise ValueError(f"plan: topk[{h}] must be an int in [0, {MAX_TOPK}], got {k!r}")
        if any(not isinstance(a, int) or a < 0 for a in self.anchors):
            raise ValueError(f"plan: anchors must be frame indices >= 0, got {self.anchors!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"plan: block must be one of {BLOCKS}, got {self.block!r}")
        if self.linear_kind not in LINEAR_KINDS:
            raise ValueError(f"plan: linear_kind must be one of {LINEAR_KINDS}, got {self.linear_kind!r}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"plan: scale must be > 0 or None, got {self.scale!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"plan: precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def heads(self) -> int:
        return len(self.routes)

    @property
    def live_anchors(self) -> tuple[int, ...]:
        """Anchor frames that exist in this geometry, sorted and unique."""
        return tuple(sorted({a for a in self.anchors if a < self.geometry.frames}))

    def softmax_scale(self, head_dim: int) -> float:
        return self.scale if self.scale is not None else head_dim ** -0.5

    def groups(self) -> dict[tuple[int, int, int], list[int]]:
        """Heads grouped by (route, window, topk); dense and linear heads ignore window and topk."""
        out: dict[tuple[int, int, int], list[int]] = {}
        for h, (r, w, k) in enumerate(zip(self.routes, self.window, self.topk)):
            key = (r, w, k) if r == SPARSE else (r, 0, 0)
            out.setdefault(key, []).append(h)
        return out

    def with_routes(self, routes: tuple[int, ...]) -> "AttentionPlan":
        return AttentionPlan(self.geometry, tuple(routes), self.window, self.topk, self.anchors, self.compensation,
                             self.linear_kind, self.linear_own_block, self.block, self.scale, self.precision)

    def with_precision(self, precision: str) -> "AttentionPlan":
        return AttentionPlan(self.geometry, self.routes, self.window, self.topk, self.anchors, self.compensation,
                             self.linear_kind, self.linear_own_block, self.block, self.scale, precision)


def uniform_plan(geometry: Geometry, heads: int, route: int = SPARSE, window: int = 1, topk: int = 0,
                 **kwargs) -> AttentionPlan:
    """A plan with the same route and parameters on every head."""
    return AttentionPlan(geometry, (route,) * heads, (window,) * heads, (topk,) * heads, **kwargs)
