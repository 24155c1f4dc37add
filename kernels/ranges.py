"""Key-block ranges of a sparse query block, from the geometry scalars alone (Triton helpers of the fused kernel).

Mirrors `sparseflow.masks.key_block_ranges`: prefix, anchor frames, temporal window, suffix, each a half-open
range of spec blocks; `_clip` sweeps them in start order so a block covered twice is computed once, and
`_drop_tail` takes the last, partial key block (keys past L) out of its range so that the fused kernel's
main loop needs no key mask; `_lut_clean` says the same of a top-k LUT row.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_anchor_piece", "_clip", "_drop_tail", "_frame_blocks", "_lut_clean"]


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
