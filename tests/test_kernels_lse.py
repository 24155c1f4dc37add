"""The fused kernel's optional log-sum-exp output (issue 20): `fused_attention(..., return_lse=True)` gives each
query row's log-sum-exp equal to the reference's (`reference_attention(..., return_lse=True)`, sparseflow/partials.py)
for every route, both linear kinds, top-k + compensation, extra tokens, odd L, both layouts and every precision,
and the partials merge as ring attention merges its steps. On CPU (CI) under TRITON_INTERPRET=1 at small shapes;
on CUDA compiled, plus the Wan 2.1 1.3B 480p shape."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from comfyui_sparseflow.kernels import fused_attention  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.inputs import to_bhld  # noqa: E402
from comfyui_sparseflow.sparseflow.masks import structural_block_mask  # noqa: E402
from comfyui_sparseflow.sparseflow.partials import PartialAttention, merge_partials  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, FP8, INT8_QK, LINEAR, SPARSE, AttentionPlan  # noqa: E402
from comfyui_sparseflow.sparseflow.reference import reference_attention  # noqa: E402
from helpers import assert_close_report, random_qkv, rel_error  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
G_EXTRA = Geometry(frames=8, height=4, width=12, prefix=7, suffix=9)  # L = 400: extra tokens on both sides
G_ODD = Geometry(frames=8, height=5, width=9, prefix=0, suffix=0)  # L = 360, not a multiple of 64
# lse is fp32 in both (absolute, in nats). Exact keys: only dot order and exp2/log2 differ (1e-6 seen); pooled
# block / segment means are kept in the input dtype by the kernel and in fp32 by the reference, so a pooled logit
# carries the input dtype's rounding (bf16: up to 1.4e-2 seen, fp16 about 8x less)
LSE_ATOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
OUT_TOL = {torch.bfloat16: (3e-2, 1e-2), torch.float16: (4e-3, 2e-3)}


def _qkv(batch, heads, length, dim, dtype, seed=0, layout="bhld"):  # keys with a shared offset, as DiT keys have
    return random_qkv(batch, heads, length, dim, dtype, seed, layout, k_offset=2.0, device=DEV)


def _check(plan, batch=1, dim=64, dtype=torch.bfloat16, layout="bhld", seed=0) -> PartialAttention:
    q, k, v = _qkv(batch, plan.heads, plan.geometry.length, dim, dtype, seed, layout)
    heads = plan.heads if layout == "blhd" else None
    got = fused_attention(q, k, v, plan, heads=heads, return_lse=True)
    ref = reference_attention(q, k, v, plan, heads=heads, return_lse=True)
    assert isinstance(got, PartialAttention)
    assert got.lse.dtype == torch.float32 and got.out.dtype == q.dtype
    assert tuple(got.out.shape) == tuple(ref.out.shape) and tuple(got.lse.shape) == tuple(ref.lse.shape)
    assert torch.isfinite(got.lse).all(), "every row attends at least its own block"
    assert_close_report(got.lse, ref.lse, atol=LSE_ATOL[dtype])
    atol, rel = OUT_TOL[dtype]
    assert_close_report(got.out.float(), ref.out, atol=atol)
    assert rel_error(got.out.float(), ref.out) < rel
    # the plain call's output is the same tensor the partial holds (return_lse changes nothing else)
    plain = fused_attention(q, k, v, plan, heads=heads)
    torch.testing.assert_close(to_bhld(plain, plan.heads), got.out, rtol=0, atol=0)
    return got


@pytest.mark.parametrize("route,linear_kind", [(DENSE, "pooled"), (SPARSE, "pooled"), (LINEAR, "pooled"),
                                               (LINEAR, "feature")], ids=["dense", "sparse", "linear", "feature"])
def test_each_route_returns_the_reference_lse_with_extra_tokens(route, linear_kind):
    plan = AttentionPlan(G_EXTRA, (route, route), (1, 1), (0, 0), anchors=(0,), linear_kind=linear_kind, block=64)
    _check(plan)


def test_mixed_routes_topk_and_compensation_at_odd_length_batch_2_and_comfy_layout():
    plan = AttentionPlan(G_ODD, (SPARSE, DENSE, LINEAR), (1, 0, 0), (1, 0, 0), anchors=(0,), compensation=True,
                         block=64)
    _check(plan, batch=2, dtype=torch.float16, layout="blhd", seed=3)


@pytest.mark.parametrize("precision", [INT8_QK, FP8])
def test_quantized_precisions_return_the_quantized_reference_lse(precision):
    """int8-qk and fp8: the log-normaliser of the quantized logits (fp8 rounds P for P·V only, not the sum)."""
    plan = AttentionPlan(G_ODD, (SPARSE, DENSE, LINEAR), (1, 0, 0), (0, 0, 0), anchors=(0,), block=64,
                         precision=precision)
    _check(plan, dtype=torch.float16, seed=5)


def test_lse_of_a_dense_head_is_the_log_of_its_softmax_normaliser():
    """Independent of the reference: torch.logsumexp of the scaled logits."""
    plan = AttentionPlan(G_ODD, (DENSE,), (0,), (0,), block=64)
    q, k, v = _qkv(1, 1, G_ODD.length, 64, torch.float16, seed=7)
    got = fused_attention(q, k, v, plan, return_lse=True)
    logits = (q.float() @ k.float().transpose(-1, -2)) * plan.softmax_scale(64)
    assert_close_report(got.lse, torch.logsumexp(logits, dim=-1), atol=1e-4)


def test_a_sparse_kernel_partial_merges_with_the_rest_of_the_keys_into_dense_attention():
    """A sparse head (no compensation) attends exactly the keys of its structural block set; its kernel partial
    merged with a partial over every other key (plain torch, masked logsumexp) is dense attention over all keys,
    as ring attention merges its steps. Holds only if the kernel's lse is each row's log-normaliser."""
    plan = AttentionPlan(G_ODD, (SPARSE, SPARSE), (0, 1), (0, 0), anchors=(0,), block=64)
    q, k, v = _qkv(1, 2, G_ODD.length, 64, torch.float16, seed=9)
    sparse = fused_attention(q, k, v, plan, return_lse=True)
    scale = plan.softmax_scale(64)
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale  # (1, 2, L, L)
    rest = []
    for h, window in enumerate(plan.window):
        blocks = structural_block_mask(G_ODD, 64, window, plan.anchors).to(q.device)
        tokens = blocks.repeat_interleave(64, 0).repeat_interleave(64, 1)[:G_ODD.length, :G_ODD.length]
        s = logits[0, h].masked_fill(tokens, float("-inf"))  # the keys the sparse head did not attend
        lse = torch.logsumexp(s, dim=-1)
        rest.append((torch.softmax(s, dim=-1) @ v[0, h].float(), lse))
    other = PartialAttention(torch.stack([o for o, _ in rest])[None], torch.stack([lse for _, lse in rest])[None])
    merged = merge_partials(sparse, other)
    dense = torch.softmax(logits, dim=-1) @ v.float()
    assert_close_report(merged.lse, torch.logsumexp(logits, dim=-1), atol=1e-4)
    assert rel_error(merged.out, dense) < 2e-3, f"merged vs dense: {rel_error(merged.out, dense):.2e}"
    assert rel_error(sparse.out.float(), dense) > 1e-2, "the sparse head alone must differ from dense (test power)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: needs CUDA (the Wan shape is too big for the "
                    "interpreter)")
def test_wan_1_3b_shape_returns_the_reference_lse():
    g = Geometry(frames=21, height=30, width=52)
    routes = tuple((SPARSE, DENSE, LINEAR)[h % 3] for h in range(12))
    plan = AttentionPlan(g, routes, (1,) * 12, (0,) * 12, anchors=(0,), block=128)
    _check(plan, dim=128, dtype=torch.float16, layout="blhd")
