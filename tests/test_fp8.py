"""The fp8 P·V math (sparseflow/fp8.py, spec §8): e4m3 rounding, V's per-channel scales, P's integer offset and
scale, and the fp8 reference operator's error against the fp16 and int8-qk paths on the structured synthetic heads."""

import pytest
import torch
from comfyui_sparseflow.sparseflow import ops
from comfyui_sparseflow.sparseflow.fp8 import E4M3_MAX, fp8_device_reason, fp8_softmax_pv, quantize_v, to_e4m3
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE, FP8, FP16, INT8_QK, LINEAR, SPARSE, AttentionPlan, uniform_plan
from comfyui_sparseflow.sparseflow.reference import reference_attention
from comfyui_sparseflow.sparseflow.synthetic import structured_qkv
from helpers import rel_error

G = Geometry(frames=6, height=8, width=16, prefix=5, suffix=0)  # L = 773: a partial last block of 64 and of 128


def test_e4m3_rounding_is_nearest_even_with_subnormals_and_saturates_at_448():
    x = torch.tensor([1.0625, 1.1875, 3 * 2.0 ** -10, 2.0 ** -10, 0.6 * 2.0 ** -9, 440.0, 460.0, 1e6, -1e6, -0.3])
    want = [1.0, 1.25, 2.0 ** -8, 0.0, 2.0 ** -9, 448.0, 448.0, 448.0, -448.0, -0.3125]
    assert to_e4m3(x).tolist() == want


def test_v_scale_is_channel_amax_over_448_and_values_are_within_half_an_e4m3_step():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, 100, 8, generator=gen) * torch.exp(torch.randn(8, generator=gen))
    v[1, 2, :, 5] = 0.0  # an all-zero channel gets scale 1
    vz = quantize_v(v)
    amax = v.abs().amax(dim=2)
    assert torch.equal(vz.scale, torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax)))
    assert vz.v8.dtype == torch.float8_e4m3fn and vz.v8.float().abs().max() <= E4M3_MAX
    step = 2.0 ** (torch.floor(torch.log2((v / vz.scale[:, :, None]).abs().clamp_min(2.0 ** -6))) - 3)
    assert ((vz.dequantized() - v).abs() <= 0.5 * step * vz.scale[:, :, None] + 1e-12).all()
    assert (vz.dequantized() - v).abs().max() > 0  # really quantized


def test_p_rounding_does_not_depend_on_the_integer_offset_of_the_running_max():
    """Logits shifted by an integer (what an earlier, smaller running max does to a key tile) round to the same
    weights times a power of two: the kernel's tile order cannot change the result."""
    gen = torch.Generator().manual_seed(1)
    s, v = torch.randn(4, 200, generator=gen) * 3, torch.randn(200, 16, generator=gen)
    out = fp8_softmax_pv([s], [v], [], [])
    for shift in (1.0, 5.0, 11.0):  # logits in log2 units: ln(2) * shift moves them by `shift` binades
        assert torch.allclose(fp8_softmax_pv([s + shift * torch.log(torch.tensor(2.0))], [v], [], []), out,
                              rtol=1e-6, atol=1e-7)
    assert rel_error(out, torch.softmax(s, -1) @ v) > 1e-3  # and P really is rounded


def test_pooled_keys_join_with_unrounded_weights():
    gen = torch.Generator().manual_seed(2)
    se, sp = torch.randn(3, 50, generator=gen), torch.randn(3, 7, generator=gen) + 1.0
    ve, vp = torch.randn(50, 4, generator=gen), torch.randn(7, 4, generator=gen)
    x2 = torch.log(torch.tensor(2.0))
    m = torch.ceil(se.amax(-1, keepdim=True) / x2) - 8  # the definition's offset, log2 units
    we, wp = torch.exp2(se / x2 - m), torch.exp2(sp / x2 - m)
    want = (to_e4m3(we) @ ve + wp @ vp) / (we.sum(-1, keepdim=True) + wp.sum(-1, keepdim=True))
    torch.testing.assert_close(fp8_softmax_pv([se], [ve], [sp], [vp]), want, rtol=1e-5, atol=1e-6)


