"""Routing-aware head placement for Ulysses sequence parallelism: which heads of a call each rank computes.

After Ulysses' all-to-all (DeepSpeed-Ulysses, arXiv:2309.14509; yunchang `ulysses/attn_layer.py`) rank r holds
the whole sequence for H/P heads, by default the contiguous heads [r*H/P, (r+1)*H/P). With SparseFlow a head's
cost depends on its route (dense, sparse at its window, linear; docs/spec.md §6), so a rank whose heads route
dense finishes last and the others wait at the next all-to-all. `balanced_placement` permutes the heads so every
rank gets H/P heads of about equal cost: longest-processing-time greedy (Graham 1969) under the equal-count
constraint, then pairwise swaps while one lowers the larger of the two ranks' costs. The permutation is applied
to q/k/v before the all-to-all and undone on the output (`sparseflow/ulysses.py`), so results are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .masks import num_blocks, pair_counts
from .plan import SPARSE, AttentionPlan

__all__ = ["HeadPlacement", "balanced_placement", "contiguous_placement", "head_costs", "imbalance", "permute_heads",
           "placement_for", "rank_costs", "rank_plan"]


@dataclass(frozen=True)
class HeadPlacement:
    """A permutation of a call's heads over `ranks` ranks: position p of the permuted head axis holds original
    head `order[p]`, and rank r computes positions [r * heads_per_rank, (r + 1) * heads_per_rank)."""

    order: tuple[int, ...]
    ranks: int

    def __post_init__(self) -> None:
        heads = len(self.order)
        if not isinstance(self.ranks, int) or self.ranks < 1:
            raise ValueError(f"head placement: ranks must be an int >= 1, got {self.ranks!r}")
        if heads % self.ranks:
            raise ValueError(f"head placement: {heads} heads cannot be split evenly over {self.ranks} ranks; "
                             "Ulysses needs the head count to be a multiple of the sequence-parallel degree")
        if sorted(self.order) != list(range(heads)):
            raise ValueError(f"head placement: order must be a permutation of 0..{heads - 1}, got {self.order!r}")

    @property
    def heads(self) -> int:
        return len(self.order)

    @property
    def heads_per_rank(self) -> int:
        return self.heads // self.ranks

    @property
    def is_identity(self) -> bool:
        return self.order == tuple(range(self.heads))

    @property
    def inverse(self) -> tuple[int, ...]:
        """inverse[h] = the position of original head h on the permuted axis."""
        inv = [0] * self.heads
        for p, h in enumerate(self.order):
            inv[h] = p
        return tuple(inv)

    def heads_of(self, rank: int) -> tuple[int, ...]:
        """Original head indices rank `rank` computes, in the order it holds them."""
        if not isinstance(rank, int) or not 0 <= rank < self.ranks:
            raise ValueError(f"head placement: rank must be an int in [0, {self.ranks - 1}], got {rank!r}")
        n = self.heads_per_rank
        return self.order[rank * n:(rank + 1) * n]


def contiguous_placement(heads: int, ranks: int) -> HeadPlacement:
    """Ulysses' default: rank r computes heads [r*H/P, (r+1)*H/P)."""
    return HeadPlacement(tuple(range(heads)), ranks)


def head_costs(plan: AttentionPlan) -> tuple[int, ...]:
    """Per head, the cost of one call in (query block, key block) pairs (spec §6, `masks.pair_counts`); a sparse
    head's top-k blocks, chosen from the content at run time, are counted at their most: min(topk, N) per query
    block."""
    _, cost = pair_counts(plan)
    n = num_blocks(plan.geometry.length, plan.block)
    return tuple(c + (min(t, n) * n if r == SPARSE else 0) for c, r, t in zip(cost, plan.routes, plan.topk))


