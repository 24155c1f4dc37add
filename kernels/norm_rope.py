"""Fused Wan QK prologue: RMSNorm over the whole model dim, affine weight, then RoPE, for q and k in one launch.

What ComfyUI's `WanSelfAttention` does in separate passes (`norm_q(q(x))`, `.view`, `apply_rope1` in fp32,
cast back; the same for k) is one read and one write of q and k here: each program takes BLOCK_T tokens,
loads each token's whole row of q and of k (the norm reduces over all heads, C = H * D), normalises in
fp32, multiplies by the weight, rotates each (even, odd) pair by the token's RoPE matrix and stores in the
input dtype. Rows are loaded and stored contiguously (vectorised); the (even, odd) pairs are split and joined
in registers. The RoPE table is ComfyUI's own `freqs` tensor, (Bf, L, 1, D/2, 2, 2) fp32 (Bf = 1 or B),
read through its batch and token strides, once for q and k together, and (D a power of two, as in Wan) once per
token: one head's D/2 matrices, broadcast over the row's heads.
Reference: `sparseflow.prologue.norm_rope_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import INTERPRET

__all__ = ["norm_rope_qk"]


@triton.jit
def _norm_rope_one(x_ptr, s_xb, s_xl, w_ptr, o_ptr, s_ob, s_ol, b, l_idx, t_ok, f00, f01, f10, f11, eps,
                   C: tl.constexpr, HALF_D: tl.constexpr, PER_HEAD: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """One of q / k: contiguous (vectorised) row loads, pairs split in registers, rows stored contiguous.

    f00 .. f11: the rotation matrices, (BLOCK_T, 1, HALF_D) with PER_HEAD (one head's, broadcast over the row's
    heads), else (BLOCK_T, BLOCK_C // 2), one per pair of the row."""
    col = tl.arange(0, BLOCK_C)
    ok = t_ok[:, None] & (col < C)[None, :]
    x = tl.load(x_ptr + b[:, None] * s_xb + l_idx[:, None] * s_xl + col[None, :], mask=ok, other=0.0)
    x = x.to(tl.float32)
    w = tl.load(w_ptr + col, mask=col < C, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / C + eps)
    y = x * r[:, None] * w[None, :]
    if PER_HEAD:  # column h * D + 2 i + e is element e of pair i of head h (BLOCK_C = BLOCK_H * D)
        y0, y1 = tl.split(tl.reshape(y, (BLOCK_T, BLOCK_C // (2 * HALF_D), HALF_D, 2)))
    else:  # column 2 j + e is element e of pair j
        y0, y1 = tl.split(tl.reshape(y, (BLOCK_T, BLOCK_C // 2, 2)))
    out = tl.reshape(tl.join(f00 * y0 + f01 * y1, f10 * y0 + f11 * y1), (BLOCK_T, BLOCK_C))
    tl.store(o_ptr + b[:, None] * s_ob + l_idx[:, None] * s_ol + col[None, :], out.to(o_ptr.dtype.element_ty),
             mask=ok)


@triton.jit
def _norm_rope_kernel(q_ptr, k_ptr, wq_ptr, wk_ptr, f_ptr, oq_ptr, ok_ptr,
                      s_qb, s_ql, s_kb, s_kl, s_ob, s_ol, s_fb, s_fl,
                      rows, L, eps,
                      C: tl.constexpr, HALF_D: tl.constexpr, F_BATCHED: tl.constexpr, PER_HEAD: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)               # flat token index b * L + l
    t_ok = t < rows
    b = t // L
    l_idx = t - b * L
    # RoPE matrices: the table's (D/2, 2, 2) block is contiguous, so one 16-byte load per pair, split into its
    # four entries. PER_HEAD (D a power of two): the D/2 matrices of one head, loaded once per token and
    # broadcast over its heads; else one per pair j = 0 .. C/2 - 1 of the row (pair j % (D/2) of its head).
    e = tl.arange(0, 4)
    fb = b if F_BATCHED else b * 0
    if PER_HEAD:
        i = tl.arange(0, HALF_D)
        f_off = fb[:, None, None] * s_fb + l_idx[:, None, None] * s_fl + i[None, :, None] * 4 + e[None, None, :]
        f_ok = t_ok[:, None, None] & (i < HALF_D)[None, :, None] & (e < 4)[None, None, :]
        f = tl.reshape(tl.load(f_ptr + f_off, mask=f_ok, other=0.0), (BLOCK_T, 1, HALF_D, 2, 2))
    else:
        j = tl.arange(0, BLOCK_C // 2)
        f_off = (fb[:, None, None] * s_fb + l_idx[:, None, None] * s_fl + (j % HALF_D)[None, :, None] * 4
                 + e[None, None, :])
        f_ok = t_ok[:, None, None] & (j < C // 2)[None, :, None] & (e < 4)[None, None, :]
        f = tl.reshape(tl.load(f_ptr + f_off, mask=f_ok, other=0.0), (BLOCK_T, BLOCK_C // 2, 2, 2))
    fr0, fr1 = tl.split(f)                                  # split the column index c: [f[r][0]], [f[r][1]]
    f00, f10 = tl.split(fr0)
    f01, f11 = tl.split(fr1)
    _norm_rope_one(q_ptr, s_qb, s_ql, wq_ptr, oq_ptr, s_ob, s_ol, b, l_idx, t_ok, f00, f01, f10, f11, eps,
                   C, HALF_D, PER_HEAD, BLOCK_T, BLOCK_C)
    _norm_rope_one(k_ptr, s_kb, s_kl, wk_ptr, ok_ptr, s_ob, s_ol, b, l_idx, t_ok, f00, f01, f10, f11, eps,
                   C, HALF_D, PER_HEAD, BLOCK_T, BLOCK_C)


def launch_shape(c: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_C, num_warps): about 8K elements per program and 4 warps on the GPU, two tokens in the
    interpreter. 4 warps against 8 (H200, B=2, in place; sweep in bench/results/sweep_passes_h200_99e7aeb.txt):
    Wan 1.3B 0.227 ms against 0.312, 5B 0.347 against 0.483, 14B 1.537 against 1.657; 16 warps slower on all three."""
    block_c = triton.next_power_of_2(c)
    if INTERPRET:
        return 2, block_c, 1
    return max(1, 8192 // block_c), block_c, 4


def norm_rope_qk(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, freqs: torch.Tensor,
                 eps: float, head_dim: int, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(q) * wq and RMSNorm(k) * wk over the last dim, then RoPE per head; returns new (B, L, C) tensors,
    or with `inplace` q and k themselves, overwritten (each program loads its tokens' whole rows before it stores
    them, and no other program reads those rows).

    q, k: (B, L, C) with unit last stride; wq, wk: (C,) contiguous; freqs: (Bf, L, 1, head_dim/2, 2, 2) float32,
    Bf 1 or B, its (head_dim/2, 2, 2) block contiguous. `inplace` needs q and k with the same strides (the
    outputs share one set).
    Callers check the layout (`sparseflow.prologue.prologue_reason`).
    """
    bsz, length, c = q.shape
    if inplace:
        if q.stride() != k.stride():
            raise ValueError(f"norm_rope_qk inplace: q strides {q.stride()} and k strides {k.stride()} differ")
        oq, ok = q, k
    else:
        oq = torch.empty((bsz, length, c), dtype=q.dtype, device=q.device)
        ok = torch.empty_like(oq)
    rows = bsz * length
    block_t, block_c, warps = launch_shape(c)
    grid = (triton.cdiv(rows, block_t),)
    _norm_rope_kernel[grid](q, k, wq, wk, freqs, oq, ok,
                            q.stride(0), q.stride(1), k.stride(0), k.stride(1), oq.stride(0), oq.stride(1),
                            freqs.stride(0), freqs.stride(1),
                            rows, length, float(eps),
                            C=c, HALF_D=head_dim // 2, F_BATCHED=freqs.shape[0] > 1,
                            PER_HEAD=head_dim & (head_dim - 1) == 0,
                            BLOCK_T=block_t, BLOCK_C=block_c, num_warps=warps)
    return oq, ok
