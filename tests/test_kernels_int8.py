"""The fused kernel's int8-qk path (spec §8) equals the quantized PyTorch reference: its quantize pre-pass bit for bit,
then every route, top-k, compensation, extra tokens, both spec blocks and both K/V load paths (tests/test_kernels.py's
cases at precision int8-qk). On CPU (CI) under TRITON_INTERPRET=1 at small shapes; on CUDA compiled, plus the Wan
2.1 1.3B 480p shape."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from comfyui_sparseflow.kernels import configs, fused_attention  # noqa: E402
from comfyui_sparseflow.kernels.quant import PREPASS_LAUNCH, STATS_SPAN, PrepassLaunch, k_mean  # noqa: E402
from comfyui_sparseflow.kernels.quant import quantize_qk as quantize_qk_triton  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.inputs import to_bhld  # noqa: E402
from comfyui_sparseflow.sparseflow.masks import topk_lut  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, INT8_QK, LINEAR, SPARSE, AttentionPlan  # noqa: E402
from comfyui_sparseflow.sparseflow.quantize import quantize_qk  # noqa: E402
from comfyui_sparseflow.sparseflow.reference import reference_attention  # noqa: E402
from helpers import assert_mean_close, check_kernel_vs_reference, random_qkv, rel_error  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# the fp16 path's tolerances (tests/test_kernels.py): int8 q·k is exact in both, the rest is the same fp32 math
TOL = {torch.bfloat16: (3e-2, 1e-2), torch.float16: (4e-3, 2e-3)}
G_EXTRA = Geometry(frames=8, height=4, width=12, prefix=7, suffix=9)  # L = 400: extra tokens on both sides
G_ODD = Geometry(frames=8, height=5, width=9, prefix=0, suffix=0)  # L = 360, not a multiple of 64


def _qkv(batch, heads, length, dim, dtype, seed=0, layout="bhld", k_offset=2.0):
    """Random q, k, v; k gets a per-channel offset shared by all tokens (as DiT keys have), which smoothing removes."""
    return random_qkv(batch, heads, length, dim, dtype, seed, layout, k_offset=k_offset, device=DEV)


def _plan(g, routes, window, topk, **kw):
    return AttentionPlan(g, routes, window, topk, precision=INT8_QK, **kw)


def _check(plan, batch=1, dim=64, dtype=torch.bfloat16, layout="bhld", lut=None, seed=0, **kw):
    qkv = _qkv(batch, plan.heads, plan.geometry.length, dim, dtype, seed, layout)
    return check_kernel_vs_reference(fused_attention, reference_attention, plan, qkv, TOL[dtype], layout, lut, **kw)


@pytest.mark.parametrize("block", [64, 128])
def test_quantize_prepass_equals_the_reference_quantization_bit_for_bit(block):
    q, k, _ = _qkv(2, 3, G_ODD.length, 64, torch.bfloat16, seed=1, layout="blhd")
    qb, kb = to_bhld(q, 3), to_bhld(k, 3)  # strided (B, H, L, D) views, as the launcher passes them
    got = quantize_qk_triton(qb, kb, block)
    assert_mean_close(got.k_mean, kb)
    want = quantize_qk(qb, kb, block, k_mean=got.k_mean)  # the pre-pass's mean sums in another order
    for name in ("q8", "k8", "q_scale", "k_scale"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


# the shipped shapes and other k-sum splits and warps (bench/sweep_quant_passes.py's); the quantize pass at 4 warps
LAUNCHES = [PREPASS_LAUNCH, PrepassLaunch(sum_span=128, sum_rows=64, sum_warps=8), PrepassLaunch(sum_span=1024),
            PrepassLaunch(warps=4)]


@pytest.mark.parametrize("launch", LAUNCHES,
                         ids=lambda s: f"sum{s.sum_span}x{s.sum_rows}w{s.sum_warps}-quant-w{s.warps}")
@pytest.mark.parametrize("block", [64, 128])
def test_every_prepass_launch_shape_quantizes_as_the_reference(block, launch):
    """Each launch shape's output is the reference quantization of its own k mean, bit for bit; the quantize pass's
    shape changes nothing (the same mean in, the same bits out as the shipped shape's)."""
    q, k, _ = _qkv(1, 2, G_ODD.length, 64, torch.bfloat16, seed=2, layout="blhd")
    qb, kb = to_bhld(q, 2), to_bhld(k, 2)
    got = quantize_qk_triton(qb, kb, block, launch)
    assert_mean_close(got.k_mean, kb)
    want = quantize_qk(qb, kb, block, k_mean=got.k_mean)
    shipped = quantize_qk_triton(qb, kb, block)
    same_sum = ((launch.sum_span, launch.sum_rows, launch.sum_warps)
                == (PREPASS_LAUNCH.sum_span, PREPASS_LAUNCH.sum_rows, PREPASS_LAUNCH.sum_warps))
    for name in ("q8", "k8", "q_scale", "k_scale"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
        if same_sum:
            assert torch.equal(getattr(got, name), getattr(shipped, name)), name


def test_prepass_launch_rejects_shapes_the_kernels_cannot_take():
    for bad in (dict(sum_span=100), dict(sum_span=64, sum_rows=128), dict(sum_warps=3), dict(warps=6)):
        with pytest.raises(ValueError, match="PrepassLaunch"):
            PrepassLaunch(**bad)


def test_k_mean_pass_gives_the_mean_of_k_across_spans():
    """Three spans of STATS_SPAN tokens, the last partial, over a strided view: k's mean as assert_mean_close bounds
    it (a token left out or counted twice fails it)."""
    _, k, _ = _qkv(2, 3, 2 * STATS_SPAN + 77, 64, torch.bfloat16, seed=5, layout="blhd")
    kb = to_bhld(k, 3)
    assert_mean_close(k_mean(kb), kb)


def test_mixed_routes_with_extra_tokens_anchors_and_windows_match_the_int8_reference():
    """Dense, sparse (window 0 and 1, anchors 0 and 5) and pooled linear heads in one call, partial last block."""
    _check(_plan(G_EXTRA, (SPARSE, DENSE, SPARSE, LINEAR), (0, 0, 1, 0), (0, 0, 0, 0), anchors=(0, 5), block=64))


def test_topk_and_compensation_match_the_int8_reference_with_given_and_computed_lut():
    plan = _plan(G_ODD, (SPARSE, SPARSE, DENSE), (0, 1, 0), (1, 1, 0), anchors=(0,), compensation=True, block=64)
    q, k, _ = _qkv(2, 3, G_ODD.length, 64, torch.bfloat16, seed=3)
    _check(plan, batch=2, seed=3)
    _check(plan, batch=2, seed=3, lut=topk_lut(q.float(), k.float(), plan))


def test_linear_feature_and_no_own_block_match_the_int8_reference():
    _check(_plan(G_EXTRA, (LINEAR, SPARSE), (0, 0), (0, 0), linear_kind="feature", block=64))
    _check(_plan(G_ODD, (LINEAR,), (0,), (0,), linear_own_block=False, block=64), batch=2)


def test_comfy_layout_head_dim_128_block_128_fp16_matches_the_int8_reference():
    g = Geometry(frames=3, height=6, width=11, prefix=5, suffix=0)  # L = 203
    plan = _plan(g, (SPARSE, LINEAR, DENSE), (0, 0, 0), (1, 0, 0), anchors=(0, 2), compensation=True, block=128)
    _check(plan, batch=2, dim=128, dtype=torch.float16, layout="blhd")


@pytest.mark.parametrize("descriptors", [False, True], ids=["pointer_loads", "tensor_descriptors"])
def test_both_kv_load_paths_read_int8_keys(descriptors):
    if descriptors and not configs.INTERPRET and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need compute capability 9.0+")
    plan = _plan(G_EXTRA, (SPARSE, DENSE, LINEAR), (1, 0, 0), (2, 0, 0), anchors=(0, 5), compensation=True, block=64)
    _check(plan, seed=11, _descriptors=descriptors, _config=None if configs.INTERPRET else (64, 64, 4, 2))


def test_int8_path_differs_from_the_fp16_path_by_the_quantization_only():
    """The kernel really runs int8: its output differs from the fp16 kernel's by more than fp16 rounding, and by about
    the quantized reference's own distance from the fp16 reference."""
    plan = _plan(G_ODD, (SPARSE, DENSE), (1, 0), (0, 0), anchors=(0,), block=64)
    q, k, v = _qkv(1, 2, G_ODD.length, 64, torch.float16, seed=5)
    int8 = fused_attention(q, k, v, plan)
    fp16 = fused_attention(q, k, v, plan.with_precision("fp16"))
    gap = rel_error(reference_attention(q, k, v, plan), reference_attention(q, k, v, plan.with_precision("fp16")))
    assert rel_error(int8, fp16) > 2e-3 and abs(rel_error(int8, fp16) - gap) < 0.25 * gap, (rel_error(int8, fp16), gap)


# -- GPU only ----------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="triton does not run compiled on cpu "
                                "(the cases above run under TRITON_INTERPRET=1 instead)")
WAN13B = Geometry(frames=21, height=30, width=52)  # 832x480, 81 frames: L = 32760


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["wan13b_480p_bf16", "wan13b_480p_fp16"])
def test_full_wan13b_shape_int8_matches_the_int8_reference(dtype):
    """Mixed routes at the real shape; bound ||out - ref|| / ||ref|| < 1e-2, as the fp16 path's GPU test."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("int8-qk needs compute capability 8.0+")
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
    print(f"\nfull Wan 1.3B shape int8-qk {dtype}, tier {tier}: rel. error vs int8 reference {err:.2e} (bound 1e-2); "
          f"int8 reference vs fp16 reference {gap:.2e}")
    assert torch.isfinite(out).all()
    assert err < 1e-2, f"rel error {err:.2e}"


@needs_cuda
@pytest.mark.parametrize("launch", LAUNCHES,
                         ids=lambda s: f"sum{s.sum_span}x{s.sum_rows}w{s.sum_warps}-quant-w{s.warps}")
@pytest.mark.parametrize("magnitude", [1.0, 1e-18, 1e-24], ids=["unit", "scales_near_2^-64", "scales_under_2^-64"])
def test_int8_prepass_equals_the_reference_bit_for_bit_at_the_wan13b_shape(magnitude, launch):
    """The int8-qk pass (one program per tensor), at each launch shape of LAUNCHES, gives torch's correctly rounded
    quotients on 50 M elements per tensor: Markstein's correction from one reciprocal per block, with bf16 inputs
    scaled down so that block scales fall near and under 2^-64, where the tile and its scale are lifted by 2^100 first
    (kernels/quant.py `_quantize_tile`); a lift that changed a quotient, or a block left to the other program, fails
    it."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("int8-qk needs compute capability 8.0+")
    q, k, _ = (x * magnitude for x in _qkv(1, 12, WAN13B.length, 128, torch.bfloat16, seed=3, layout="blhd"))
    qb, kb = to_bhld(q, 12), to_bhld(k, 12)
    got = quantize_qk_triton(qb, kb, 128, launch)
    assert_mean_close(got.k_mean, kb)
    want = quantize_qk(qb, kb, 128, k_mean=got.k_mean)
    if magnitude < 1e-20:
        assert float(want.q_scale.max()) < 2.0 ** -64, "the case must reach the lifted division"
    for name in ("q8", "k8", "q_scale", "k_scale"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.parametrize("precision", ["int8-qk", "fp16"])
def test_a_compiled_launch_failure_of_int8_qk_is_a_kernel_launch_error_and_fp16_failures_propagate(monkeypatch,
                                                                                                  precision):
    """int8-qk has not run on a GPU here yet: if its compiled launch fails, the call says so as KernelLaunchError
    (the Patch then runs ComfyUI's attention and names the reason in its summary); fp16 errors are not masked."""
    import importlib

    from comfyui_sparseflow.sparseflow.inputs import KernelLaunchError

    launch_mod = importlib.import_module("comfyui_sparseflow.kernels.launch")

    class _Failing:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("PassManager::run failed (simulated)")
            return launch

    monkeypatch.setattr(configs, "INTERPRET", False)
    monkeypatch.setattr(configs, "launch_plan", lambda kb, vb, fp8=False: (0, False))
    monkeypatch.setattr(launch_mod, "int8_device_reason", lambda q: None)
    monkeypatch.setattr(launch_mod, "_kernel", lambda: _Failing())
    plan = AttentionPlan(G_ODD, (SPARSE, DENSE), (0, 0), (0, 0), precision=precision, block=64)
    q, k, v = _qkv(1, 2, G_ODD.length, 64, torch.bfloat16)
    if precision == "int8-qk":
        with pytest.raises(KernelLaunchError, match="int8-qk kernel failed on this device.*simulated"):
            fused_attention(q, k, v, plan)
    else:
        with pytest.raises(RuntimeError, match="simulated") as info:
            fused_attention(q, k, v, plan)
        assert not isinstance(info.value, KernelLaunchError)
