"""The fused kernel's fp8 path (spec §8) equals the fp8 PyTorch reference: its e4m3 rounding and its pre-pass bit for
bit, then every route, top-k, compensation, extra tokens, both spec blocks and both K/V load paths (the int8-qk cases
of tests/test_kernels_int8.py at precision fp8). On CPU (CI) under TRITON_INTERPRET=1 at small shapes: Triton 3.8's
interpreter runs tl.float8e4nv casts and e4m3 dots, but its fp32 -> e4m3 cast does not round to nearest even, so
the kernel rounds first there (kernels/fp8.py) and the first test pins that rounding. On CUDA compiled (sm_89+),
plus the Wan 2.1 1.3B 480p shape."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from comfyui_sparseflow.kernels import configs, fused_attention  # noqa: E402
from comfyui_sparseflow.kernels.fp8 import _to_e4m3  # noqa: E402
from comfyui_sparseflow.kernels.fp8_prepass import quantize_qkv  # noqa: E402
from comfyui_sparseflow.sparseflow.fp8 import quantize_v, to_e4m3  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.inputs import to_bhld  # noqa: E402
from comfyui_sparseflow.sparseflow.masks import topk_lut  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, FP8, INT8_QK, LINEAR, SPARSE, AttentionPlan  # noqa: E402
from comfyui_sparseflow.sparseflow.quantize import quantize_qk  # noqa: E402
from comfyui_sparseflow.sparseflow.reference import reference_attention  # noqa: E402
from helpers import assert_mean_close, check_kernel_vs_reference, random_qkv, rel_error  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# the fp16 path's tolerances (tests/test_kernels.py): the e4m3 values are the reference's, the rest is fp32 math
TOL = {torch.bfloat16: (3e-2, 1e-2), torch.float16: (4e-3, 2e-3)}
G_EXTRA = Geometry(frames=8, height=4, width=12, prefix=7, suffix=9)  # L = 400: extra tokens on both sides
G_ODD = Geometry(frames=8, height=5, width=9, prefix=0, suffix=0)  # L = 360, not a multiple of 64
needs_sm89 = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                                reason="fp8 needs compute capability 8.9+")


def _qkv(batch, heads, length, dim, dtype, seed=0, layout="bhld", k_offset=2.0):
    """Random q, k, v; k gets a per-channel offset (smoothed away), v a per-channel spread of scales (outputs stay
    below 4: bf16 atol holds)."""
    return random_qkv(batch, heads, length, dim, dtype, seed, layout, k_offset=k_offset, v_spread=0.5, device=DEV)


def _plan(g, routes, window, topk, **kw):
    return AttentionPlan(g, routes, window, topk, precision=FP8, **kw)


def _check(plan, batch=1, dim=64, dtype=torch.bfloat16, layout="bhld", lut=None, seed=0, **kw):
    qkv = _qkv(batch, plan.heads, plan.geometry.length, dim, dtype, seed, layout)
    return check_kernel_vs_reference(fused_attention, reference_attention, plan, qkv, TOL[dtype], layout, lut, **kw)


@triton.jit
def _cast_kernel(X, Y, N: tl.constexpr, EXACT: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, _to_e4m3(tl.load(X + offs), EXACT).to(tl.float32))


def _rounding_cases() -> torch.Tensor:
    """Every e4m3 value, the midpoints between neighbours (ties) and one fp32 step either side, values past ±448,
    and random values over e4m3's whole range."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].unique()
    mid = (grid[1:] + grid[:-1]) / 2
    near = torch.cat([mid, torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1)])
    gen = torch.Generator().manual_seed(0)
    rand = torch.sign(torch.randn(4096, generator=gen)) * torch.exp2(torch.rand(4096, generator=gen) * 20 - 11)
    tiny = torch.tensor([-1e-4, -1e-3, -0.0009765625, -0.0, 1e-4, 0.0])  # round to -0 / +0
    return torch.cat([grid, near, torch.tensor([449.0, 464.0, 500.0, 1e4, -470.0, -1e30]), rand, tiny])


@needs_sm89
@pytest.mark.parametrize("exact", [True, False], ids=["rounded_first", "hardware_cast"])
def test_the_kernels_e4m3_cast_is_torchs_round_to_nearest_even_bit_for_bit(exact):
    """`rounded_first` is the pre-pass's cast everywhere and the P cast under the interpreter; `hardware_cast` the P
    cast on a GPU (the interpreter's own cast is not torch's rounding: that is why the first exists)."""
    if not exact and configs.INTERPRET:
        pytest.skip("the hardware cast is the GPU's; the interpreter's fp32 -> e4m3 cast rounds half up")
    x = _rounding_cases()
    n = triton.next_power_of_2(x.numel())
    xs = torch.cat([x, torch.zeros(n - x.numel())]).to(DEV)
    y = torch.empty_like(xs)
    _cast_kernel[(1,)](xs, y, N=n, EXACT=exact)
    want = to_e4m3(x)
    # bit patterns, so that -0 and +0 differ (a negative value that rounds to zero is -0 in torch's cast)
    bad = (y[: x.numel()].cpu().view(torch.int32) != want.view(torch.int32)).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} values differ, e.g. {x[bad[:5]].tolist()} -> " \
                             f"{y[bad[:5]].tolist()} (torch {want[bad[:5]].tolist()})"


