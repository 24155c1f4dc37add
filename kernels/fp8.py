"""The fused kernel's `fp8` P·V tile step and e4m3 cast (Triton helpers, inlined into kernels/fused.py's kernel).

docs/spec.md §8; the math is `sparseflow/fp8.py` (e4m3 V per channel, e4m3 P relative to an integer log2 offset;
SageAttention 2's scheme, arXiv:2411.10958, our own code). The pre-pass that writes e4m3 v is
`kernels/fp8_prepass.py`.

The e4m3 cast: on a GPU `x.to(tl.float8e4nv)` is `cvt.rn.satfinite` (round to nearest even, saturating), torch's
rounding for values inside ±448. Triton 3.8's CPU interpreter rounds half up, truncates subnormals and wraps values
past the top binade, so there (and in the pre-pass everywhere) the value is first rounded to an e4m3 value in fp32
(`_round_e4m3`) and then cast, which is exact. The interpreter runs e4m3 dots (as fp16 products, fp32 sums: exact
for e4m3 operands).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..sparseflow.fp8 import P_SHIFT

__all__ = ["_fp8_values", "_pv_fp8", "_round_e4m3", "_scale_out", "_to_e4m3"]

_P_SHIFT = tl.constexpr(float(P_SHIFT))
_SUB = tl.constexpr(24576.0)  # 1.5 * 2^14: x + _SUB - _SUB rounds |x| < 2^13 to a multiple of 2^-9 (e4m3 subnormals)


@triton.jit
def _round_e4m3(x):
    """fp32 x rounded to the nearest e4m3 value (ties to even, saturated to ±448), as fp32.

    Normal range: drop 20 of fp32's 23 mantissa bits rounding to nearest even (a carry moves the exponent up, as it
    should); below 2^-6 the e4m3 step is the fixed 2^-9, rounded by the add-subtract trick."""
    x = tl.minimum(tl.maximum(x, -448.0), 448.0)
    raw = x.to(tl.int32, bitcast=True)
    bits = (raw + 0x7FFFF + ((raw >> 20) & 1)) & -0x100000
    normal = bits.to(tl.float32, bitcast=True)
    sub = (tl.abs(x) + _SUB) - _SUB
    # x's sign bit on it: a negative x that rounds to zero is -0 in e4m3, as torch casts it (not `-sub`, which
    # Triton compiles as 0 - sub, +0 for a zero)
    sub = (sub.to(tl.int32, bitcast=True) | (raw & -0x80000000)).to(tl.float32, bitcast=True)
    return tl.where(tl.abs(x) < 0.015625, sub, normal)


@triton.jit
def _to_e4m3(x, EXACT: tl.constexpr):
    """x as tl.float8e4nv: the hardware cast, or with EXACT (the CPU interpreter, the pre-pass) through
    `_round_e4m3`."""
    if EXACT:
        return _round_e4m3(x).to(tl.float8e4nv)
    else:
        return x.to(tl.float8e4nv)


@triton.jit
def _pv_fp8(acc, m_i, l_i, qk, qk_scale, v, UPCAST: tl.constexpr):
    """The online-softmax step of an exact key tile at precision fp8 (sparseflow/fp8.py): raw logits qk, e4m3 v.

    The running max moves by integers only, offset by P_SHIFT, so p = 2^(x - m) lies in (0, 2^P_SHIFT], alpha is a
    power of two and every tile's e4m3 P is the definition's whatever the tile order. l sums the unrounded p."""
    m_ij = tl.maximum(m_i, tl.math.ceil(tl.max(qk, 1) * qk_scale) - _P_SHIFT)
    p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    # two-level accumulation (SageAttention 2 §4.4): the e4m3 MMA's own accumulator keeps fewer bits than fp32 on
    # sm_89/sm_90, so each tile's P·V starts from zero and is added to the running fp32 acc in registers
    acc = acc * alpha[:, None] + tl.dot(_to_e4m3(p, UPCAST), v)
    l_i = l_i * alpha + tl.sum(p, 1)
    return acc, m_ij, l_i


@triton.jit
def _fp8_values(v, like, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """A value tile for a P·V in the input dtype (`like`'s; fp32 under the interpreter): e4m3 values are exact in
    fp16 and bf16, so linear heads' exact keys keep fp16 P at precision fp8."""
    if UPCAST:
        return v.to(tl.float32)
    elif PRECISION == 2:
        return v.to(like.dtype.element_ty)
    else:
        return v


@triton.jit
def _scale_out(out, VS, bh, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    """The epilogue's V scale (precision fp8: the output in units of v / scale times this head's channel scales)."""
    if PRECISION == 2:
        return out * tl.load(VS + bh * HEAD_DIM + tl.arange(0, HEAD_DIM))[None, :]
    else:
        return out

