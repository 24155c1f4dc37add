"""Key-block ranges of a sparse query block, from the geometry scalars alone (Triton helpers of the fused kernel).

Mirrors `sparseflow.masks.key_block_ranges`: prefix, anchor frames, temporal window, suffix, each a half-open
range of spec blocks; `_clip` sweeps them in start order so a block covered twice is computed once, and
`_drop_tail` takes the last, partial key block (keys past L) out of its range so that the fused kernel's
main loop needs no key mask; `_lut_clean` says the same of a top-k LUT row. `_query_block` gives a query
block's tokens, route (Rule E) and frames, and `_structural_ranges` puts the ranges together for it: the fused
kernel walks those ranges, and the compensation pre-pass (`kernels/prepass.py` `compensation_bias`) marks their
blocks as not pooled, from the same code.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_anchor_piece", "_clip", "_drop_tail", "_frame_blocks", "_lut_clean", "_query_block", "_structural_ranges"]


@triton.jit
def _clip(s, e, cur):
    """Part of block range [s, e) past `cur` (sweep over ranges in start order); returns (start, count, cur)."""
    s2 = tl.maximum(s, cur)
    n = tl.maximum(e - s2, 0)
    cur2 = tl.where(e > s, tl.maximum(cur, e), cur)
    return s2, n, cur2


@triton.jit
def _frame_blocks(f_lo, f_hi, P, F, T, BLOCK: tl.constexpr):
    """Half-open range of spec blocks holding tokens of frames [f_lo, f_hi] (clamped); (0, 0) if none."""
    lo = tl.maximum(f_lo, 0)
    hi = tl.minimum(f_hi, T - 1)
    s = (P + lo * F) // BLOCK
    e = (P + (hi + 1) * F + BLOCK - 1) // BLOCK
    ok = lo <= hi
    return tl.where(ok, s, 0), tl.where(ok, e, 0)


@triton.jit
def _anchor_piece(ANCHORS, IDX: tl.constexpr, fl, fh, off, P, F, T, BLOCK: tl.constexpr):
    """Clipped block range of anchor IDX: taken in the pass before the window (a < fl) and after it (a > fh)."""
    a = tl.load(ANCHORS + IDX)
    live = (a >= 0) & (a < T) & (off == 0)
    s, e = _frame_blocks(a, a, P, F, T, BLOCK)
    below = live & (a < fl)
    above = live & (a > fh)
    return s, e, below, above


@triton.jit
def _drop_tail(s, n, tail, N):
    """Range (s, n) without block N-1 when `tail` (the last block is partial) and the range ends there.

    Ranges are disjoint after `_clip`, so at most one of them loses the block; returns (n, dropped).
    """
    hit = tail & (n > 0) & (s + n == N)
    return n - hit.to(tl.int32), hit


@triton.jit
def _lut_clean(lut_row, kq, N, tail):
    """True when the first kq LUT entries are all valid blocks and none is the partial last block."""
    bad = kq < 0
    for c in range(0, (kq + 63) // 64):
        j = c * 64 + tl.arange(0, 64)
        sel = tl.load(lut_row + j, mask=j < kq, other=0)
        bad = bad | (tl.sum(((sel < 0) | (tail & (sel == N - 1))).to(tl.int32), 0) > 0)
    return ~bad


@triton.jit
def _query_block(i, route, P, F, T, L, BLOCK: tl.constexpr):
    """Query block i's tokens [t0, t1), the route it runs (Rule E: a block holding extra tokens runs dense, 0) and
    the frames [flo, fhi] its video tokens span."""
    t0 = i * BLOCK
    t1 = tl.minimum(t0 + BLOCK, L)
    VE = P + T * F
    eff = tl.where((t0 < P) | (t1 > VE), 0, route)
    flo = (tl.maximum(t0, P) - P) // F
    fhi = (tl.minimum(t1, VE) - 1 - P) // F
    return t0, t1, eff, flo, fhi


@triton.jit
def _structural_ranges(eff, window, flo, fhi, ANCHORS, LUT_ONLY, P, F, T, N, L, BLOCK: tl.constexpr):
    """The disjoint key-block ranges (start, count) x 7 of a query block of frames [flo, fhi] with route `eff`
    (0 dense: one range over all blocks; 1 sparse: prefix, anchors 0-3, window, suffix; LUT_ONLY: none)."""
    VE = P + T * F
    is_dense = eff == 0
    off = (is_dense | (LUT_ONLY != 0)).to(tl.int32)
    fl = tl.maximum(flo - window, 0)
    fh = tl.minimum(fhi + window, T - 1)
    ws, we = _frame_blocks(fl, fh, P, F, T, BLOCK)
    ws = tl.where(is_dense, 0, ws)
    we = tl.where(is_dense, N, tl.where(LUT_ONLY != 0, ws, we))
    pe = tl.where((off != 0) | (P == 0), 0, (P + BLOCK - 1) // BLOCK)
    ss = VE // BLOCK
    se = tl.where((off != 0) | (VE >= L), ss, N)
    a0s, a0e, a0b, a0a = _anchor_piece(ANCHORS, 0, fl, fh, off, P, F, T, BLOCK)
    a1s, a1e, a1b, a1a = _anchor_piece(ANCHORS, 1, fl, fh, off, P, F, T, BLOCK)
    a2s, a2e, a2b, a2a = _anchor_piece(ANCHORS, 2, fl, fh, off, P, F, T, BLOCK)
    a3s, a3e, a3b, a3a = _anchor_piece(ANCHORS, 3, fl, fh, off, P, F, T, BLOCK)
    cur = pe * 0
    s0, n0, cur = _clip(cur, pe, cur)
    s1, n1, cur = _clip(a0s, tl.where(a0b, a0e, a0s), cur)
    s2, n2, cur = _clip(a1s, tl.where(a1b, a1e, a1s), cur)
    s3, n3, cur = _clip(a2s, tl.where(a2b, a2e, a2s), cur)
    s4, n4, cur = _clip(a3s, tl.where(a3b, a3e, a3s), cur)
    s5, n5, cur = _clip(ws, we, cur)
    u1, m1, cur = _clip(a0s, tl.where(a0a, a0e, a0s), cur)
    u2, m2, cur = _clip(a1s, tl.where(a1a, a1e, a1s), cur)
    u3, m3, cur = _clip(a2s, tl.where(a2a, a2e, a2s), cur)
    u4, m4, cur = _clip(a3s, tl.where(a3a, a3e, a3s), cur)
    s6, n6, cur = _clip(ss, se, cur)
    # an anchor is either before or after the window: one piece slot each
    s1 = tl.where(a0b, s1, u1)
    s2 = tl.where(a1b, s2, u2)
    s3 = tl.where(a2b, s3, u3)
    s4 = tl.where(a3b, s4, u4)
    return s0, n0, s1, n1 + m1, s2, n2 + m2, s3, n3 + m3, s4, n4 + m4, s5, n5, s6, n6
