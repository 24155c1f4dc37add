"""The fused Triton kernel equals the PyTorch reference: every route, mixed calls, odd L, extra tokens, layouts.

On CPU (CI) the kernel runs under TRITON_INTERPRET=1 at small shapes; the variable is set before triton is
imported, and only when no CUDA device exists. On CUDA the same cases run compiled, plus the full Wan 2.1
1.3B 480p shape and a check that schedule changes do not recompile.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from comfyui_sparseflow.kernels import configs, fused_attention  # noqa: E402
from comfyui_sparseflow.kernels.fused import compiled_variants  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.masks import topk_lut  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan, uniform_plan  # noqa: E402
from comfyui_sparseflow.sparseflow.reference import reference_attention  # noqa: E402
from helpers import assert_close_report, check_kernel_vs_reference, random_qkv, rel_error  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# (atol on elements, bound on ||out - ref|| / ||ref||): fp32 accumulation, output rounded to the input dtype
TOL = {torch.bfloat16: (3e-2, 1e-2), torch.float16: (4e-3, 2e-3)}


def _qkv(batch, heads, length, dim, dtype, seed=0, layout="bhld"):
    return random_qkv(batch, heads, length, dim, dtype, seed, layout, device=DEV)


def _check(plan, batch=1, dim=64, dtype=torch.bfloat16, layout="bhld", lut=None, seed=0, **kw):
    qkv = _qkv(batch, plan.heads, plan.geometry.length, dim, dtype, seed, layout)
    return check_kernel_vs_reference(fused_attention, reference_attention, plan, qkv, TOL[dtype], layout, lut, **kw)


# Extra tokens on both sides: L = 7 + 8*4*12 + 9 = 400 (7 blocks of 64); no extra tokens, odd L = 8*5*9 = 360
G_EXTRA = Geometry(frames=8, height=4, width=12, prefix=7, suffix=9)
G_ODD = Geometry(frames=8, height=5, width=9, prefix=0, suffix=0)


@pytest.mark.parametrize("route", [DENSE, SPARSE, LINEAR], ids=["dense", "sparse", "linear"])
def test_each_route_matches_reference_with_extra_tokens(route):
    _check(uniform_plan(G_EXTRA, 2, route=route, window=1, block=64), batch=1)


def test_mixed_routes_in_one_call_match_reference_at_odd_length_and_batch_2():
    plan = AttentionPlan(G_ODD, (SPARSE, DENSE, LINEAR), (0, 0, 0), (0, 0, 0), anchors=(0,), block=64)
    _check(plan, batch=2)


def test_topk_and_compensation_match_reference_with_given_and_computed_lut():
    plan = AttentionPlan(G_ODD, (SPARSE, SPARSE, DENSE), (0, 1, 0), (1, 1, 0), anchors=(0,), compensation=True,
                         block=64)
    q, k, _ = _qkv(2, 3, G_ODD.length, 64, torch.bfloat16, seed=3)
    _check(plan, batch=2, seed=3)  # LUT computed inside both
    _check(plan, batch=2, seed=3, lut=topk_lut(q.float(), k.float(), plan))


def test_linear_feature_kind_and_no_own_block_match_reference():
    _check(uniform_plan(G_EXTRA, 2, route=LINEAR, linear_kind="feature", block=64))
    _check(uniform_plan(G_ODD, 1, route=LINEAR, linear_own_block=False, block=64), batch=2)


def test_comfy_layout_head_dim_128_block_128_fp16_matches_reference():
    g = Geometry(frames=3, height=6, width=11, prefix=5, suffix=0)  # L = 203
    plan = AttentionPlan(g, (SPARSE, LINEAR), (0, 0), (1, 0), anchors=(0, 2), compensation=True, block=128)
    _check(plan, batch=2, dim=128, dtype=torch.float16, layout="blhd")


def test_wide_window_sparse_head_equals_dense_head():
    plan = uniform_plan(G_ODD, 1, route=SPARSE, window=G_ODD.frames - 1, block=64)
    q, k, v = _qkv(1, 1, G_ODD.length, 64, torch.float16, seed=5)
    sparse = fused_attention(q, k, v, plan)
    dense = fused_attention(q, k, v, plan.with_routes((DENSE,)))
    assert_close_report(sparse, dense, atol=0.0)


@pytest.mark.parametrize("descriptors", [False, True], ids=["pointer_loads", "tensor_descriptors"])
def test_both_kv_load_paths_match_reference(descriptors):
    """K/V through pointers (every tier) or tensor descriptors (Hopper tier) on a mixed call with a partial last
    block, top-k and compensation; under the interpreter the descriptor path is forced on, so its indexing is
    checked on CPU too."""
    if descriptors and not configs.INTERPRET and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need compute capability 9.0+")
    plan = AttentionPlan(G_EXTRA, (SPARSE, DENSE, SPARSE, LINEAR), (0, 0, 1, 0), (2, 0, 0, 0), anchors=(0, 5),
                         compensation=True, block=64)
    cfg = None if configs.INTERPRET else (64, 64, 4, 2)
    _check(plan, batch=2, seed=11, _descriptors=descriptors, _config=cfg)


@pytest.mark.parametrize("kind", ["sparse_only", "linear_dense", "topk_no_comp"])
def test_each_call_kind_compiles_out_paths_it_does_not_take(kind):
    """The LUT / compensation / linear code is compiled per call kind: each combination equals the reference."""
    routes, topk, comp = {"sparse_only": ((SPARSE, SPARSE), (0, 0), False),
                          "linear_dense": ((LINEAR, DENSE), (0, 0), True),
                          "topk_no_comp": ((SPARSE, DENSE), (2, 0), False)}[kind]
    plan = AttentionPlan(G_EXTRA, routes, (1, 0), topk, anchors=(0,), compensation=comp, block=64)
    cfg = None if configs.INTERPRET else (64, 64, 4, 2)
    _check(plan, batch=2, seed=12, _config=cfg)


def test_unknown_forced_tier_raises_value_error(monkeypatch):
    monkeypatch.setenv(configs.TIER_ENV, "fastest")
    with pytest.raises(ValueError, match=configs.TIER_ENV):
        configs.tier_for(configs.DeviceLimits((8, 9), 101376))


def _random_case(seed):
    rng = random.Random(seed)
    frames = rng.choice([3, 5, 8])
    g = Geometry(frames, rng.randint(2, 5), rng.randint(3, 12), prefix=rng.choice([0, 0, 4, 70]),
                 suffix=rng.choice([0, 7, 66]))
    heads = rng.randint(1, 3)
    plan = AttentionPlan(
        g, tuple(rng.choice([0, 1, 1, 2]) for _ in range(heads)), tuple(rng.choice([0, 1, 2]) for _ in range(heads)),
        tuple(rng.choice([0, 0, 1, 3]) for _ in range(heads)), anchors=rng.choice([(0,), (), (0, 2), (3, 1)]),
        compensation=rng.random() < 0.5, linear_kind=rng.choice(["pooled", "pooled", "feature"]),
        linear_own_block=rng.random() < 0.7, block=64, scale=rng.choice([None, 0.05]))
    return plan, rng.choice([1, 2])


@pytest.mark.parametrize("seed", range(6), ids=[f"case{s}" for s in range(6)])
def test_random_plans_match_reference(seed):
    plan, batch = _random_case(seed)
    _check(plan, batch=batch, seed=seed)


def test_bad_inputs_raise_value_error():
    plan = uniform_plan(G_ODD, 1, block=64)
    q, k, v = (torch.randn(1, 1, G_ODD.length, 64, device=DEV) for _ in range(3))
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        fused_attention(q, k, v, plan)
    with pytest.raises(ValueError, match="head dim"):
        fused_attention(*(torch.randn(1, 1, G_ODD.length, 32, device=DEV, dtype=torch.float16),) * 3, plan)
    many = AttentionPlan(G_ODD, (SPARSE,), (0,), (0,), anchors=(0, 1, 2, 3, 4), block=64)
    with pytest.raises(ValueError, match="anchor"):
        fused_attention(q.half(), k.half(), v.half(), many)


# -- GPU only ----------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="triton does not run compiled on cpu "
                                "(the cases above run under TRITON_INTERPRET=1 instead)")
WAN13B = Geometry(frames=21, height=30, width=52)  # 832x480, 81 frames: L = 32760


@needs_cuda
@pytest.mark.parametrize("batch", [1, 2], ids=["wan13b_480p_b1", "wan13b_480p_b2"])
def test_full_wan13b_shape_matches_reference(batch):
    """Mixed routes at the real shape; bound: ||out - ref|| / ||ref|| < 1e-2 (bf16 in and out)."""
    routes = (SPARSE, SPARSE, SPARSE, SPARSE, DENSE, LINEAR, SPARSE, SPARSE, DENSE, LINEAR, SPARSE, SPARSE)
    window = (0, 1, 2, 1, 0, 0, 0, 1, 0, 0, 2, 0)
    topk = (0, 0, 0, 4, 0, 0, 2, 0, 0, 0, 0, 8)
    plan = AttentionPlan(WAN13B, routes, window, topk, anchors=(0,), compensation=True, block=128)
    q, k, v = _qkv(batch, 12, WAN13B.length, 128, torch.bfloat16, seed=7, layout="blhd")
    out = fused_attention(q, k, v, plan, heads=12)
    ref = reference_attention(q, k, v, plan, heads=12)
    err = rel_error(out, ref)
    tier = configs.tier_for(configs.device_limits(q.device)).name
    print(f"\nfull Wan 1.3B shape, B={batch}, tier {tier}: rel. error {err:.2e} "
          f"(bound 1e-2)")
    assert torch.isfinite(out).all()
    assert err < 1e-2, f"rel error {err:.2e}"


@needs_cuda
def test_schedule_changes_do_not_recompile():
    g = Geometry(frames=6, height=16, width=20, prefix=0)
    q, k, v = _qkv(1, 4, g.length, 128, torch.bfloat16, seed=9)
    first = AttentionPlan(g, (SPARSE, SPARSE, DENSE, LINEAR), (0, 1, 0, 0), (1, 0, 0, 0), block=128)
    fused_attention(q, k, v, first)
    before = compiled_variants()
    for window, topk, routes in (((2, 0, 1, 0), (3, 2, 0, 0), (SPARSE, SPARSE, SPARSE, LINEAR)),
                                 ((1, 1, 1, 1), (0, 5, 0, 0), (DENSE, SPARSE, LINEAR, SPARSE))):
        plan = AttentionPlan(g, routes, window, topk, block=128)
        out = fused_attention(q, k, v, plan)
        assert rel_error(out, reference_attention(q, k, v, plan)) < 1e-2
    assert compiled_variants() == before, f"recompiled: {before} -> {compiled_variants()} variants"