@needs_sm89
@pytest.mark.parametrize("block", [64, 128])
def test_fp8_prepass_equals_the_reference_quantization_bit_for_bit(block):
    q, k, v = _qkv(2, 3, G_ODD.length, 64, torch.bfloat16, seed=1, layout="blhd")
    qb, kb, vb = to_bhld(q, 3), to_bhld(k, 3), to_bhld(v, 3)  # strided views, as the launcher passes them
    got_qk, got_v = quantize_qkv(qb, kb, vb, block)
    assert_mean_close(got_qk.k_mean, kb)
    want_qk, want_v = quantize_qk(qb, kb, block, k_mean=got_qk.k_mean), quantize_v(vb)
    for name in ("q8", "k8", "q_scale", "k_scale"):
        assert torch.equal(getattr(got_qk, name), getattr(want_qk, name)), name
    assert torch.equal(got_v.scale, want_v.scale)
    assert torch.equal(got_v.v8.view(torch.uint8), want_v.v8.view(torch.uint8))


@needs_sm89
def test_mixed_routes_with_extra_tokens_anchors_and_windows_match_the_fp8_reference():
    """Dense, sparse (window 0 and 1, anchors 0 and 5) and pooled linear heads in one call, partial last block."""
    _check(_plan(G_EXTRA, (SPARSE, DENSE, SPARSE, LINEAR), (0, 0, 1, 0), (0, 0, 0, 0), anchors=(0, 5), block=64))


@needs_sm89
def test_topk_and_compensation_match_the_fp8_reference_with_given_and_computed_lut():
    plan = _plan(G_ODD, (SPARSE, SPARSE, DENSE), (0, 1, 0), (1, 1, 0), anchors=(0,), compensation=True, block=64)
    q, k, _ = _qkv(2, 3, G_ODD.length, 64, torch.bfloat16, seed=3)
    _check(plan, batch=2, seed=3)
    _check(plan, batch=2, seed=3, lut=topk_lut(q.float(), k.float(), plan))


@needs_sm89
def test_linear_feature_and_no_own_block_match_the_fp8_reference():
    _check(_plan(G_EXTRA, (LINEAR, SPARSE), (0, 0), (0, 0), linear_kind="feature", block=64))
    _check(_plan(G_ODD, (LINEAR,), (0,), (0,), linear_own_block=False, block=64), batch=2)


@needs_sm89
def test_comfy_layout_head_dim_128_block_128_fp16_matches_the_fp8_reference():
    g = Geometry(frames=3, height=6, width=11, prefix=5, suffix=0)  # L = 203
    plan = _plan(g, (SPARSE, LINEAR, DENSE), (0, 0, 0), (1, 0, 0), anchors=(0, 2), compensation=True, block=128)
    _check(plan, batch=2, dim=128, dtype=torch.float16, layout="blhd")


@needs_sm89
@pytest.mark.parametrize("descriptors", [False, True], ids=["pointer_loads", "tensor_descriptors"])
def test_both_kv_load_paths_read_e4m3_values(descriptors):
    if descriptors and not configs.INTERPRET and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need compute capability 9.0+")
    plan = _plan(G_EXTRA, (SPARSE, DENSE, LINEAR), (1, 0, 0), (2, 0, 0), anchors=(0, 5), compensation=True, block=64)
    _check(plan, seed=11, _descriptors=descriptors, _config=None if configs.INTERPRET else (64, 64, 4, 2))


@needs_sm89
def test_e4m3_p_does_not_depend_on_the_key_tile_size():
    """The running max moves by whole powers of two, so 32- and 64-key tiles round P alike: the two outputs agree to
    fp16 output rounding, far closer than the fp8 path's own distance from int8-qk."""
    plan = _plan(G_ODD, (SPARSE, DENSE), (1, 0), (0, 0), anchors=(0,), block=64)
    q, k, v = _qkv(1, 2, G_ODD.length, 64, torch.float16, seed=4)
    a = fused_attention(q, k, v, plan, _config=(32, 32, 4, 1))
    b = fused_attention(q, k, v, plan, _config=(64, 64, 4, 1))
    gap = rel_error(reference_attention(q, k, v, plan), reference_attention(q, k, v, plan.with_precision(INT8_QK)))
    assert rel_error(a, b) < 1e-3 < 0.5 * gap, (rel_error(a, b), gap)


