"""The PyTorch reference equals the materialized masked softmax of the spec (tests/oracle.py)."""

import random

import pytest
import torch
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import AttentionPlan, uniform_plan
from comfyui_sparseflow.sparseflow.reference import dense_attention, reference_attention
from helpers import assert_close_report
from oracle import oracle_attention


def _case(seed):
    rng = random.Random(seed)
    frames = rng.choice([1, 1, 2, 3, 4, 6])
    g = Geometry(frames, rng.randint(1, 8), rng.randint(1, 12), prefix=rng.choice([0, 0, 4, 64, 70]),
                 suffix=rng.choice([0, 0, 7, 66]))
    heads = rng.randint(1, 3)
    plan = AttentionPlan(
        g, tuple(rng.choice([0, 1, 1, 2]) for _ in range(heads)),
        tuple(rng.choice([0, 1, 2, frames]) for _ in range(heads)),
        tuple(rng.choice([0, 0, 1, 3]) for _ in range(heads)),
        anchors=rng.choice([(0,), (), (0, 2)]), compensation=rng.random() < 0.5,
        linear_kind=rng.choice(["pooled", "feature"]), linear_own_block=rng.random() < 0.7,
        block=rng.choice([64, 64, 128]), scale=rng.choice([None, None, 0.05]))
    return plan, rng.choice([1, 2]), rng.choice([64, 128])


CASES = [_case(s) for s in range(36)]


@pytest.mark.parametrize("plan,batch,dim", CASES, ids=[f"case{s}" for s in range(36)])
def test_reference_equals_materialized_masked_softmax(plan, batch, dim):
    torch.manual_seed(1)
    q, k, v = (torch.randn(batch, plan.heads, plan.geometry.length, dim) for _ in range(3))
    out = reference_attention(q, k, v, plan)
    assert out.dtype == torch.float32
    assert_close_report(out, oracle_attention(q, k, v, plan), atol=1e-5)


def test_cases_cover_every_route_and_option():
    seen = set()
    for plan, batch, dim in CASES:
        seen |= {f"route{r}" for r in plan.routes}
        seen |= {f"T{plan.geometry.frames}" if plan.geometry.frames == 1 else "T>1", f"B{batch}", f"D{dim}",
                 plan.linear_kind, f"comp{plan.compensation}", f"own{plan.linear_own_block}", f"block{plan.block}"}
        if plan.geometry.prefix or plan.geometry.suffix:
            seen.add("extra")
        if any(t for r, t in zip(plan.routes, plan.topk) if r == 1):
            seen.add("topk")
        if any(w >= plan.geometry.frames for r, w in zip(plan.routes, plan.window) if r == 1):
            seen.add("window>=T")
        if plan.geometry.length % plan.block or plan.geometry.tokens_per_frame % plan.block:
            seen.add("unaligned")
    need = {"route0", "route1", "route2", "T1", "T>1", "B1", "B2", "D64", "D128", "pooled", "feature", "compTrue",
            "compFalse", "ownTrue", "ownFalse", "block64", "block128", "extra", "topk", "window>=T", "unaligned"}
    assert need <= seen, need - seen


@pytest.mark.parametrize("compensation", [False, True])
def test_window_at_least_frames_equals_dense(compensation):
    torch.manual_seed(2)
    g = Geometry(5, 6, 11, prefix=9, suffix=4)
    q, k, v = (torch.randn(2, 2, g.length, 64, dtype=torch.float64) for _ in range(3))
    plan = uniform_plan(g, 2, window=4, compensation=compensation, block=64)
    dense = dense_attention(q, k, v)
    assert_close_report(reference_attention(q, k, v, plan), dense, atol=1e-12)


