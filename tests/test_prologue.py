"""The fused Wan QK prologue (RMSNorm + weight + RoPE): reference semantics, Triton kernel, custom op.

The reference is checked in float64 against ComfyUI's own formulas written out here (comfy/rmsnorm.py
`rms_norm`, comfy/ldm/flux/math.py `apply_rope1`, EmbedND's 2x2 rotation table); the Triton kernel against
the reference (TRITON_INTERPRET=1 on CPU at small shapes, compiled on CUDA, plus a Wan 2.1 1.3B shape
there). tests/test_nodes_prologue.py checks the patched Wan module against ComfyUI's own module.
"""

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from comfyui_sparseflow.sparseflow.prologue import norm_rope_qk, norm_rope_reference, prologue_reason  # noqa: E402
from helpers import assert_close_report, rel_error  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def rope_table(batch: int, length: int, head_dim: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """A (batch, L, 1, D/2, 2, 2) table of 2x2 rotations [[cos, -sin], [sin, cos]] (EmbedND's layout)."""
    gen = torch.Generator().manual_seed(seed)
    ang = torch.rand(batch, length, 1, head_dim // 2, generator=gen, dtype=torch.float64) * 2 * math.pi
    c, s = torch.cos(ang), torch.sin(ang)
    return torch.stack([c, -s, s, c], dim=-1).reshape(batch, length, 1, head_dim // 2, 2, 2).to(dtype)


def comfy_formula(x: torch.Tensor, w: torch.Tensor, freqs: torch.Tensor, eps: float, head_dim: int) -> torch.Tensor:
    """ComfyUI's norm_q + view + apply_rope1, in the input's dtype (float64 here)."""
    r = x * torch.rsqrt(torch.mean(x ** 2, dim=-1, keepdim=True) + eps) * w
    b, s, c = x.shape
    q = r.view(b, s, c // head_dim, head_dim)
    x_ = q.to(freqs.dtype).reshape(*q.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * x_[..., 0] + freqs[..., 1] * x_[..., 1]
    return out.reshape(*q.shape).type_as(q).reshape(b, s, c)


def test_reference_equals_comfyui_formula_in_float64():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 3 * 64, generator=gen, dtype=torch.float64) * 3
    w = torch.randn(3 * 64, generator=gen, dtype=torch.float64)
    f = rope_table(2, 30, 64, dtype=torch.float64)
    out = norm_rope_reference(x, w, f, 1e-6, 64)
    torch.testing.assert_close(out, comfy_formula(x, w, f, 1e-6, 64), rtol=1e-12, atol=1e-12)


def test_rotation_keeps_each_pair_norm_and_identity_table_is_plain_rmsnorm():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 9, 128, generator=gen, dtype=torch.float64)
    w = torch.ones(128, dtype=torch.float64)
    f = rope_table(1, 9, 64, dtype=torch.float64)
    out = norm_rope_reference(x, w, f, 0.0, 64)
    normed = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    pair = lambda t: t.view(1, 9, 64, 2).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair(out), pair(normed), rtol=1e-12, atol=1e-12)
    ident = torch.eye(2, dtype=torch.float64).expand(1, 9, 1, 32, 2, 2)
    torch.testing.assert_close(norm_rope_reference(x, w, ident, 0.0, 64), normed, rtol=1e-12, atol=1e-12)


def _kernel_case(batch, length, heads, head_dim, dtype, f_batch, strided=False, seed=0):
    from comfyui_sparseflow.kernels.norm_rope import norm_rope_qk as kernel

    gen = torch.Generator().manual_seed(seed)
    c = heads * head_dim
    if strided:  # q, k as column slices of one (B, L, 3C) projection output: row stride 3C
        qkv = (torch.randn(batch, length, 3 * c, generator=gen) * 4).to(dtype).to(DEV)
        q, k = qkv[..., :c], qkv[..., c:2 * c]
    else:
        q, k = ((torch.randn(batch, length, c, generator=gen) * 4).to(dtype).to(DEV) for _ in range(2))
    wq, wk = ((torch.rand(c, generator=gen) + 0.5).to(dtype).to(DEV) for _ in range(2))
    # every other row of a longer table: the kernel reads the table through its strides, not as contiguous
    f = rope_table(f_batch, 2 * length, head_dim, seed).to(DEV)[:, ::2]
    assert not f.is_contiguous()
    assert prologue_reason(q, wq, f, head_dim) is None
    oq, ok = kernel(q, k, wq, wk, f, 1e-6, head_dim)
    for out, x, w in ((oq, q, wq), (ok, k, wk)):
        ref = norm_rope_reference(x, w, f, 1e-6, head_dim)
        assert out.dtype == x.dtype and out.shape == x.shape and out.is_contiguous()
        # at most one unit in the last place of the output dtype apart (both round fp32 once; the CPU
        # interpreter truncates fp32 -> bf16, so there the mean error is half an ulp, not a quarter)
        ulp = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
        assert_close_report(out, ref, atol=ulp, rtol=ulp)
        assert rel_error(out, ref) < 0.75 * ulp
    # in place (SparseFlow's forward overwrites the fresh projections): the same bits, in q's and k's own memory
    iq, ik = q.clone(), k.clone()
    if strided:
        iq, ik = (torch.empty_like(qkv)[..., :c] for _ in range(2))
        iq.copy_(q), ik.copy_(k)
    rq, rk = kernel(iq, ik, wq, wk, f, 1e-6, head_dim, inplace=True)
    assert rq is iq and rk is ik
    assert torch.equal(iq, oq) and torch.equal(ik, ok)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernel_matches_reference_non_power_of_two_dim_odd_length(dtype):
    # C = 3 * 64 = 192: 96 pairs in a 128-wide program (masked lanes); L = 37 is not a multiple of BLOCK_T
    _kernel_case(batch=1, length=37, heads=3, head_dim=64, dtype=dtype, f_batch=1)


def test_kernel_head_dim_not_a_power_of_two_reads_the_table_per_pair():
    # D = 48: the kernel cannot broadcast one head's matrices over a power-of-two row tile, so it reads them per pair
    _kernel_case(batch=1, length=9, heads=4, head_dim=48, dtype=torch.float16, f_batch=1, seed=6)


def test_kernel_cfg_batch_with_per_batch_table_head_dim_128_and_strided_rows():
    _kernel_case(batch=2, length=21, heads=2, head_dim=128, dtype=torch.float16, f_batch=2, strided=True, seed=3)


def test_kernel_cfg_batch_shares_one_table():
    _kernel_case(batch=2, length=16, heads=2, head_dim=64, dtype=torch.bfloat16, f_batch=1, seed=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: needs CUDA (the Wan shape is too big for the "
                                                          "interpreter)")
def test_kernel_matches_reference_at_wan_1_3b_shape_on_gpu():
    # Wan 2.1 1.3B 480p x 81f, CFG batch: B=2, L=32760, C=1536 (12 heads of 128); bound: rel. 2e-3 (fp16 rounding)
    _kernel_case(batch=2, length=32760, heads=12, head_dim=128, dtype=torch.float16, f_batch=1, seed=5)


def test_op_reference_backend_and_errors_name_the_input():
    q = torch.randn(1, 5, 128)
    w = torch.ones(128)
    f = rope_table(1, 5, 64)
    oq, ok = norm_rope_qk(q, q.clone(), w, w, f, 1e-6, 64, backend="reference")
    torch.testing.assert_close(oq, norm_rope_reference(q, w, f, 1e-6, 64))
    torch.testing.assert_close(ok, oq)
    with pytest.raises(ValueError, match="RoPE table shape"):
        norm_rope_qk(q, q, w, w, rope_table(1, 4, 64), 1e-6, 64, backend="reference")
    with pytest.raises(ValueError, match="q: norm weight"):
        norm_rope_qk(q, q, torch.ones(64), w, f, 1e-6, 64, backend="reference")
    with pytest.raises(ValueError, match="backend must be one of"):
        norm_rope_qk(q, q, w, w, f, 1e-6, 64, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'triton' cannot run: no CUDA device"):
            norm_rope_qk(q, q, w, w, f, 1e-6, 64, backend="triton")


def test_op_traces_under_torch_compile_without_graph_break():
    torch._dynamo.reset()
    q, k = torch.randn(2, 6, 128), torch.randn(2, 6, 128)
    w = torch.rand(128) + 0.5
    f = rope_table(1, 6, 64)

    def fn(q, k):
        a, b = norm_rope_qk(q * 2, k, w, w, f, 1e-6, 64, backend="reference")
        return a + b

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(q, k), fn(q, k))


def test_inplace_op_overwrites_q_and_k_and_traces_under_torch_compile():
    from comfyui_sparseflow.sparseflow.prologue import inplace_reason, run_norm_rope

    torch._dynamo.reset()
    q, k = torch.randn(2, 6, 128), torch.randn(2, 6, 128)
    w = torch.rand(128) + 0.5
    f = rope_table(1, 6, 64)
    want = norm_rope_qk(q, k, w, w, f, 1e-6, 64, backend="reference")
    aq, ak = q.clone(), k.clone()
    assert inplace_reason(aq, ak) is None and inplace_reason(aq, ak[:, :, :64]) is not None
    rq, rk = run_norm_rope(aq, ak, w, w, f, 1e-6, 64, "reference", inplace=True)
    assert rq is aq and rk is ak and torch.equal(aq, want[0]) and torch.equal(ak, want[1])

    def fn(q, k):
        a, b = run_norm_rope(q * 2, k + 0, w, w, f, 1e-6, 64, "reference", inplace=True)
        return a + b

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k), fn(q, k))
