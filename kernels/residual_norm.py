"""Fused residual add + LayerNorm + modulation: the elementwise passes between a Wan block's modules, in one launch.

What ComfyUI's `WanAttentionBlock.forward` runs between its modules in separate passes over the (B, L, C)
residual stream — `torch.addcmul(x, y, gate)` (gated residual), `norm(x)` (LayerNorm, with or without an
affine weight), `torch.addcmul(shift, n, 1 + scale)` (modulation) — is one read of each input row and one write
of each output row here. Each program takes BLOCK_T tokens and their whole rows of C channels:

    s = x + y * gate    (HAS_Y; gate = 1 without HAS_GATE)   stored to s_ptr, rounded to the stream's dtype
    n = LayerNorm(s) [* w + b]                               (NORM [, AFFINE]), statistics in fp32
    n = shift + n * (1 + scale)                              (MODULATE)        stored to n_ptr

Roundings follow ComfyUI's op sequence, so the output equals its ops up to the order of the fp32 sums: the sum
is rounded before the norm reads it, the norm's output is rounded before the modulation, and `1 + scale` is
rounded as torch rounds it. gate / shift / scale rows are per token or one per batch (token stride 0).
Reference: `sparseflow.residual_norm.add_norm_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import INTERPRET

__all__ = ["add_norm"]


@triton.jit
def _add_norm_kernel(x_ptr, y_ptr, g_ptr, w_ptr, b_ptr, sh_ptr, sc_ptr, s_ptr, n_ptr,
                     s_xb, s_xl, s_xc, s_yb, s_yl, s_gb, s_gl, s_shb, s_shl, s_scb, s_scl, s_ob, s_ol,
                     rows, L, eps,
                     C: tl.constexpr, HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, NORM: tl.constexpr,
                     AFFINE: tl.constexpr, MODULATE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)               # flat token index b * L + l
    t_ok = t < rows
    b = t // L
    l_idx = t - b * L
    col = tl.arange(0, BLOCK_C)
    c_ok = col < C
    ok = t_ok[:, None] & c_ok[None, :]
    out_off = b[:, None] * s_ob + l_idx[:, None] * s_ol + col[None, :]
    # x's channel stride is 1 but in Wan's first block, whose stream is still channel-major (patch embedding's
    # transpose); Triton specialises a stride of 1, so the usual case keeps contiguous, vectorised loads
    x = tl.load(x_ptr + b[:, None] * s_xb + l_idx[:, None] * s_xl + col[None, :] * s_xc, mask=ok, other=0.0)
    dtype = x.dtype
    x = x.to(tl.float32)
    if HAS_Y:
        y = tl.load(y_ptr + b[:, None] * s_yb + l_idx[:, None] * s_yl + col[None, :], mask=ok, other=0.0)
        y = y.to(tl.float32)
        if HAS_GATE:
            g = tl.load(g_ptr + b[:, None] * s_gb + l_idx[:, None] * s_gl + col[None, :], mask=ok, other=0.0)
            x = x + y * g.to(tl.float32)
        else:
            x = x + y
        xs = x.to(dtype)
        tl.store(s_ptr + out_off, xs, mask=ok)
        x = xs.to(tl.float32)                               # the norm reads the rounded sum, as ComfyUI's does
    if NORM:
        mean = tl.sum(x, axis=1) / C
        d = tl.where(ok, x - mean[:, None], 0.0)
        var = tl.sum(d * d, axis=1) / C
        n = d * (1.0 / tl.sqrt(var + eps))[:, None]
        if AFFINE:
            w = tl.load(w_ptr + col, mask=c_ok, other=0.0).to(tl.float32)
            bias = tl.load(b_ptr + col, mask=c_ok, other=0.0).to(tl.float32)
            n = n * w[None, :] + bias[None, :]
        if MODULATE:
            n = n.to(dtype).to(tl.float32)                  # LayerNorm's output, rounded
            sh = tl.load(sh_ptr + b[:, None] * s_shb + l_idx[:, None] * s_shl + col[None, :], mask=ok, other=0.0)
            sc = tl.load(sc_ptr + b[:, None] * s_scb + l_idx[:, None] * s_scl + col[None, :], mask=ok, other=0.0)
            one_sc = (sc.to(tl.float32) + 1.0).to(dtype).to(tl.float32)   # torch's `1 + scale`, rounded
            n = sh.to(tl.float32) + n * one_sc
        tl.store(n_ptr + out_off, n.to(dtype), mask=ok)


def launch_shape(c: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_C, num_warps): about 4K elements per program (a whole row where it is longer) and 4 warps on
    the GPU, two tokens in the interpreter. For 14B's 8192-wide rows 4 warps against 8 (H200, B=2; sweep in
    bench/results/sweep_passes_h200_99e7aeb.txt): norm1 0.743 ms against 0.824, the adds within 1 %."""
    block_c = triton.next_power_of_2(c)
    if INTERPRET:
        return 2, block_c, 1
    return max(1, 4096 // block_c), block_c, 4


def _row_strides(t: torch.Tensor | None, length: int) -> tuple[int, int]:
    """(batch, token) strides of a (B or 1, L or 1, C) row tensor; 0 along a broadcast dim."""
    if t is None:
        return 0, 0
    sb = t.stride(0) if t.shape[0] > 1 else 0
    sl = t.stride(1) if t.shape[1] > 1 or length == 1 else 0
    return sb, sl


def add_norm(x: torch.Tensor, y: torch.Tensor | None, gate: torch.Tensor | None, norm: bool,
             weight: torch.Tensor | None, bias: torch.Tensor | None, shift: torch.Tensor | None,
             scale: torch.Tensor | None, eps: float,
             out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(s, n): s = x + y * gate (x itself when y is None), n = [modulated] LayerNorm(s) or None.

    x: (B, L, C), any strides; y: (B, L, C) with unit last stride; gate / shift / scale: (B or 1, L or 1, C)
    with unit last stride; weight, bias: (C,) contiguous or None. s and n are new contiguous tensors in x's dtype,
    except that a gated add without a norm writes s into `out` when given: a (B, L, C) tensor of x's dtype with unit
    last stride, which may be x itself (each program reads its rows before it writes them).
    Callers check shapes and dtypes (`sparseflow.residual_norm.add_norm_reason`).
    """
    bsz, length, c = x.shape
    rows = bsz * length
    if out is None:
        s = torch.empty((bsz, length, c), dtype=x.dtype, device=x.device) if y is not None else x
    elif norm or y is None or out.shape != x.shape or out.stride(-1) != 1 or out.dtype != x.dtype:
        raise ValueError("kernels.residual_norm.add_norm: `out` takes a (B, L, C) tensor of x's dtype with unit last "
                         "stride, for an add without a norm")
    else:
        s = out
    n = torch.empty((bsz, length, c), dtype=x.dtype, device=x.device) if norm else None
    written = n if n is not None else s  # the kernel's output rows: their strides
    block_t, block_c, warps = launch_shape(c)
    grid = (triton.cdiv(rows, block_t),)
    dummy = x
    _add_norm_kernel[grid](
        x, y if y is not None else dummy, gate if gate is not None else dummy,
        weight if weight is not None else dummy, bias if bias is not None else dummy,
        shift if shift is not None else dummy, scale if scale is not None else dummy,
        s, n if n is not None else dummy,
        x.stride(0), x.stride(1), x.stride(2), *_row_strides(y, length),
        *_row_strides(gate, length), *_row_strides(shift, length), *_row_strides(scale, length),
        written.stride(0), written.stride(1),
        rows, length, float(eps),
        C=c, HAS_Y=y is not None, HAS_GATE=gate is not None, NORM=bool(norm), AFFINE=weight is not None,
        MODULATE=shift is not None, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=warps)
    return s, n
