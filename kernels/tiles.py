"""Tile steps of the fused SparseFlow kernel: one online-softmax update over a tile of keys (Triton helpers).

After Triton's 06-fused-attention tutorial: logits in the log2 domain, exp2, fp32 accumulators; `_key_tile` loads
a tile of exact keys and values (through tensor descriptors or pointers) and folds it into the running max, sum
and output of each query row; `_online_update` does the same for logits the caller made (pooled means, linear
segments). Inlined into `kernels/fused.py`'s kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .fp8 import _pv_fp8

__all__ = ["_key_tile", "_online_update", "_op", "_v_ptrs"]


@triton.jit
def _op(x, UPCAST: tl.constexpr):
    """A dot operand; fp32 under the CPU interpreter, whose bf16 tl.dot is wrong (triton 3.9)."""
    if UPCAST:
        return x.to(tl.float32)
    else:
        return x


@triton.jit
def _online_update(acc, m_i, l_i, qk, v):
    """One online-softmax step on log2-domain logits qk (BLOCK_M, n) and values v (n, D)."""
    m_ij = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_ij, l_i


@triton.jit
def _v_ptrs(v_base, offs_n, offs_d, stride_vl, PRECISION: tl.constexpr):
    """Pointers of a [BLOCK_N, D] value tile. PRECISION 2 (fp8): e4m3 v is stored token-contiguous (the K-major B
    operand of Hopper's e4m3 MMA; kernels/fp8_prepass.py) and stride_vl is its feature stride."""
    if PRECISION == 2:
        return v_base + offs_n[:, None] + offs_d[None, :] * stride_vl
    else:
        return v_base + offs_n[:, None] * stride_vl + offs_d[None, :]


@triton.jit
def _key_tile(acc, m_i, l_i, q, kd, vd, k_base, v_base, stride_kl, stride_vl, start_n, lim, qk_scale, ks_row,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, MASKED: tl.constexpr,
              TMA: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Exact attention to keys [start_n, start_n + BLOCK_N); with MASKED, keys >= lim are masked (lim = L, or 0).

    The max is taken on the raw logits and qk_scale is folded into the exp2 argument (one FMA per logit;
    scale > 0), and the l update follows the PV dot (Triton 06). TMA: K and V tiles come through tensor
    descriptors (rows >= L read as zeros); else through pointers, masked only when MASKED. PRECISION 1 (int8-qk,
    spec §8): q and k are int8, the dot is int32, and the key tile's block scale (`ks_row`: this head's k scales,
    one per spec block of BLOCK tokens) joins qk_scale. PRECISION 2 (fp8): int8 Q·K as 1, then P·V in e4m3
    (`kernels/fp8.py` `_pv_fp8`; v is e4m3).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if TMA:
        k = kd.load([start_n, 0]).T
        v = vd.load([0, start_n]).T if PRECISION == 2 else vd.load([start_n, 0])
    else:
        offs_d = tl.arange(0, HEAD_DIM)
        k_ptrs = k_base + offs_n[None, :] * stride_kl + offs_d[:, None]
        v_ptrs = _v_ptrs(v_base, offs_n, offs_d, stride_vl, PRECISION)
        if MASKED:
            k = tl.load(k_ptrs, mask=(offs_n < lim)[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=(offs_n < lim)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
    if PRECISION != 2:
        v = _op(v, UPCAST)
    if PRECISION >= 1:
        qk = tl.dot(q, k).to(tl.float32)
        qk_scale = qk_scale * tl.load(ks_row + start_n // BLOCK)
    else:
        qk = tl.dot(q, _op(k, UPCAST))
    if MASKED:
        qk = tl.where((offs_n < lim)[None, :], qk, -1.0e30)
    if PRECISION == 2:
        return _pv_fp8(acc, m_i, l_i, qk, qk_scale, v, UPCAST)
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    l_i = l_i * alpha + tl.sum(p, 1)
    return acc, m_ij, l_i
