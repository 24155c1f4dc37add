"""Quantize pre-pass of the fused kernel's `int8-qk` path, and its Q·K tile step (Triton).

docs/spec.md §8; the math is `sparseflow/quantize.py` (k smoothed by its channel mean, SageAttention's idea,
arXiv:2410.02367; our own code). A separate small kernel rather than a part of the block-means pass: k's scales
need the mean over the whole sequence first, so k is read twice either way (`k_mean`'s pass, then this one), and
the block means are only made for calls with compensation or pooled linear heads. One program per (spec block,
batch x head, tensor) reads that block of q or of k once and writes int8 q or int8 k - mean and its fp32 scale (the
fp8 pre-pass, kernels/fp8_prepass.py, runs the same kernel with v: one program per (spec block, batch x head) for
q, k and e4m3 v / its channel scale, as measured fastest there).

Rounding as torch does it: scale = amax / 127 and x / scale correctly rounded (on the GPU one `div_rn` for 1 / scale
per block and Markstein's correction per element, `_div_rn`; Triton's `/` is approximate there), round half to
even by adding and subtracting 1.5 * 2^23 (exact for |x| < 2^22; libdevice's rint does not run under the CPU
interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..sparseflow.quantize import QuantizedQK
from . import configs
from .fp8 import _to_e4m3
from .tiles import _op

__all__ = ["PREPASS_LAUNCH", "STATS_SPAN", "PrepassLaunch", "_logits", "_pooled_operand", "k_mean", "quantize_qk",
           "quantize_with_mean", "smoothed_means"]

_RNE = tl.constexpr(12582912.0)  # 1.5 * 2^23: x + _RNE - _RNE rounds fp32 x to the nearest integer, ties to even
_MARKSTEIN_MIN = tl.constexpr(5.421010862427522e-20)  # 2^-64: the smallest divisor `_div_rn` is exact for here
_LIFT = tl.constexpr(1.2676506002282294e30)  # 2^100: lifts a smaller divisor (and its dividends) above it, exactly


@triton.jit
def _div_rn(x, s, r):
    """x / s correctly rounded (fp32) on the GPU, given r = 1 / s correctly rounded (one division per tile, not one
    per element): Markstein's correction, q = x r, e = fma(-q, s, x) (exact), q + e r, the correctly rounded quotient
    when nothing under- or overflows (callers keep divisors at or above _MARKSTEIN_MIN = 2^-64, which bf16 inputs
    can go under: a power-of-two lift below it, or for q and k in the fp8 pass `div_rn`); three instructions per
    element instead of `div.rn`'s reciprocal, refinement and range check (tests/test_quantize_division.py checks the
    arithmetic exactly). Not under the CPU interpreter, whose fma rounds twice."""
    q = x * r
    return tl.fma(tl.fma(-q, s, x), r, q)


@triton.jit
def _quantize_tile(x, mask, QMAX: tl.constexpr, EXACT: tl.constexpr, BRANCH: tl.constexpr):
    """(int8 tile, fp32 scale) of an fp32 tile: symmetric, one scale; masked elements do not count.

    A scale under 2^-64 (see _div_rn) takes `div_rn` in a runtime branch (BRANCH), or lifts the scale and the tile
    by 2^100 first (exact: a power of two, the same quotient), which holds half the registers: the int8 pass's
    choice. The fp8 pass keeps the branch, with which it measured faster (kernels/fp8_prepass.py)."""
    x = tl.where(mask, x, 0.0)
    amax = tl.max(tl.max(tl.abs(x), 1), 0)
    scale = tl.where(amax > 0, tl.math.div_rn(amax, amax * 0 + QMAX), 1.0)
    if EXACT:
        r = tl.math.div_rn(x, x * 0 + scale)
    elif BRANCH:
        if scale < _MARKSTEIN_MIN:
            r = tl.math.div_rn(x, x * 0 + scale)
        else:
            r = _div_rn(x, scale, tl.math.div_rn(scale * 0 + 1.0, scale))
    else:
        lift = tl.where(scale < _MARKSTEIN_MIN, _LIFT, 1.0)
        s = scale * lift
        r = _div_rn(x * lift, s, tl.math.div_rn(s * 0 + 1.0, s))
    r = (r + _RNE) - _RNE
    r = tl.minimum(tl.maximum(r, -QMAX), QMAX)
    return r.to(tl.int8), scale


@triton.jit
def _quantize_block(X, XMEAN, X8, XS, b, h, bh, j, offs, offs_d, mask, stride_b, stride_h, stride_l, L, N,
                    HEAD_DIM: tl.constexpr, SMOOTH: tl.constexpr, EXACT: tl.constexpr):
    """int8 x (minus its channel mean XMEAN where SMOOTH) and its scale for spec block j of one (batch, head)."""
    x = tl.load(X + b * stride_b + h * stride_h + offs[:, None] * stride_l + offs_d[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    if SMOOTH:
        x = x - tl.load(XMEAN + bh * HEAD_DIM + offs_d)[None, :]
    x8, xs = _quantize_tile(x, mask, 127.0, EXACT, False)
    tl.store(X8 + (bh * L + offs[:, None]) * HEAD_DIM + offs_d[None, :], x8, mask=mask)
    tl.store(XS + bh * N + j, xs)


@triton.jit
def _quantize_kernel(Q, K, V, KMEAN, VSCALE, Q8, K8, V8, QS, KS, stride_qb, stride_qh, stride_ql,
                     stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl, L, N, HEADS, LP,
                     BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, WITH_V: tl.constexpr, EXACT: tl.constexpr):
    """Q8, K8 (B, H, L, D) int8 and QS, KS (B, H, N) fp32 for spec block j of one (batch, head); WITH_V (the fp8
    pre-pass, kernels/fp8_prepass.py) also V8 = e4m3(v / VSCALE) stored (B, H, D, LP), tokens contiguous (the K-major
    operand of the P·V MMA), else V, VSCALE and V8 are None and LP unused.

    Without v, program axis 2 picks the tensor (0: q, 1: k): one block per program and the branch-free division keep
    a program at 107 registers on sm_90 (triton 3.8), so two programs share an SM and one's loads overlap the other's
    arithmetic (one program for q and k with the branch took 218 and ran alone; 0.137 -> 0.104 ms on Wan 1.3B, H200,
    bench/results/profile_prepass_8d8a14e.jsonl). With v, one program reads q, k and v together and divides with the
    branch: on the H200 faster than one program per tensor or one program without the branch (0.190 ms against
    0.208 and 0.226; profile_prepass_bc1cdeb, _961fa01, _8d8a14e)."""
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)  # without v: 0 q, 1 k
    b = bh // HEADS
    h = bh % HEADS
    offs = j * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs < L)[:, None]
    if WITH_V:
        # q and k spelled out rather than two `_quantize_block` calls: this order (both loads first) is the one
        # measured; the helper's load-quantize-store per tensor compiles to other PTX (sm_89/90/120), not timed
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs[:, None] * stride_ql + offs_d[None, :], mask=mask,
                    other=0.0)
        k = tl.load(K + b * stride_kb + h * stride_kh + offs[:, None] * stride_kl + offs_d[None, :], mask=mask,
                    other=0.0)
        mean = tl.load(KMEAN + bh * HEAD_DIM + offs_d)
        q8, qs = _quantize_tile(q.to(tl.float32), mask, 127.0, EXACT, True)
        k8, ks = _quantize_tile(k.to(tl.float32) - mean[None, :], mask, 127.0, EXACT, True)
        dst = (bh * L + offs[:, None]) * HEAD_DIM + offs_d[None, :]
        tl.store(Q8 + dst, q8, mask=mask)
        tl.store(K8 + dst, k8, mask=mask)
        tl.store(QS + bh * N + j, qs)
        tl.store(KS + bh * N + j, ks)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs[:, None] * stride_vl + offs_d[None, :], mask=mask,
                    other=0.0)
        vf = v.to(tl.float32)
        vs = tl.load(VSCALE + bh * HEAD_DIM + offs_d)
        dst_v = (bh * HEAD_DIM + offs_d[None, :]) * LP + offs[:, None]
        if EXACT:  # the CPU interpreter: div_rn and the software rounding (its e4m3 cast is not torch's)
            v8 = _to_e4m3(tl.math.div_rn(vf, vf * 0 + vs[None, :]), True)
        else:
            # Markstein's division and the hardware cast (round to nearest even, as torch). A channel whose scale is
            # under 2^-64 (see _div_rn) has its values and its scale multiplied by 2^100 first: exact (a power of
            # two; |v| <= 448 * scale), and the quotient stays the same. No runtime `if`: two e4m3 casts chosen by
            # one compiled to wrong values (triton 3.6, H200)
            lift = tl.where(vs < _MARKSTEIN_MIN, _LIFT, 1.0)
            s = vs * lift
            v8 = _div_rn(vf * lift[None, :], s[None, :], tl.math.div_rn(s * 0 + 1.0, s)[None, :]).to(tl.float8e4nv)
        # masked by LP (a multiple of 16, the row length of V8's storage) rather than L, so the store goes 16 bytes
        # at a time; the columns [L, LP) get e4m3 zeros, and no one reads them
        tl.store(V8 + dst_v, v8, mask=(offs < LP)[:, None])
    else:
        if part == 0:
            _quantize_block(Q, KMEAN, Q8, QS, b, h, bh, j, offs, offs_d, mask, stride_qb, stride_qh, stride_ql, L,
                            N, HEAD_DIM, False, EXACT)
        if part == 1:
            _quantize_block(K, KMEAN, K8, KS, b, h, bh, j, offs, offs_d, mask, stride_kb, stride_kh, stride_kl, L,
                            N, HEAD_DIM, True, EXACT)


STATS_SPAN = 512  # tokens per program of the k-mean pass (a multiple of its tile's rows); PrepassLaunch's default


@dataclass(frozen=True)
class PrepassLaunch:
    """Launch shapes of the int8-qk pre-pass: the k-sum pass (`k_mean`) and the quantize pass (`quantize_qk`).

    `bench/sweep_quant_passes.py` times the choices on the GPU. The sum's span and rows set the order of k's fp32
    additions (the mean's last bits); the quantize pass's warps leave its output bit for bit the same."""

    sum_span: int = STATS_SPAN  # tokens per k-sum program
    sum_rows: int = 32  # its tile: tokens per load
    sum_warps: int = 4
    warps: int = 8  # quantize pass at block 128 (block 64: 4)

    def __post_init__(self) -> None:
        for name in ("sum_span", "sum_rows", "sum_warps", "warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"PrepassLaunch.{name} must be a power of two, got {value}")
        if self.sum_span % self.sum_rows:
            raise ValueError(f"PrepassLaunch: sum_span {self.sum_span} must be a multiple of sum_rows {self.sum_rows}")

    def quantize_warps(self, block: int) -> int:
        """Warps of the quantize pass at spec block `block` (64 or 128)."""
        return self.warps if block == 128 else 4


PREPASS_LAUNCH = PrepassLaunch()  # the shipped shapes


@triton.jit
def _k_sum_kernel(K, KSUM, stride_kb, stride_kh, stride_kl, L, HEADS, SPLITS, SPAN: tl.constexpr,
                  BLOCK_L: tl.constexpr, HEAD_DIM: tl.constexpr):
    """KSUM[bh, s] = fp32 channel sums of k over tokens [s * SPAN, (s + 1) * SPAN) of one (batch, head)."""
    s = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HEADS
    h = bh % HEADS
    offs_d = tl.arange(0, HEAD_DIM)
    # an elementwise accumulator, reduced over tokens once at the end (a reduction per tile costs a barrier each)
    acc = tl.zeros([BLOCK_L, HEAD_DIM], dtype=tl.float32)
    for t in range(0, SPAN, BLOCK_L):
        offs = s * SPAN + t + tl.arange(0, BLOCK_L)
        k = tl.load(K + b * stride_kb + h * stride_kh + offs[:, None] * stride_kl + offs_d[None, :],
                    mask=(offs < L)[:, None], other=0.0)
        acc += k.to(tl.float32)
    tl.store(KSUM + (bh * SPLITS + s) * HEAD_DIM + offs_d, tl.sum(acc, 0))


def k_mean(k: torch.Tensor, launch: PrepassLaunch = PREPASS_LAUNCH) -> torch.Tensor:
    """(B, H, D) fp32 channel mean of k (B, H, L, D, unit last stride) over the sequence: the smoothing offset of the
    quantize pre-pass. Per span of `launch.sum_span` tokens a Triton program's fp32 sums, then torch adds the spans
    (deterministic: no atomics). Its rounding differs from `torch.mean`'s by the order of the additions (any offset
    smooths k exactly: q.(k - m) moves each query row's logits by one constant); on the H200, Wan 1.3B, 0.036 ms
    against torch.mean's 0.053 (bench/results/profile_prepass_bc1cdeb.jsonl; v's amax stays torch's aminmax, which a
    pass reading k and v together did not beat)."""
    bsz, nh, length, d = k.shape
    splits = triton.cdiv(length, launch.sum_span)
    ksum = torch.empty(bsz, nh, splits, d, dtype=torch.float32, device=k.device)
    _k_sum_kernel[(splits, bsz * nh)](k, ksum, k.stride(0), k.stride(1), k.stride(2), length, nh, splits,
                                      SPAN=launch.sum_span, BLOCK_L=launch.sum_rows, HEAD_DIM=d,
                                      num_warps=launch.sum_warps)
    return ksum.sum(dim=2) / length


def quantize_qk(q: torch.Tensor, k: torch.Tensor, block: int, launch: PrepassLaunch = PREPASS_LAUNCH) -> QuantizedQK:
    """`sparseflow.quantize.quantize_qk` on the device: (B, H, L, D) views with unit last stride -> int8 q and
    smoothed k (contiguous (B, H, L, D)) and their (B, H, N) scales, per spec block of `block` tokens."""
    return quantize_with_mean(q, k, k_mean(k, launch), block, launch)


def quantize_with_mean(q: torch.Tensor, k: torch.Tensor, mean: torch.Tensor, block: int,
                       launch: PrepassLaunch = PREPASS_LAUNCH) -> QuantizedQK:
    """`quantize_qk`'s quantize pass alone, given k's channel mean (B, H, D) fp32."""
    bsz, nh, length, d = q.shape
    n = triton.cdiv(length, block)
    q8 = torch.empty(bsz, nh, length, d, dtype=torch.int8, device=q.device)
    k8 = torch.empty_like(q8)
    qs = torch.empty(bsz, nh, n, dtype=torch.float32, device=q.device)
    ks = torch.empty_like(qs)
    _quantize_kernel[(n, bsz * nh, 2)](q, k, None, mean, None, q8, k8, None, qs, ks, q.stride(0), q.stride(1),
                                    q.stride(2), k.stride(0), k.stride(1), k.stride(2), 0, 0, 0, length, n, nh, 0,
                                    BLOCK=block, HEAD_DIM=d, WITH_V=False, EXACT=configs.INTERPRET,
                                    num_warps=launch.quantize_warps(block))
    return QuantizedQK(q8, k8, qs, ks, mean, block)


@triton.jit
def _logits(q, k, qk_scale, ks_row, start_n, BLOCK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Scaled log2-domain logits of a query tile and a key tile [start_n, start_n + BLOCK_N) (k as (D, BLOCK_N)).

    PRECISION 1 (int8-qk) and 2 (fp8): int8 x int8 -> int32 dot, then the key tile's block scale times qk_scale (which
    already holds the query block's scale); else the input dtype's dot times qk_scale."""
    if PRECISION >= 1:
        return tl.dot(q, k).to(tl.float32) * (qk_scale * tl.load(ks_row + start_n // BLOCK))
    else:
        return tl.dot(q, _op(k, UPCAST)) * qk_scale


@triton.jit
def _pooled_operand(q8, like, UPCAST: tl.constexpr):
    """int8 q as the operand of a dot with pooled means of `like`'s dtype (int8 values are exact in fp16/bf16);
    fp32 under the CPU interpreter, whose int8 -> bf16 cast is wrong (triton 3.8)."""
    if UPCAST:
        return q8.to(tl.float32)
    else:
        return q8.to(like.dtype.element_ty)


def smoothed_means(means: tuple[torch.Tensor, ...], k_mean: torch.Tensor,
                   v_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The pooled means (bkm, bvm, skm, svm) as the quantized kernel reads them: k means minus k's smoothing offset
    `k_mean` (B, H, D); with `v_scale` (B, H, D, precision fp8) v means divided by it. A 1-element placeholder (no
    such means in this call) passes through."""
    shift = k_mean[:, :, None]
    scale = None if v_scale is None else v_scale[:, :, None]
    bkm, bvm, skm, svm = means
    bkm, skm = ((m.float() - shift).to(m.dtype) if m.dim() == 4 else m for m in (bkm, skm))
    if scale is not None:
        bvm, svm = ((m.float() / scale).to(m.dtype) if m.dim() == 4 else m for m in (bvm, svm))
    return bkm, bvm, skm, svm
