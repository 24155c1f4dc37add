"""The int8-qk math (sparseflow/quantize.py, spec §8): per-block scales and rounding, K smoothing, and the quantized
reference operator's error against the fp16 path on the structured synthetic heads."""

import pytest
import torch
from comfyui_sparseflow.sparseflow import ops
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE, INT8_QK, LINEAR, SPARSE, AttentionPlan, uniform_plan
from comfyui_sparseflow.sparseflow.quantize import dequantize, quantize_blocks, quantize_qk
from comfyui_sparseflow.sparseflow.reference import dense_attention, reference_attention
from comfyui_sparseflow.sparseflow.synthetic import structured_qkv
from helpers import rel_error

G = Geometry(frames=6, height=8, width=16, prefix=5, suffix=0)  # L = 773: a partial last block of 64 and of 128


def test_scale_is_block_amax_over_127_and_rounding_is_half_to_even():
    x = torch.zeros(1, 1, 6, 2)
    x[0, 0, :3, 0] = torch.tensor([127.0, 0.5, 1.5])  # block 0: amax 127 -> scale 1, ties 0.5 -> 0 and 1.5 -> 2
    x[0, 0, 3, 1] = -2.5  # block 1: amax 2.5 -> scale 2.5/127
    x8, scale = quantize_blocks(x, 3)
    assert x8.dtype == torch.int8 and scale.shape == (1, 1, 2)
    assert scale[0, 0, 0] == 1.0 and scale[0, 0, 1] == torch.tensor(2.5) / 127
    assert x8[0, 0, :3, 0].tolist() == [127, 0, 2] and x8[0, 0, 3, 1] == -127
    zero8, zscale = quantize_blocks(torch.zeros(1, 1, 4, 2), 2)  # an all-zero block: scale 1, values 0
    assert zscale.eq(1).all() and zero8.eq(0).all()


def test_dequantized_values_are_within_half_a_step_of_the_input():
    x = torch.randn(2, 3, 300, 64, generator=torch.Generator().manual_seed(0)) * 4
    x8, scale = quantize_blocks(x, 128)
    err = (dequantize(x8, scale, 128) - x).abs()
    step = scale.repeat_interleave(128, dim=2)[:, :, :300, None]
    assert (err <= step / 2 * (1 + 1e-5)).all()
    assert x8.abs().max() == 127


def test_k_is_smoothed_by_its_channel_mean_over_the_sequence():
    q, k = (torch.randn(1, 2, 200, 64, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    qz = quantize_qk(q, k + 5.0, 64)
    assert torch.allclose(qz.k_mean, k.mean(dim=2) + 5.0, atol=1e-5)
    _, kd = qz.dequantized()
    assert torch.allclose(kd.mean(dim=2), torch.zeros(1, 2, 64), atol=0.05)


def test_smoothing_makes_a_large_key_offset_cost_nothing():
    """A key offset shared by all tokens (common in DiT heads) leaves attention unchanged; unsmoothed int8 keys would
    spend their range on it. With smoothing the int8 error equals the no-offset error; without it, it is far worse."""
    q, k, v = structured_qkv(G, ("global",), dim=64, seed=4)
    offset = 30.0 * torch.randn(64, generator=torch.Generator().manual_seed(5))
    plan = uniform_plan(G, 1, route=DENSE, block=64, precision=INT8_QK)
    exact = dense_attention(q, k + offset, v)
    smoothed = rel_error(reference_attention(q, k + offset, v, plan), exact)
    base = rel_error(reference_attention(q, k, v, plan), dense_attention(q, k, v))
    q8, qs = quantize_blocks(q, 64)
    k8, ks = quantize_blocks(k + offset, 64)  # no smoothing
    naive = rel_error(dense_attention(dequantize(q8, qs, 64), dequantize(k8, ks, 64), v), exact)
    assert smoothed < 1.5 * base + 1e-4, (smoothed, base)
    assert naive > 3 * smoothed, (naive, smoothed)


@pytest.mark.parametrize("kind,route", [("local", SPARSE), ("smooth", LINEAR), ("global", DENSE)])
@pytest.mark.parametrize("block", [64, 128])
def test_int8_reference_stays_close_to_the_fp16_reference_on_structured_heads(kind, route, block):
    """The bound 2e-2 on ||int8 - fp16|| / ||fp16|| is the fp16 kernel's bf16 tolerance (1e-2) doubled; measured values
    are in docs/fidelity.md (bench/quant_error.py)."""
    q, k, v = structured_qkv(G, (kind, kind), dim=128, seed=2)
    plan = AttentionPlan(G, (route, route), (1, 1), (2, 0), anchors=(0,), compensation=True, block=block)
    fp16 = reference_attention(q, k, v, plan)
    int8 = reference_attention(q, k, v, plan.with_precision(INT8_QK))
    err = rel_error(int8, fp16)
    assert 0 < err < 2e-2, f"{kind} {route} block {block}: rel. error {err:.2e}"


def test_feature_linear_heads_use_unquantized_q_and_k_on_video_rows():
    g = Geometry(frames=3, height=4, width=16, prefix=0, suffix=0)
    q, k, v = structured_qkv(g, ("smooth",), dim=64, seed=1)
    plan = uniform_plan(g, 1, route=LINEAR, linear_kind="feature", block=64)
    assert torch.equal(reference_attention(q, k, v, plan),
                       reference_attention(q, k, v, plan.with_precision(INT8_QK)))


def test_precision_is_validated_and_survives_the_plan_code():
    with pytest.raises(ValueError, match="precision must be one of"):
        uniform_plan(G, 1, precision="int4")
    plan = AttentionPlan(G, (SPARSE, LINEAR), (1, 0), (2, 0), anchors=(0, 3), block=64, precision=INT8_QK)
    assert ops.decode_plan(ops.encode_plan(plan)) == plan
    assert plan.with_routes((DENSE, DENSE)).precision == INT8_QK

