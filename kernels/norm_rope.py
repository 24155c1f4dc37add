"""Fused Wan QK prologue: RMSNorm over the whole model dim, affine weight, then RoPE, for q and k in one launch.

What ComfyUI's `WanSelfAttention` does in separate passes (`norm_q(q(x))`, `.view`, `apply_rope1` in fp32,
cast back; the same for k) is one read and one write of q and k here: each program takes BLOCK_T tokens,
loads each token's whole row of q and of k (the norm reduces over all heads, C = H * D), normalises in
fp32, multiplies by the weight, rotates each (even, odd) pair by the token's RoPE matrix and stores in the
input dtype. The RoPE table is ComfyUI's own `freqs` tensor, (Bf, L, 1, D/2, 2, 2) fp32 (Bf = 1 or B),
read through its strides once for q and k together. Reference: `sparseflow.prologue.norm_rope_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.configs import INTERPRET

__all__ = ["norm_rope_qk"]


@triton.jit
def _norm_rope_kernel(q_ptr, k_ptr, wq_ptr, wk_ptr, f_ptr, oq_ptr, ok_ptr,
                      s_qb, s_ql, s_kb, s_kl, s_ob, s_ol,
                      s_fb, s_fl, s_fi, s_fr, s_fc,
                      rows, L, eps,
                      C: tl.constexpr, HALF_D: tl.constexpr, F_BATCHED: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)               # flat token index b * L + l
    j = tl.arange(0, BLOCK_P)                               # pair index along C: elements 2j, 2j + 1
    t_ok = t < rows
    j_ok = j < C // 2
    ok = t_ok[:, None] & j_ok[None, :]
    b = t // L
    l_idx = t - b * L
    i = j % HALF_D                                          # pair index inside a head (RoPE is per head dim)
    fb = b if F_BATCHED else b * 0
    f_row = f_ptr + fb[:, None] * s_fb + l_idx[:, None] * s_fl + i[None, :] * s_fi
    f00 = tl.load(f_row, mask=ok, other=0.0)
    f01 = tl.load(f_row + s_fc, mask=ok, other=0.0)
    f10 = tl.load(f_row + s_fr, mask=ok, other=0.0)
    f11 = tl.load(f_row + s_fr + s_fc, mask=ok, other=0.0)
    wq0 = tl.load(wq_ptr + 2 * j, mask=j_ok, other=0.0).to(tl.float32)
    wq1 = tl.load(wq_ptr + 2 * j + 1, mask=j_ok, other=0.0).to(tl.float32)
    wk0 = tl.load(wk_ptr + 2 * j, mask=j_ok, other=0.0).to(tl.float32)
    wk1 = tl.load(wk_ptr + 2 * j + 1, mask=j_ok, other=0.0).to(tl.float32)
    out_off = b[:, None] * s_ob + l_idx[:, None] * s_ol + 2 * j[None, :]

    # q
    q_off = b[:, None] * s_qb + l_idx[:, None] * s_ql + 2 * j[None, :]
    x0 = tl.load(q_ptr + q_off, mask=ok, other=0.0).to(tl.float32)
    x1 = tl.load(q_ptr + q_off + 1, mask=ok, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x0 * x0 + x1 * x1, axis=1) / C + eps)
    y0 = x0 * r[:, None] * wq0[None, :]
    y1 = x1 * r[:, None] * wq1[None, :]
    tl.store(oq_ptr + out_off, (f00 * y0 + f01 * y1).to(oq_ptr.dtype.element_ty), mask=ok)
    tl.store(oq_ptr + out_off + 1, (f10 * y0 + f11 * y1).to(oq_ptr.dtype.element_ty), mask=ok)

    # k
    k_off = b[:, None] * s_kb + l_idx[:, None] * s_kl + 2 * j[None, :]
    x0 = tl.load(k_ptr + k_off, mask=ok, other=0.0).to(tl.float32)
    x1 = tl.load(k_ptr + k_off + 1, mask=ok, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x0 * x0 + x1 * x1, axis=1) / C + eps)
    y0 = x0 * r[:, None] * wk0[None, :]
    y1 = x1 * r[:, None] * wk1[None, :]
    tl.store(ok_ptr + out_off, (f00 * y0 + f01 * y1).to(ok_ptr.dtype.element_ty), mask=ok)
    tl.store(ok_ptr + out_off + 1, (f10 * y0 + f11 * y1).to(ok_ptr.dtype.element_ty), mask=ok)


def _launch_shape(c: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_P, num_warps): about 8K pairs per program on the GPU, a few tokens in the interpreter."""
    block_p = triton.next_power_of_2(c // 2)
    if INTERPRET:
        return 2, block_p, 1
    return max(1, 8192 // block_p), block_p, 8


def norm_rope_qk(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, freqs: torch.Tensor,
                 eps: float, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(q) * wq and RMSNorm(k) * wk over the last dim, then RoPE per head; returns new (B, L, C) tensors.

    q, k: (B, L, C) with unit last stride; wq, wk: (C,); freqs: (Bf, L, 1, head_dim/2, 2, 2) float32, Bf 1 or B.
    Callers check the layout (`sparseflow.prologue.prologue_reason`).
    """
    bsz, length, c = q.shape
    oq = torch.empty((bsz, length, c), dtype=q.dtype, device=q.device)
    ok = torch.empty_like(oq)
    rows = bsz * length
    block_t, block_p, warps = _launch_shape(c)
    grid = (triton.cdiv(rows, block_t),)
    fs = freqs.stride()
    _norm_rope_kernel[grid](q, k, wq, wk, freqs, oq, ok,
                            q.stride(0), q.stride(1), k.stride(0), k.stride(1), oq.stride(0), oq.stride(1),
                            fs[0], fs[1], fs[3], fs[4], fs[5],
                            rows, length, float(eps),
                            C=c, HALF_D=head_dim // 2, F_BATCHED=freqs.shape[0] > 1,
                            BLOCK_T=block_t, BLOCK_P=block_p, num_warps=warps)
    return oq, ok
