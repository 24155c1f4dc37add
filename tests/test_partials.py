"""The reference's log-sum-exp per query row (oracle) and the merge of partial results (sparseflow/partials.py)."""

import pytest
import torch
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.partials import PartialAttention, merge_partials
from comfyui_sparseflow.sparseflow.plan import AttentionPlan
from comfyui_sparseflow.sparseflow.reference import reference_attention
from helpers import assert_close_report
from oracle import oracle_attention_lse
from test_reference import CASES


@pytest.mark.parametrize("case", range(0, 36, 3), ids=[f"case{s}" for s in range(0, 36, 3)])
def test_reference_lse_equals_materialized_lse(case):
    plan, batch, dim = CASES[case]
    torch.manual_seed(1)
    q, k, v = (torch.randn(batch, plan.heads, plan.geometry.length, dim) for _ in range(3))
    res = reference_attention(q, k, v, plan, return_lse=True)
    want_out, want_lse = oracle_attention_lse(q, k, v, plan)
    assert res.lse.dtype == torch.float32 and tuple(res.lse.shape) == tuple(q.shape[:3])
    assert_close_report(res.out, want_out, atol=1e-5, what="out")
    assert_close_report(res.lse, want_lse, atol=1e-4, rtol=1e-5, what="lse")
    assert torch.equal(res.out, reference_attention(q, k, v, plan)), "return_lse changed the output"


def test_lse_covers_every_route():
    routes = {(r, p.linear_kind if r == 2 else "", p.compensation if r == 1 else None)
              for c in range(0, 36, 3) for p in [CASES[c][0]] for r in p.routes}
    assert {0, 1, 2} <= {r for r, _, _ in routes}
    assert {"pooled", "feature"} <= {kind for r, kind, _ in routes if r == 2}, routes


def test_lse_with_heads_layout_is_bhl():
    plan = AttentionPlan(Geometry(2, 4, 8), (0, 1, 2), (1, 1, 1), (0, 2, 0), block=64, compensation=True)
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, plan.geometry.length, 3 * 64) for _ in range(3))
    res = reference_attention(q, k, v, plan, heads=3, return_lse=True)
    assert tuple(res.out.shape) == (1, 3, plan.geometry.length, 64) and tuple(res.lse.shape) == (1, 3, 64)
    flat = reference_attention(q, k, v, plan, heads=3)
    assert torch.equal(res.out.transpose(1, 2).reshape(flat.shape), flat)


def _dense_part(q, k, v, keys):
    s = (q @ k[:, :, keys].transpose(-1, -2)) * q.shape[-1] ** -0.5
    return PartialAttention(torch.softmax(s, -1) @ v[:, :, keys], torch.logsumexp(s, -1))


@pytest.mark.parametrize("split", [1, 37, 64, 95])
def test_two_key_ranges_merge_to_the_whole(split):
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 96, 64, dtype=torch.float64) for _ in range(3))
    whole = _dense_part(q, k, v, torch.arange(96))
    merged = merge_partials(_dense_part(q, k, v, torch.arange(split)), _dense_part(q, k, v, torch.arange(split, 96)))
    assert_close_report(merged.out, whole.out, atol=1e-12, what="out")
    assert_close_report(merged.lse, whole.lse, atol=1e-12, what="lse")


def test_merge_of_three_interleaved_key_sets_is_order_free():
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 40, 64, dtype=torch.float64) for _ in range(3))
    parts = [_dense_part(q, k, v, torch.arange(r, 40, 3)) for r in range(3)]
    whole = _dense_part(q, k, v, torch.arange(40))
    for order in ((0, 1, 2), (2, 0, 1)):
        merged = merge_partials(*(parts[i] for i in order))
        assert_close_report(merged.out, whole.out, atol=1e-12, what=f"out {order}")


def test_empty_rows_contribute_nothing():
    torch.manual_seed(6)
    out = torch.randn(1, 1, 4, 64)
    a = PartialAttention(out, torch.zeros(1, 1, 4))
    empty = PartialAttention(torch.full_like(out, float("nan")), torch.full((1, 1, 4), float("-inf")))
    merged = merge_partials(a, empty)
    assert torch.equal(merged.out, out) and torch.equal(merged.lse, a.lse)


def test_merge_rejects_mismatched_shapes():
    a = PartialAttention(torch.zeros(1, 1, 4, 64), torch.zeros(1, 1, 4))
    b = PartialAttention(torch.zeros(1, 1, 5, 64), torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="part 1 has out"):
        merge_partials(a, b)
    with pytest.raises(ValueError, match="lse"):
        PartialAttention(torch.zeros(1, 1, 4, 64), torch.zeros(1, 4))
