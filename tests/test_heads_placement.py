"""Routing-aware head placement: equal heads per rank, balanced costs on mixed routes, exact permutation round trip."""

import itertools
import random

import pytest
import torch
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.heads_placement import (
    HeadPlacement,
    balanced_placement,
    contiguous_placement,
    head_costs,
    imbalance,
    permute_heads,
    placement_for,
    rank_costs,
    rank_plan,
)
from comfyui_sparseflow.sparseflow.masks import pair_counts
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan

WAN14B_720P = Geometry(21, 45, 80)  # Wan 2.1 14B, 1280x720, 81 frames: 75,600 tokens, 40 heads


def _mixed_plan(heads: int = 40, dense: int = 8) -> AttentionPlan:
    """A calibrated-looking layer: `dense` dense heads first, then sparse (windows 0-2) and linear heads."""
    routes = tuple(DENSE if h < dense else (LINEAR if h % 3 == 2 else SPARSE) for h in range(heads))
    window = tuple(h % 3 for h in range(heads))
    return AttentionPlan(WAN14B_720P, routes, window, (0,) * heads, compensation=True)


@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_balanced_placement_beats_contiguous_on_mixed_routes(ranks):
    plan = _mixed_plan()
    costs = head_costs(plan)
    contiguous, balanced = contiguous_placement(40, ranks), placement_for(plan, ranks, True)
    print(f"P={ranks}: max/mean contiguous {imbalance(contiguous, costs):.3f}, "
          f"balanced {imbalance(balanced, costs):.3f}")
    assert imbalance(contiguous, costs) > 1.3, "the clustered dense heads must unbalance the default placement"
    assert imbalance(balanced, costs) < 1.05
    assert max(rank_costs(balanced, costs)) < max(rank_costs(contiguous, costs))
    assert all(len(balanced.heads_of(r)) == 40 // ranks for r in range(ranks))


def test_costs_follow_the_route():
    plan = _mixed_plan()
    costs = head_costs(plan)
    _, spec_cost = pair_counts(plan)
    assert costs == tuple(spec_cost), "without top-k the placement cost is the spec §6 cost"
    dense, sparse, linear = costs[0], costs[9], costs[11]
    assert plan.routes[9] == SPARSE and plan.routes[11] == LINEAR
    assert dense > 5 * sparse and dense > 5 * linear
    with_topk = AttentionPlan(WAN14B_720P, (SPARSE,), (1,), (4,))
    without = AttentionPlan(WAN14B_720P, (SPARSE,), (1,), (0,))
    n = -(-WAN14B_720P.length // 128)
    assert head_costs(with_topk)[0] == head_costs(without)[0] + 4 * n


@pytest.mark.parametrize("seed", range(6))
def test_balanced_is_within_lpt_bound_of_the_optimum(seed):
    rng = random.Random(seed)
    heads, ranks = 8, rng.choice([2, 4])
    costs = [rng.choice([1, 3, 5, 40, 100]) for _ in range(heads)]
    best = min(max(sum(costs[h] for h in perm[r * heads // ranks:(r + 1) * heads // ranks]) for r in range(ranks))
               for perm in itertools.permutations(range(heads)))
    got = max(rank_costs(balanced_placement(costs, ranks), costs))
    assert best <= got <= best * 4 / 3, (costs, ranks, got, best)


def test_balanced_is_deterministic_and_keeps_head_order_within_a_rank():
    costs = [5, 5, 1, 1, 9, 2, 2, 7]
    a, b = balanced_placement(costs, 4), balanced_placement(list(costs), 4)
    assert a == b
    for r in range(4):
        assert list(a.heads_of(r)) == sorted(a.heads_of(r))


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_permutation_round_trip_is_exact(ranks):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 40, 8)
    order = list(range(40))
    random.Random(ranks).shuffle(order)
    placement = HeadPlacement(tuple(order), ranks)
    y = permute_heads(x, placement.order, dim=2)
    assert torch.equal(y[:, :, 0], x[:, :, order[0]])
    assert torch.equal(permute_heads(y, placement.inverse, dim=2), x)


def test_rank_plans_partition_the_heads():
    plan = _mixed_plan()
    placement = placement_for(plan, 4, True)
    seen = []
    for r in range(4):
        rp = rank_plan(plan, placement, r)
        hs = placement.heads_of(r)
        assert rp.heads == 10 and rp.geometry == plan.geometry
        assert rp.routes == tuple(plan.routes[h] for h in hs) and rp.window == tuple(plan.window[h] for h in hs)
        seen += hs
    assert sorted(seen) == list(range(40))


def test_placement_errors_name_the_problem():
    with pytest.raises(ValueError, match="24 heads cannot be split evenly over 5 ranks"):
        contiguous_placement(24, 5)
    with pytest.raises(ValueError, match="must be a permutation"):
        HeadPlacement((0, 0, 1, 2), 2)
    with pytest.raises(ValueError, match="rank must be an int"):
        contiguous_placement(4, 2).heads_of(2)
    with pytest.raises(ValueError, match="placement has 4 heads but the plan has 40"):
        rank_plan(_mixed_plan(), contiguous_placement(4, 2), 0)
