"""Quantize pre-pass of the fused kernel's `fp8` path: int8 q and smoothed k (as `int8-qk`) and e4m3 v (Triton).

docs/spec.md §8; the math is `sparseflow/quantize.py` and `sparseflow/fp8.py`. The kernel is `kernels/quant.py`'s
with v (WITH_V): one program per (spec block, batch x head) reads that block of q, k and v once and writes int8 q,
int8 k - mean, e4m3 v / scale and the two fp32 block scales. v / scale is divided as q and k are (Markstein's
correction) and cast by the hardware's round-to-nearest-even on the GPU, rounded first by `kernels/fp8.py`'s
`_round_e4m3` under the CPU interpreter, so the values equal torch's on both. The per-channel V scale needs v's
amax over the whole sequence first: one torch reduction (k's mean is `kernels/quant.py` `k_mean`'s pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ..sparseflow.fp8 import QuantizedV, fp8_device_reason, v_scale
from ..sparseflow.inputs import KernelLaunchError
from ..sparseflow.quantize import QuantizedQK
from . import configs
from .quant import _quantize_kernel, k_mean, smoothed_means

__all__ = ["Fp8Call", "quantize_call", "quantize_qkv"]

V_ROW_ALIGN = 16  # tokens: e4m3 v's feature rows start 16 bytes apart (tensor descriptors' rule)


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> tuple[QuantizedQK, QuantizedV]:
    """`sparseflow.quantize.quantize_qk` and `sparseflow.fp8.quantize_v` on the device in one pass over (B, H, L, D)
    views with unit last stride: contiguous int8 q and smoothed k, e4m3 v, and their scales.

    e4m3 v is a (B, H, L, D) view of (B, H, D, LP) storage (tokens contiguous, LP = L rounded up to 16 so a feature
    row is 16-byte aligned for tensor descriptors): the P·V MMA's B operand K-major, which Hopper's e4m3 wgmma needs
    (an [L, D] tile would be transposed on chip every tile)."""
    bsz, nh, length, d = q.shape
    n = triton.cdiv(length, block)
    mean = k_mean(k)
    vs = v_scale(v).contiguous()
    q8 = torch.empty(bsz, nh, length, d, dtype=torch.int8, device=q.device)
    k8 = torch.empty_like(q8)
    lp = triton.cdiv(length, V_ROW_ALIGN) * V_ROW_ALIGN
    v8t = torch.empty(bsz, nh, d, lp, dtype=torch.float8_e4m3fn, device=q.device)
    qs = torch.empty(bsz, nh, n, dtype=torch.float32, device=q.device)
    ks = torch.empty_like(qs)
    _quantize_kernel[(n, bsz * nh)](q, k, v, mean, vs, q8, k8, v8t, qs, ks, q.stride(0), q.stride(1), q.stride(2),
                                    k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                                    length, n, nh, lp, BLOCK=block, HEAD_DIM=d, WITH_V=True, EXACT=configs.INTERPRET,
                                    num_warps=8 if block == 128 else 4)
    return QuantizedQK(q8, k8, qs, ks, mean, block), QuantizedV(v8t[..., :length].transpose(2, 3), vs)


@dataclass(frozen=True)
class Fp8Call:
    """The fused kernel's operands at precision fp8: int8 q, k8 with block scales, e4m3 v with its channel scale,
    and the pooled means as the kernel reads them (k means smoothed, v means divided by the V scale)."""

    q8: torch.Tensor
    k8: torch.Tensor
    v8: torch.Tensor  # (B, H, L, D) view, stride 1 along L (quantize_qkv)
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
    return Fp8Call(qz.q8, qz.k8, vz.v8, qz.q_scale, qz.k_scale, vz.scale, smoothed_means(means, qz.k_mean, vz.scale))
