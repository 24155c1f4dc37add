"""FP8 P·V for SparseFlow's `fp8` precision: V per channel and P in float8 e4m3, in plain PyTorch.

docs/spec.md §8. Q·K is `int8-qk`'s (sparseflow/quantize.py); this module is the P·V half, the math the fused
kernel's `fp8` path computes (its pre-pass `kernels/fp8.py` writes the same e4m3 values and scales). The scheme is
SageAttention 2's (Zhang et al., "SageAttention2: Efficient attention with thorough outlier smoothing and per-thread
INT4 quantization", ICML 2025, arXiv:2411.10958: FP8 P·V with fp32 accumulation, V scaled per channel, P scaled into
e4m3's range); this code is our own.

1. V is quantized per (batch, head, channel) over the whole sequence: scale = amax / 448 (fp32, correctly rounded;
   1 for an all-zero channel), v8 = e4m3(v / scale). `e4m3` is torch's float8_e4m3fn conversion (round to nearest
   even, subnormals kept) of the value saturated to ±448, which is what the GPU's `cvt.rn.satfinite` does.
2. P of exact keys is cast to e4m3 relative to an integer log2 offset: with the log2-domain logits x of a row and
   M = ceil(max of x over its exact keys) - 8, the numerator weight is e4m3(2^(x - M)) ∈ [0, 256]. P's scale of
   2^8 moves its small values out of e4m3's subnormals (without it every p < 2^-6 of the row maximum is rounded
   to a multiple of 2^-9); a power of two keeps the rounding independent of M (e4m3(2^n y) = 2^n e4m3(y) for normal
   values), so the kernel, whose running max only moves by integers, rounds exactly as this definition does
   whatever the order of its key tiles.
3. The normaliser is the unrounded sum of 2^(x - M) over all keys, pooled means (§5.2, §5.3) join with unrounded
   weights and V means not quantized, and the output is (sum e4m3(p) v8 + sum p vmean / scale) / sum p * scale:
   the V scale is applied once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantize import scale_from_amax

__all__ = ["E4M3_MAX", "P_SHIFT", "QuantizedV", "fp8_device_reason", "fp8_softmax_pv", "quantize_v", "to_e4m3"]

E4M3_MAX = 448.0
P_SHIFT = 8  # log2 of P's scale: exact-key weights lie in (0, 2^8] before the e4m3 cast
_LOG2E = 1.4426950408889634


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """fp32 x rounded to float8 e4m3 (saturated to ±448, then round to nearest even), as fp32 values."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def v_scale(v: torch.Tensor) -> torch.Tensor:
    """(B, H, D) fp32 scale of V (B, H, L, D): amax over the sequence / 448 per channel, 1 for an all-zero channel
    (aminmax reads v once without an |v| copy)."""
    lo, hi = torch.aminmax(v, dim=2)
    amax = torch.maximum(-lo, hi).float()
    return scale_from_amax(amax, E4M3_MAX)


@dataclass(frozen=True)
class QuantizedV:
    """V of one call in e4m3 with one fp32 scale per (batch, head, channel)."""

    v8: torch.Tensor  # (B, H, L, D) float8_e4m3fn
    scale: torch.Tensor  # (B, H, D) fp32

    def dequantized(self) -> torch.Tensor:
        """fp32 v8 * scale: V as the fp8 path's exact keys see it."""
        return self.v8.float() * self.scale[:, :, None]


def quantize_v(v: torch.Tensor) -> QuantizedV:
    """The `fp8` quantization of (B, H, L, D) v."""
    scale = v_scale(v)
    v8 = (v.float() / scale[:, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return QuantizedV(v8, scale)


def fp8_softmax_pv(exact_logits: list[torch.Tensor], exact_values: list[torch.Tensor],
                   pooled_logits: list[torch.Tensor], pooled_values: list[torch.Tensor],
                   p_shift: int = P_SHIFT) -> torch.Tensor:
    """softmax(logits) @ values with the exact keys' P in e4m3 (module docstring, step 2-3).

    Logits are natural-log-domain scaled logits (..., rows, n) with -inf for masked keys; exact values are V
    dequantized (`QuantizedV.dequantized`), pooled values the unquantized means. `p_shift` is log2 of P's scale
    (the kernel's is `P_SHIFT`; other values are for measuring what the scale buys)."""
    xe = torch.cat(exact_logits, dim=-1) * _LOG2E
    xp = torch.cat(pooled_logits, dim=-1) * _LOG2E if pooled_logits else xe[..., :0]
    mx = xe.amax(dim=-1, keepdim=True)
    top = torch.maximum(mx, xp.amax(dim=-1, keepdim=True)) if xp.shape[-1] else mx
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    m = torch.where(torch.isfinite(mx), torch.ceil(mx) - p_shift, top)  # the kernel's running max after exact keys
    we, wp = torch.exp2(xe - top), torch.exp2(xp - top)  # common factor 2^(m - top) taken out of every weight
    num = (to_e4m3(torch.exp2(xe - m)) * torch.exp2(m - top)) @ torch.cat(exact_values, dim=-2)
    if pooled_logits:
        num = num + wp @ torch.cat(pooled_values, dim=-2)
    return num / (we.sum(dim=-1, keepdim=True) + wp.sum(dim=-1, keepdim=True))


def fp8_device_reason(q: torch.Tensor | None = None) -> str | None:
    """Why the fp8 path cannot run on q's CUDA device (the current one when q is None), or None: Triton's e4m3
    tensor-core dot needs compute capability 8.9+ (sm_89 Ada, sm_90 Hopper, sm_100 / sm_120 Blackwell)."""
    if not torch.cuda.is_available():
        return None
    dev = q.device if q is not None and q.is_cuda else torch.device("cuda", torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(dev)
    if (major, minor) < (8, 9):
        return f"precision 'fp8' needs compute capability 8.9+ (Ada, Hopper, Blackwell); " \
               f"{torch.cuda.get_device_name(dev)} is sm_{major}{minor} (use precision 'int8-qk' or 'fp16')"
    return None