def test_p_scale_of_2_to_the_8_lowers_the_error_of_diffuse_rows():
    """Without P's scale, weights below 2^-6 of the row maximum fall into e4m3's subnormals (steps of 2^-9); diffuse
    rows over 4096 keys carry most of their mass there. Measured: 3.6e-2 without, 2.7e-2 with (docs/fidelity.md)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 128, generator=gen) for n in (256, 4096, 4096))
    s = (q @ k.transpose(-1, -2)) * 128 ** -0.5 * 2.0
    exact = torch.softmax(s, -1) @ v
    err = {sh: rel_error(fp8_softmax_pv([s], [v], [], [], p_shift=sh), exact) for sh in (0, 8)}
    assert err[8] < 0.85 * err[0], err


@pytest.mark.parametrize("kind,route", [("local", SPARSE), ("smooth", LINEAR), ("global", DENSE)])
@pytest.mark.parametrize("block", [64, 128])
def test_fp8_reference_stays_close_to_the_fp16_and_int8_references_on_structured_heads(kind, route, block):
    """fp8 adds e4m3's ~3 % per weight and per value to int8-qk: bound 5e-2 on ||fp8 - fp16|| / ||fp16|| (measured
    3.5e-2 to 3.8e-2, docs/fidelity.md), and most of it is P·V (fp8 is farther from int8-qk than int8-qk from fp16)."""
    q, k, v = structured_qkv(G, (kind, kind), dim=128, seed=2)
    plan = AttentionPlan(G, (route, route), (1, 1), (2, 0), anchors=(0,), compensation=True, block=block)
    fp16 = reference_attention(q, k, v, plan)
    int8 = reference_attention(q, k, v, plan.with_precision(INT8_QK))
    fp8 = reference_attention(q, k, v, plan.with_precision(FP8))
    err = rel_error(fp8, fp16)
    assert 0 < err < 5e-2, f"{kind} {route} block {block}: rel. error {err:.2e}"
    assert rel_error(fp8, int8) > rel_error(int8, fp16)


def test_feature_linear_video_rows_use_unquantized_q_k_and_v():
    g = Geometry(frames=3, height=4, width=16, prefix=0, suffix=0)
    q, k, v = structured_qkv(g, ("smooth",), dim=64, seed=1)
    plan = uniform_plan(g, 1, route=LINEAR, linear_kind="feature", block=64)
    assert torch.equal(reference_attention(q, k, v, plan), reference_attention(q, k, v, plan.with_precision(FP8)))


def test_fp8_precision_survives_the_plan_code_and_is_refused_below_sm_89(monkeypatch):
    plan = AttentionPlan(G, (SPARSE, LINEAR), (1, 0), (2, 0), anchors=(0, 3), block=64, precision=FP8)
    assert ops.decode_plan(ops.encode_plan(plan)) == plan
    assert plan.with_routes((DENSE, DENSE)).precision == FP8 and plan.with_precision(FP16).precision == FP16
    import comfyui_sparseflow.sparseflow.fp8 as fp8_mod

    monkeypatch.setattr(fp8_mod.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fp8_mod.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(fp8_mod.torch.cuda, "get_device_name", lambda dev=None: "NVIDIA A100")
    monkeypatch.setattr(fp8_mod.torch.cuda, "get_device_capability", lambda dev=None: (8, 0))
    assert "8.9+" in fp8_device_reason() and "A100 is sm_80" in fp8_device_reason()
    for cc in ((8, 9), (9, 0), (10, 0), (12, 0)):
        monkeypatch.setattr(fp8_mod.torch.cuda, "get_device_capability", lambda dev=None, cc=cc: cc)
        assert fp8_device_reason() is None