def rank_costs(placement: HeadPlacement, costs: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Summed head cost per rank."""
    if len(costs) != placement.heads:
        raise ValueError(f"head placement: {len(costs)} costs for {placement.heads} heads")
    return tuple(sum(costs[h] for h in placement.heads_of(r)) for r in range(placement.ranks))


def imbalance(placement: HeadPlacement, costs: tuple[int, ...] | list[int]) -> float:
    """max / mean of the per-rank costs: 1.0 is perfectly balanced; the step waits for the max."""
    loads = rank_costs(placement, costs)
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def _best_swap(a: list[int], b: list[int], costs, gap: int) -> tuple[int, int] | None:
    """(i, j) swapping a[i] and b[j] (cost difference d, 0 < d < gap) with d closest to gap / 2, else None."""
    best, best_key = None, None
    for i, ha in enumerate(a):
        for j, hb in enumerate(b):
            d = costs[ha] - costs[hb]
            if 0 < d < gap:
                key = (abs(2 * d - gap), ha, hb)
                if best_key is None or key < best_key:
                    best, best_key = (i, j), key
    return best


def balanced_placement(costs: tuple[int, ...] | list[int], ranks: int) -> HeadPlacement:
    """A placement with H/P heads per rank whose largest rank cost is as small as LPT + swaps make it.

    Deterministic (ties go to the lower head and rank index). Each rank's heads keep ascending original order.
    """
    heads = len(costs)
    contiguous_placement(heads, ranks)  # validates heads % ranks
    cap = heads // ranks
    members: list[list[int]] = [[] for _ in range(ranks)]
    loads = [0] * ranks
    for h in sorted(range(heads), key=lambda h: (-costs[h], h)):
        r = min((r for r in range(ranks) if len(members[r]) < cap), key=lambda r: (loads[r], r))
        members[r].append(h)
        loads[r] += costs[h]
    # each accepted swap moves d with 0 < d < gap between two ranks: the sum of squared loads falls, so this ends
    improved = True
    while improved:
        improved = False
        by_load = sorted(range(ranks), key=lambda r: (-loads[r], r))
        for hi in by_load:
            for lo in reversed(by_load):
                gap = loads[hi] - loads[lo]
                if gap <= 0:
                    continue
                swap = _best_swap(members[hi], members[lo], costs, gap)
                if swap is None:
                    continue
                i, j = swap
                d = costs[members[hi][i]] - costs[members[lo][j]]
                members[hi][i], members[lo][j] = members[lo][j], members[hi][i]
                loads[hi] -= d
                loads[lo] += d
                improved = True
                break
            if improved:
                break
    return HeadPlacement(tuple(h for m in members for h in sorted(m)), ranks)


@lru_cache(maxsize=1024)
def placement_for(plan: AttentionPlan, ranks: int, balance: bool) -> HeadPlacement:
    """The placement of `plan`'s heads over `ranks`: balanced on `head_costs` when `balance`, else contiguous.
    Cached per plan: a run has a few plans per layer."""
    if not balance:
        return contiguous_placement(plan.heads, ranks)
    return balanced_placement(head_costs(plan), ranks)


@lru_cache(maxsize=4096)
def rank_plan(plan: AttentionPlan, placement: HeadPlacement, rank: int) -> AttentionPlan:
    """The slice of `plan` for the heads rank `rank` computes (full geometry: Ulysses gives it the whole sequence)."""
    if placement.heads != plan.heads:
        raise ValueError(f"head placement: placement has {placement.heads} heads but the plan has {plan.heads}")
    hs = placement.heads_of(rank)
    return AttentionPlan(plan.geometry, tuple(plan.routes[h] for h in hs), tuple(plan.window[h] for h in hs),
                         tuple(plan.topk[h] for h in hs), plan.anchors, plan.compensation, plan.linear_kind,
                         plan.linear_own_block, plan.block, plan.scale)


def permute_heads(x: torch.Tensor, order: tuple[int, ...], dim: int) -> torch.Tensor:
    """x with its head axis `dim` reordered so that position p holds head order[p] (a copy)."""
    return x.index_select(dim, torch.tensor(order, device=x.device))