def test_comfy_layout_equals_bhld_layout():
    torch.manual_seed(3)
    g = Geometry(3, 5, 7, suffix=6)
    plan = AttentionPlan(g, (0, 1, 2), (1, 1, 1), (0, 1, 0), compensation=True, block=64)
    q, k, v = (torch.randn(2, 3, g.length, 64) for _ in range(3))
    flat = [t.transpose(1, 2).reshape(2, g.length, 3 * 64) for t in (q, k, v)]
    out_flat = reference_attention(*flat, plan, heads=3)
    assert out_flat.shape == (2, g.length, 192)
    ref = reference_attention(q, k, v, plan).transpose(1, 2).reshape(2, g.length, 192)
    assert_close_report(out_flat, ref, atol=1e-6)


def test_bf16_input_returns_bf16_close_to_fp32():
    torch.manual_seed(4)
    g = Geometry(3, 4, 8)
    plan = uniform_plan(g, 2, window=0, block=64, compensation=True)
    q, k, v = (torch.randn(1, 2, g.length, 128) for _ in range(3))
    out = reference_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), plan)
    assert out.dtype == torch.bfloat16
    assert_close_report(out.float(), reference_attention(q, k, v, plan), atol=3e-2)


def test_pooled_linear_is_exact_when_segment_keys_are_equal():
    """Spec 5.3: with equal keys inside each segment, pooled equals exact attention within the frame."""
    torch.manual_seed(5)
    g = Geometry(3, 4, 20)  # F = 80: segments (frame, 64-block) of sizes 64/16/48/32/...
    plan = uniform_plan(g, 1, route=2, block=64, linear_own_block=False)
    from comfyui_sparseflow.sparseflow.reference import segment_table
    seg = segment_table(g, 64).seg_of_token
    kseg = torch.randn(1, 1, int(seg.max()) + 1, 64, dtype=torch.float64)
    k = kseg[:, :, seg]
    q, v = (torch.randn(1, 1, g.length, 64, dtype=torch.float64) for _ in range(2))
    out = reference_attention(q, k, v, plan)
    f = g.tokens_per_frame
    for t in range(g.frames):
        sl = slice(t * f, (t + 1) * f)
        assert_close_report(out[:, :, sl], dense_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl]), atol=1e-12)


BAD = [
    ("rank", lambda q: (q[0, 0], q[0, 0], q[0, 0]), {}, "rank 4"),
    ("heads mismatch", lambda q: (q, q, q), {"heads": 3}, "heads=3"),
    ("k shape", lambda q: (q, q[:, :, :-1], q), {}, "k shape"),
    ("dtype", lambda q: (q, q.double(), q), {}, "k dtype"),
    ("head dim", lambda q: (q[..., :32], q[..., :32], q[..., :32]), {}, "head dim must be one of"),
    ("geometry", lambda q: (q[:, :, :-1], q[:, :, :-1], q[:, :, :-1]), {}, "geometry"),
    ("flat no heads", lambda q: (q.flatten(2), q.flatten(2), q.flatten(2)), {}, "heads must be given"),
    ("int", lambda q: (q.int(), q.int(), q.int()), {}, "dtype must be"),
]


@pytest.mark.parametrize("name,make,kw,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_operator_input_raises_value_error_naming_argument(name, make, kw, msg):
    g = Geometry(2, 3, 4)
    plan = uniform_plan(g, 2, block=64)
    q = torch.randn(1, 2, g.length, 64)
    with pytest.raises(ValueError, match=msg):
        reference_attention(*make(q), plan, **kw)


@pytest.mark.parametrize("kwargs,msg", [({"routes": (0, 5)}, "routes\\[1\\]"), ({"block": 32}, "block must be"),
                                        ({"window": (1, -1)}, "window\\[1\\]"), ({"linear_kind": "x"}, "linear_kind"),
                                        ({"topk": (1,)}, "topk has 1 entries")])
def test_bad_plan_raises_value_error_naming_field(kwargs, msg):
    args = {"geometry": Geometry(2, 3, 4), "routes": (0, 1), "window": (1, 1), "topk": (0, 0), **kwargs}
    with pytest.raises(ValueError, match=msg):
        AttentionPlan(**args)
