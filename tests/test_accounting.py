"""Spec §6 accounting and Rule E per route: what one (query block, key block) pair costs on each route, pinned
against the oracle's exact logits (tests/oracle.py, written from the spec) and against the operator itself."""

import math
import random

import pytest
import torch
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.masks import density, num_blocks, pair_counts
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan
from comfyui_sparseflow.sparseflow.reference import reference_attention
from oracle import _token_tables, oracle_attention, oracle_exact_logits

KINDS = [("pooled", True), ("pooled", False), ("feature", True)]


def _geometries(n: int, seed: int = 1) -> list[Geometry]:
    rng = random.Random(seed)
    return [Geometry(rng.randint(1, 5), rng.randint(1, 8), rng.randint(1, 10), prefix=rng.choice([0, 0, 5, 70]),
                     suffix=rng.choice([0, 0, 3, 65])) for _ in range(n)] + [Geometry(1, 3, 5)]


def _expected_reads(plan: AttentionPlan, route: int) -> int:
    """Pooled reads of one head from the spec's table, counted on the oracle's token tables."""
    frame, n, bframes, bextra = _token_tables(plan)
    blk, reads = plan.block, 0
    for i in range(n):
        if bextra[i]:
            continue
        if route == SPARSE and plan.compensation:
            reads += math.ceil(n / blk)
        elif route == LINEAR and plan.linear_kind == "feature":
            reads += 3
        elif route == LINEAR:
            segments = {(frame[t], t // blk) for t in range(len(frame)) if frame[t] in bframes[i]}
            reads += math.ceil(len(segments) / blk)
    return reads


@pytest.mark.parametrize("g", _geometries(12), ids=lambda g: g.describe().replace(" ", ""))
@pytest.mark.parametrize("kind,own", KINDS)
def test_exact_pairs_are_the_oracles_exact_logits_and_cost_adds_the_pooled_reads(g, kind, own):
    for block in (64, 128):
        plan = AttentionPlan(g, (DENSE, SPARSE, SPARSE, LINEAR), (0, 0, 1, 0), (0, 0, 0, 0), anchors=(0,),
                             block=block, compensation=True, linear_kind=kind, linear_own_block=own)
        n = num_blocks(g.length, block)
        pairs, cost = pair_counts(plan)
        qb = torch.arange(g.length) // block
        for h, (route, window) in enumerate(zip(plan.routes, plan.window)):
            exact = oracle_exact_logits(plan, route, window)
            block_pairs = torch.zeros(n, n, dtype=torch.bool)
            block_pairs[qb[:, None].expand_as(exact)[exact], qb[None, :].expand_as(exact)[exact]] = True
            assert pairs[h] == int(block_pairs.sum()), (block, h)
            assert cost[h] == pairs[h] + _expected_reads(plan, route), (block, h)
        assert 0.0 <= density(plan) <= 1.0


def test_a_linear_heads_density_stays_within_one_on_a_one_block_frame():
    """The case that once gave 2.0: one frame of 15 tokens in one block of 64 (own block + a pooled read)."""
    for kind, own in KINDS:
        plan = AttentionPlan(Geometry(1, 3, 5), (LINEAR,), (0,), (0,), block=64, linear_kind=kind,
                             linear_own_block=own)
        pairs, cost = pair_counts(plan)
        assert density(plan) == pairs[0] == int(own and kind == "pooled")
        assert cost[0] == pairs[0] + (1 if kind == "pooled" else 3)


def test_wan13b_linear_and_sparse_pair_costs():
    """Wan 2.1 1.3B 480p, block 128 (256 blocks): a pooled linear head computes its own block exactly and reads
    one tile of pooled segments per query block; compensation reads two tiles of pooled keys (256 / 128)."""
    g = Geometry(21, 30, 52)
    plan = AttentionPlan(g, (LINEAR, SPARSE), (0, 0), (0, 0), block=128, compensation=True)
    pairs, cost = pair_counts(plan)
    assert (pairs[0], cost[0]) == (256, 512)
    assert cost[1] - pairs[1] == 256 * 2


def test_rule_e_sparse_heads_take_extra_blocks_whole_linear_heads_only_the_extra_tokens():
    """Prefix of 5 tokens: block 0 holds them and 59 video tokens of frame 0. A query in frame 3 of a sparse head
    (window 0, no anchor frame) attends block 0 whole, so frame 0's tokens there move its output; a pooled linear
    head attends the 5 extra tokens only, so they do not (frame 0 is not its frame), while the extra tokens do."""
    torch.manual_seed(0)
    g = Geometry(6, 8, 16, prefix=5)
    plan = AttentionPlan(g, (SPARSE, LINEAR), (0, 0), (0, 0), anchors=(), block=64)
    q, k, v = (torch.randn(1, 2, g.length, 64, dtype=torch.float64) for _ in range(3))
    query = slice(5 + 3 * 128, 5 + 4 * 128)  # frame 3
    frame0_in_block0, extra = slice(5, 64), slice(0, 5)

    def moved(tokens: slice) -> list[bool]:
        k2 = k.clone()
        k2[:, :, tokens] += 3.0
        a, b = (reference_attention(q, kk, v, plan)[:, :, query] for kk in (k, k2))
        o1, o2 = (oracle_attention(q, kk, v, plan)[:, :, query] for kk in (k, k2))
        assert torch.allclose(a, o1, atol=1e-9) and torch.allclose(b, o2, atol=1e-9)
        return [not torch.allclose(a[:, h], b[:, h], atol=1e-12) for h in range(2)]

    assert moved(frame0_in_block0) == [True, False]
    assert moved(extra) == [True, True]