@needs_sm89
def test_fp8_path_differs_from_the_int8_path_by_the_pv_quantization_only():
    """The kernel really runs P·V in e4m3: its output differs from the int8-qk kernel's by more than fp16 rounding,
    and by about the fp8 reference's own distance from the int8-qk reference."""
    plan = _plan(G_ODD, (SPARSE, DENSE), (1, 0), (0, 0), anchors=(0,), block=64)
    q, k, v = _qkv(1, 2, G_ODD.length, 64, torch.float16, seed=5)
    fp8 = fused_attention(q, k, v, plan)
    int8 = fused_attention(q, k, v, plan.with_precision(INT8_QK))
    gap = rel_error(reference_attention(q, k, v, plan), reference_attention(q, k, v, plan.with_precision(INT8_QK)))
    assert rel_error(fp8, int8) > 2e-3 and abs(rel_error(fp8, int8) - gap) < 0.1 * gap, (rel_error(fp8, int8), gap)


# -- GPU only ----------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="triton does not run compiled on cpu "
                                "(the cases above run under TRITON_INTERPRET=1 instead)")
WAN13B = Geometry(frames=21, height=30, width=52)  # 832x480, 81 frames: L = 32760


@needs_cuda
@needs_sm89
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["wan13b_480p_bf16", "wan13b_480p_fp16"])
def test_full_wan13b_shape_fp8_matches_the_fp8_reference(dtype):
    """Mixed routes at the real shape; bound ||out - ref|| / ||ref|| < 1e-2, as the fp16 path's GPU test (the GPU's
    exp2 is approximate, so a few P values round to the neighbouring e4m3 value)."""
    routes = (SPARSE, SPARSE, SPARSE, SPARSE, DENSE, LINEAR, SPARSE, SPARSE, DENSE, LINEAR, SPARSE, SPARSE)
    window = (0, 1, 2, 1, 0, 0, 0, 1, 0, 0, 2, 0)
    topk = (0, 0, 0, 4, 0, 0, 2, 0, 0, 0, 0, 8)
    plan = _plan(WAN13B, routes, window, topk, anchors=(0,), compensation=True, block=128)
    q, k, v = _qkv(1, 12, WAN13B.length, 128, dtype, seed=7, layout="blhd")
    out = fused_attention(q, k, v, plan, heads=12)
    ref = reference_attention(q, k, v, plan, heads=12)
    fp16_ref = reference_attention(q, k, v, plan.with_precision("fp16"), heads=12)
    err, gap = rel_error(out, ref), rel_error(ref, fp16_ref)
    tier = configs.tier_for(configs.device_limits(q.device)).name
    print(f"\nfull Wan 1.3B shape fp8 {dtype}, tier {tier}: rel. error vs fp8 reference {err:.2e} (bound 1e-2); "
          f"fp8 reference vs fp16 reference {gap:.2e}")
    assert torch.isfinite(out).all()
    assert err < 1e-2, f"rel error {err:.2e}"


@needs_cuda
@needs_sm89
@pytest.mark.parametrize("magnitude", [1.0, 1e-18, 1e-24], ids=["unit", "scales_near_2^-64", "scales_under_2^-64"])
def test_fp8_prepass_equals_the_reference_bit_for_bit_at_the_wan13b_shape(magnitude):
    """The pre-pass's divisions give torch's correctly rounded quotients on 50 M elements per tensor: q and k through
    one reciprocal per block and Markstein's correction per element (kernels/quant.py `_div_rn`), v the same per
    channel and the hardware e4m3 cast; with bf16 inputs scaled down so that scales fall near and under 2^-64 (where
    q and k divide with `div_rn` and v's channels are lifted by 2^100 first)."""
    q, k, v = (x * magnitude for x in _qkv(1, 12, WAN13B.length, 128, torch.bfloat16, seed=3, layout="blhd"))
    qb, kb, vb = to_bhld(q, 12), to_bhld(k, 12), to_bhld(v, 12)
    got_qk, got_v = quantize_qkv(qb, kb, vb, 128)
    assert_mean_close(got_qk.k_mean, kb)
    want_qk, want_v = quantize_qk(qb, kb, 128, k_mean=got_qk.k_mean), quantize_v(vb)
    for name in ("q8", "k8", "q_scale", "k_scale"):
        assert torch.equal(getattr(got_qk, name), getattr(want_qk, name)), name
    assert torch.equal(got_v.v8.view(torch.uint8), want_v.v8.view(torch.uint8))
