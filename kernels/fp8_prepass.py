"""Quantize pre-pass of the fused kernel's `fp8` path: int8 q and smoothed k (as `int8-qk`) and e4m3 v (Triton).

docs/spec.md §8; the math is `sparseflow/quantize.py` and `sparseflow/fp8.py`. One program per (spec block,
batch x head) reads that block of q, k and v once and writes int8 q, int8 k - mean, e4m3 v / scale and the two
fp32 block scales (`kernels/quant.py`'s tile quantizer; `kernels/fp8.py`'s exact e4m3 rounding, so the values equal
torch's on the GPU and under the CPU interpreter alike). The per-channel V scale needs v's amax over the whole
sequence first: one torch reduction, as k's mean is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..sparseflow.fp8 import QuantizedV, fp8_device_reason, v_scale
from ..sparseflow.inputs import KernelLaunchError
from ..sparseflow.quantize import QuantizedQK, k_channel_mean
from . import configs
from .fp8 import _to_e4m3
from .quant import _quantize_tile

__all__ = ["Fp8Call", "quantize_call", "quantize_qkv"]


@triton.jit
def _quantize_qkv_kernel(Q, K, V, KMEAN, VSCALE, Q8, K8, V8, QS, KS, stride_qb, stride_qh, stride_ql,
                         stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl, L, N, HEADS,
                         BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Q8, K8 (B, H, L, D) int8, QS, KS (B, H, N) fp32 (as kernels/quant.py) and V8 = e4m3(v / VSCALE) (B, H, L, D)
    for spec block j of one (batch, head)."""
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HEADS
    h = bh % HEADS
    offs = j * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs < L)[:, None]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs[:, None] * stride_ql + offs_d[None, :], mask=mask, other=0.0)
    k = tl.load(K + b * stride_kb + h * stride_kh + offs[:, None] * stride_kl + offs_d[None, :], mask=mask, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs[:, None] * stride_vl + offs_d[None, :], mask=mask, other=0.0)
    mean = tl.load(KMEAN + bh * HEAD_DIM + offs_d)
    vs = tl.load(VSCALE + bh * HEAD_DIM + offs_d)
    q8, qs = _quantize_tile(q.to(tl.float32), mask, 127.0)
    k8, ks = _quantize_tile(k.to(tl.float32) - mean[None, :], mask, 127.0)
    vf = v.to(tl.float32)
    v8 = _to_e4m3(tl.math.div_rn(vf, vf * 0 + vs[None, :]), True)
    dst = (bh * L + offs[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(Q8 + dst, q8, mask=mask)
    tl.store(K8 + dst, k8, mask=mask)
    tl.store(V8 + dst, v8, mask=mask)
    tl.store(QS + bh * N + j, qs)
    tl.store(KS + bh * N + j, ks)


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> tuple[QuantizedQK, QuantizedV]:
    """`sparseflow.quantize.quantize_qk` and `sparseflow.fp8.quantize_v` on the device in one pass over (B, H, L, D)
    views with unit last stride: contiguous int8 q, smoothed k and e4m3 v, and their scales."""
    bsz, nh, length, d = q.shape
    n = triton.cdiv(length, block)
    mean = k_channel_mean(k).contiguous()
    vs = v_scale(v).contiguous()
    q8 = torch.empty(bsz, nh, length, d, dtype=torch.int8, device=q.device)
    k8 = torch.empty_like(q8)
    v8 = torch.empty(bsz, nh, length, d, dtype=torch.float8_e4m3fn, device=q.device)
    qs = torch.empty(bsz, nh, n, dtype=torch.float32, device=q.device)
    ks = torch.empty_like(qs)
    _quantize_qkv_kernel[(n, bsz * nh)](q, k, v, mean, vs, q8, k8, v8, qs, ks, q.stride(0), q.stride(1), q.stride(2),
                                        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                                        length, n, nh, BLOCK=block, HEAD_DIM=d, num_warps=8 if block == 128 else 4)
    return QuantizedQK(q8, k8, qs, ks, mean, block), QuantizedV(v8, vs)


@dataclass(frozen=True)
class Fp8Call:
    """The fused kernel's operands at precision fp8: int8 q, k8 with block scales, e4m3 v with its channel scale,
    and the pooled means as the kernel reads them (k means smoothed, v means divided by the V scale)."""

    q8: torch.Tensor
    k8: torch.Tensor
    v8: torch.Tensor
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    means: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # (bkm, bvm, skm, svm)


def quantize_call(q: torch.Tensor, qb: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor,
                  means: tuple[torch.Tensor, ...], block: int) -> Fp8Call:
    """The launcher's fp8 pre-pass: refuse a device without e4m3 tensor cores, quantize, rescale the pooled means
    (`means` = (bkm, bvm, skm, svm), (B, H, n, D) or a 1-element placeholder)."""
    if not configs.INTERPRET and (why := fp8_device_reason(q)):
        raise KernelLaunchError(f"fused_attention: {why}")
    qz, vz = quantize_qkv(qb, kb, vb, block)
    shift, vs = qz.k_mean[:, :, None], vz.scale[:, :, None]
    bkm, bvm, skm, svm = means
    if bkm.dim() == 4:
        bkm, bvm = (bkm.float() - shift).to(bkm.dtype), (bvm.float() / vs).to(bvm.dtype)
    if skm.dim() == 4:
        skm, svm = (skm.float() - shift).to(skm.dtype), (svm.float() / vs).to(svm.dtype)
    return Fp8Call(qz.q8, qz.k8, vz.v8, qz.q_scale, qz.k_scale, vz.scale, (bkm, bvm, skm, svm))
