"""Low-precision Q·K for SparseFlow: per-block INT8 quantization of q and of k smoothed by its channel mean.

docs/spec.md §8. The math the fused kernel's `int8-qk` path computes, in plain PyTorch (the reference quantizes
with this module; the kernel's pre-pass, `kernels/quant.py`, writes the same int8 values and scales):

1. k is smoothed: m = mean of k over the whole sequence, per (batch, head, channel); k_s = k - m. Every logit of
   a query row then drops by q·m, the same for all its keys (exact keys and pooled block / segment means alike),
   and softmax is invariant to a per-row constant, so the attention is unchanged while k_s has far smaller
   outliers to quantize. The idea is SageAttention's (Zhang et al., "SageAttention: Accurate 8-bit attention for
   plug-and-play inference acceleration", ICLR 2025, arXiv:2410.02367, §3.2 "smooth K"); this code is our own.
2. q and k_s are quantized per (batch, head, spec block of `block` tokens): scale = amax / 127 (fp32, correctly
   rounded), x8 = round-half-to-even(x / scale) in [-127, 127]; an all-zero block gets scale 1. The block is the
   plan's spec block (64 or 128 tokens), not the kernel's tile, so the values do not depend on the autotuner, and
   every key tile of the kernel lies inside one block: one scalar scale per tile.
3. logit = (q8 · k8) * (q_scale * k_scale) * softmax_scale: the int8 dot is exact in int32 (|sum| <= 128 * 127^2
   < 2^24, so exact in fp32 too), and the kernel folds q_scale * k_scale into its log2-domain scale.

P·V stays in the input dtype (fp16/bf16). The top-k LUT and the `feature` linear heads use the unquantized q, k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .plan import FP8, INT8_QK

__all__ = ["QuantizedQK", "dequantize", "int8_device_reason", "k_channel_mean", "quantize_blocks", "quantize_qk",
           "scale_from_amax"]

QMAX = 127.0


def k_channel_mean(k: torch.Tensor) -> torch.Tensor:
    """(B, H, D) fp32 mean of k (B, H, L, D) over the sequence: the reference's smoothing offset (accumulated in fp32
    without an fp32 copy of k; the kernels' pre-pass has its own pass, kernels/quant.py `k_mean`)."""
    return k.mean(dim=2, dtype=torch.float32)


def scale_from_amax(amax: torch.Tensor, top: float) -> torch.Tensor:
    """fp32 symmetric scale amax / top, correctly rounded on every device (as the Triton pre-pass's div_rn), 1 where
    amax is 0. A tensor divisor: torch on CUDA divides by a Python scalar as a multiply by its reciprocal, 1 ulp off
    the correctly rounded quotient; tensor / tensor is IEEE division on the CPU and on CUDA alike."""
    return torch.where(amax > 0, amax / torch.full_like(amax, top), torch.ones_like(amax))


def quantize_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 (B, H, L, D), fp32 scales (B, H, N)) of fp32 x (B, H, L, D), one symmetric scale per block of tokens."""
    b, h, length, d = x.shape
    n = -(-length // block)
    pad = torch.zeros(b, h, n * block - length, d, dtype=torch.float32, device=x.device)
    xb = torch.cat([x.float(), pad], dim=2).view(b, h, n, block, d)
    amax = xb.abs().amax(dim=(3, 4))
    scale = scale_from_amax(amax, QMAX)
    x8 = torch.round(xb / scale[..., None, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return x8.view(b, h, n * block, d)[:, :, :length], scale


def dequantize(x8: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 x8 * scale of its block (inverse of `quantize_blocks` up to the rounding)."""
    per_token = scale.repeat_interleave(block, dim=2)[:, :, : x8.shape[2]]
    return x8.float() * per_token[..., None]


@dataclass(frozen=True)
class QuantizedQK:
    """q and smoothed k of one call in int8 with their per-block scales; `k_mean` is the smoothing offset."""

    q8: torch.Tensor  # (B, H, L, D) int8
    k8: torch.Tensor  # (B, H, L, D) int8 of k - k_mean
    q_scale: torch.Tensor  # (B, H, N) fp32
    k_scale: torch.Tensor  # (B, H, N) fp32
    k_mean: torch.Tensor  # (B, H, D) fp32
    block: int

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k - k_mean) as the int8 path sees them, fp32."""
        return dequantize(self.q8, self.q_scale, self.block), dequantize(self.k8, self.k_scale, self.block)


def quantize_qk(q: torch.Tensor, k: torch.Tensor, block: int, precision: str = INT8_QK,
                k_mean: torch.Tensor | None = None) -> QuantizedQK:
    """The `int8-qk` quantization of (B, H, L, D) q and k, per spec block of `block` tokens (`fp8`'s Q·K too).
    `k_mean` (B, H, D) fp32: the smoothing offset to use (default `k_channel_mean(k)`; the kernels' pre-pass sums
    in another order, kernels/quant.py `k_mean`)."""
    if precision not in (INT8_QK, FP8):
        raise ValueError(f"quantize: precision must be {INT8_QK!r} or {FP8!r}, got {precision!r}")
    mean = k_channel_mean(k) if k_mean is None else k_mean
    q8, qs = quantize_blocks(q.float(), block)
    k8, ks = quantize_blocks(k.float() - mean[:, :, None], block)
    return QuantizedQK(q8, k8, qs, ks, mean, block)


def int8_device_reason(q: torch.Tensor | None = None) -> str | None:
    """Why the int8-qk path cannot run on q's CUDA device (the current one when q is None), or None: Triton's int8
    tensor-core dot needs compute capability 8.0+ (sm_75 cards have no int8 MMA path in Triton)."""
    if not torch.cuda.is_available():
        return None
    dev = q.device if q is not None and q.is_cuda else torch.device("cuda", torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 8:
        return f"precision 'int8-qk' needs compute capability 8.0+; {torch.cuda.get_device_name(dev)} is " \
               f"sm_{major}{minor} (use precision 'fp16')"
    return None
