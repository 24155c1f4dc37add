"""Training-free calibration math: per-head error of each candidate route against dense, and the choice.

Follows Sparse-vDiT's offline per-head search (arXiv 2506.03065): measure every candidate on captured
q/k/v, then keep, per head, the cheapest candidate whose relative error is within the budget. The cost
is `masks.pair_counts`' cost (docs/spec.md §6), so "cheaper" means fewer computed block pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .geometry import Geometry
from .masks import num_blocks, pair_counts, topk_lut
from .plan import DENSE, LINEAR, ROUTE_NAMES, SPARSE, AttentionPlan
from .reference import reference_attention

__all__ = ["DEFAULT_CANDIDATES", "Candidate", "CalibrationResult", "ErrorTable", "choose_routes", "head_errors"]


@dataclass(frozen=True)
class Candidate:
    """One route setting to try on every head."""

    route: int
    window: int = 0
    topk: int = 0

    @property
    def name(self) -> str:
        if self.route == SPARSE:
            return f"sparse(w={self.window}{f',k={self.topk}' if self.topk else ''})"
        return ROUTE_NAMES[self.route]


DEFAULT_CANDIDATES = (Candidate(LINEAR), Candidate(SPARSE, 0), Candidate(SPARSE, 1), Candidate(SPARSE, 2),
                      Candidate(DENSE))


def head_errors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry,
                candidates: Sequence[Candidate] = DEFAULT_CANDIDATES, *, block: int = 128,
                anchors: tuple[int, ...] = (0,), compensation: bool = True, linear_kind: str = "pooled",
                attention: Callable[..., torch.Tensor] = reference_attention) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative error ||o_c - o_dense|| / ||o_dense|| per (head, candidate) and the cost of each candidate.

    q, k, v: (B, H, L, D) from one captured call. Returns errors (H, C) float64 and costs (C,) float64 as a
    fraction of dense pairs. `attention(q, k, v, plan)` is the operator used (reference or kernel).
    """
    heads = q.shape[1]
    n = num_blocks(geometry.length, block)

    def plan_for(c: Candidate) -> AttentionPlan:
        return AttentionPlan(geometry, (c.route,) * heads, (c.window,) * heads, (c.topk,) * heads, anchors=anchors,
                             compensation=compensation, linear_kind=linear_kind, block=block)

    dense = attention(q, k, v, plan_for(Candidate(DENSE))).double()
    norm = dense.pow(2).sum(dim=(0, 2, 3)).sqrt().clamp_min(1e-30)
    errors = torch.zeros(heads, len(candidates), dtype=torch.float64)
    costs = torch.zeros(len(candidates), dtype=torch.float64)
    for ci, c in enumerate(candidates):
        plan = plan_for(c)
        if c.route == DENSE:
            out = dense
        else:
            out = attention(q, k, v, plan).double()
        errors[:, ci] = ((out - dense).pow(2).sum(dim=(0, 2, 3)).sqrt() / norm).cpu()
        lut = topk_lut(q[:1], k[:1], plan) if c.topk else None
        _, cost = pair_counts(plan, lut)
        costs[ci] = cost[0] / (n * n)
    return errors, costs


@dataclass
class ErrorTable:
    """Errors accumulated over captured calls: per layer, (H, C) sums of squared errors and a count."""

    candidates: tuple[Candidate, ...]
    costs: torch.Tensor | None = None
    sq_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    worst: dict[int, torch.Tensor] = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)

    def add(self, layer: int, errors: torch.Tensor, costs: torch.Tensor) -> None:
        self.costs = costs if self.costs is None else torch.maximum(self.costs, costs)
        if layer not in self.sq_sum:
            self.sq_sum[layer] = torch.zeros_like(errors)
            self.worst[layer] = torch.zeros_like(errors)
            self.count[layer] = 0
        self.sq_sum[layer] += errors.pow(2)
        self.worst[layer] = torch.maximum(self.worst[layer], errors)
        self.count[layer] += 1

    def rms(self, layer: int) -> torch.Tensor:
        return (self.sq_sum[layer] / self.count[layer]).sqrt()


@dataclass(frozen=True)
class CalibrationResult:
    """Chosen candidate per (layer, head) with its error; `report()` is the readable table."""

    candidates: tuple[Candidate, ...]
    choice: torch.Tensor  # (layers, heads) int64 index into candidates
    error: torch.Tensor  # (layers, heads) float32, error of the chosen candidate
    costs: torch.Tensor  # (C,)
    budget: float

    def routes(self) -> torch.Tensor:
        return torch.tensor([[self.candidates[int(c)].route for c in row] for row in self.choice], dtype=torch.int8)

    def windows(self) -> torch.Tensor:
        return torch.tensor([[self.candidates[int(c)].window if self.candidates[int(c)].route == SPARSE else -1
                              for c in row] for row in self.choice], dtype=torch.int16)

    def topks(self) -> torch.Tensor:
        return torch.tensor([[self.candidates[int(c)].topk if self.candidates[int(c)].route == SPARSE else -1
                              for c in row] for row in self.choice], dtype=torch.int16)

    def mean_cost(self) -> float:
        return float(self.costs[self.choice].mean())

    def report(self) -> str:
        layers, heads = self.choice.shape
        counts: dict[str, int] = {}
        for c in self.choice.flatten().tolist():
            counts[self.candidates[c].name] = counts.get(self.candidates[c].name, 0) + 1
        lines = [f"SparseFlow calibration: {layers} layers x {heads} heads, error budget {self.budget:.3f}",
                 "chosen: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                 f"estimated attention cost {self.mean_cost():.3f} of dense "
                 f"({1 / max(self.mean_cost(), 1e-9):.1f}x fewer block pairs)",
                 "layer | " + " ".join(f"h{h:<9d}" for h in range(heads))]
        for layer in range(layers):
            cells = [f"{self.candidates[int(self.choice[layer, h])].name[:6]}:{float(self.error[layer, h]):.2f}"
                     for h in range(heads)]
            lines.append(f"{layer:5d} | " + " ".join(f"{c:<10s}" for c in cells))
        return "\n".join(lines)


def choose_routes(errors: torch.Tensor, costs: torch.Tensor, candidates: Sequence[Candidate],
                  budget: float) -> CalibrationResult:
    """Per head, the cheapest candidate with error <= budget; dense when none qualifies.

    errors: (layers, heads, C); costs: (C,). Ties in cost go to the lower error.
    """
    if not budget >= 0:
        raise ValueError(f"calibrate: error budget must be >= 0, got {budget!r}")
    candidates = tuple(candidates)
    dense_idx = next((i for i, c in enumerate(candidates) if c.route == DENSE), None)
    if dense_idx is None:
        raise ValueError("calibrate: candidates must include a dense candidate (the fallback)")
    layers, heads, _ = errors.shape
    key = costs[None, None, :] + errors * 1e-9  # cost first, error breaks ties
    key = torch.where(errors <= budget, key, torch.full_like(key, float("inf")))
    choice = key.argmin(dim=-1)
    none_ok = torch.isinf(key.min(dim=-1).values)
    choice[none_ok] = dense_idx
    chosen_err = torch.gather(errors, -1, choice[..., None])[..., 0].float()
    return CalibrationResult(candidates, choice, chosen_err, costs, budget)
