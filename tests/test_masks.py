"""Block masks: ranges agree with the spec's brute-force definition, densities, top-k selection."""

import random

import pytest
import torch
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.masks import (
    density,
    key_block_ranges,
    merge_ranges,
    num_blocks,
    pair_counts,
    structural_block_mask,
    topk_lut,
)
from comfyui_sparseflow.sparseflow.plan import AttentionPlan, uniform_plan
from oracle import oracle_block_mask, oracle_topk


def _random_geometries(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(Geometry(rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 11),
                            prefix=rng.choice([0, 0, 5, 64, 70]), suffix=rng.choice([0, 0, 3, 65])))
    return out


@pytest.mark.parametrize("g", _random_geometries(40), ids=lambda g: g.describe().replace(" ", ""))
def test_key_block_ranges_equal_spec_brute_force(g):
    for block in (64, 128):
        for window in (0, 1, 3):
            for anchors in ((0,), (), (1, 4)):
                plan = AttentionPlan(g, (1,), (window,), (0,), anchors=anchors, block=block)
                expect = oracle_block_mask(plan, window)
                got = structural_block_mask(g, block, window, plan.live_anchors)
                assert torch.equal(got, expect), (block, window, anchors)


def test_ranges_are_merged_sorted_and_disjoint():
    g = Geometry(8, 5, 9, prefix=70, suffix=65)
    for i in range(num_blocks(g.length, 64)):
        r = key_block_ranges(g, 64, i, 1, (0, 5))
        assert all(s < e for s, e in r)
        assert all(r[k][1] < r[k + 1][0] for k in range(len(r) - 1))
    assert merge_ranges([(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]) == [(0, 3), (5, 9)]


def test_window_at_least_frames_covers_everything():
    g = Geometry(4, 6, 30, prefix=3)
    assert structural_block_mask(g, 64, 3, (0,)).all()
    assert not structural_block_mask(g, 64, 2, (0,)).all()


def test_wan13b_480p_density_window1_anchor0_matches_hand_count():
    """Wan 2.1 1.3B 832x480x81: T=21 frames of 30x52=1560 tokens, L=32760, 256 blocks of 128 (the last 120).

    Hand count (token-level brute force of spec 5.2, tests/oracle.py): 12481 of 256^2 = 65536 pairs = 19.04%.
    Frame 0 is blocks 0..12 (block 12 spans frames 0-1); a query block in frames f..f' computes the blocks of
    frames f-1..f'+1 (about 3 frames = 37-38 blocks) plus those 13 anchor blocks where they are not already in.
    """
    g = Geometry(21, 30, 52)
    plan = uniform_plan(g, 1, window=1, anchors=(0,), block=128)
    pairs, _ = pair_counts(plan)
    brute = int(oracle_block_mask(plan, 1).sum())
    print(f"\nWan-2.1 1.3B 480p x 81f, window 1 + anchor 0, block 128: {pairs[0]} / 65536 pairs, "
          f"density {density(plan):.4f}")
    assert pairs[0] == brute == 12481
    assert density(plan) == pytest.approx(12481 / 65536)


def test_density_of_mixed_heads_is_the_mean():
    g = Geometry(6, 8, 16)
    plan = AttentionPlan(g, (0, 1), (0, 0), (0, 0), block=64)
    n = num_blocks(g.length, 64)
    pairs, _ = pair_counts(plan)
    assert pairs[0] == n * n
    assert density(plan) == pytest.approx((n * n + pairs[1]) / (2 * n * n))


def test_topk_lut_matches_python_sorting_and_skips_structural_blocks():
    torch.manual_seed(0)
    g = Geometry(6, 4, 9, prefix=10)
    plan = AttentionPlan(g, (1, 1, 0), (0, 1, 0), (2, 3, 0), block=64)
    q, k = torch.randn(2, 3, g.length, 64, dtype=torch.float64), torch.randn(2, 3, g.length, 64, dtype=torch.float64)
    lut = topk_lut(q, k, plan)
    assert lut.shape == (2, 3, num_blocks(g.length, 64), 3)
    for h in (0, 1):
        ref = oracle_topk(q[:, h:h + 1], k[:, h:h + 1], plan, plan.window[h], plan.topk[h])
        for b in range(2):
            for i, sel in enumerate(ref[b][0]):
                row = [int(x) for x in lut[b, h, i] if x >= 0]
                assert row == sel, (b, h, i)
    assert (lut[:, 2] == -1).all()
