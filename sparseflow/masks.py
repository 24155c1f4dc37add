"""Block masks of SparseFlow attention as contiguous key-block ranges, top-k LUTs and density counts.

docs/spec.md §3-§6. The structural mask (temporal window + anchor frames + extra tokens) is a union of
a few contiguous key-block ranges per query block, computed from the geometry with integer arithmetic:
no L x L or N x N tensor (the dense block mask below exists for top-k scoring and tests only).
Top-k selection follows SLA's pooled block scores (thu-ml/SLA `get_block_map`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .geometry import Geometry
from .plan import DENSE, LINEAR, SPARSE, AttentionPlan

__all__ = [
    "BlockTables",
    "block_means",
    "block_tables",
    "density",
    "frame_block_range",
    "key_block_ranges",
    "merge_ranges",
    "num_blocks",
    "pair_counts",
    "structural_block_mask",
    "topk_lut",
]


def num_blocks(length: int, block: int) -> int:
    return -(-length // block)


class BlockTables:
    """Per-block facts of one geometry and block size: frame span, extra-token flag, token count."""

    def __init__(self, geometry: Geometry, block: int) -> None:
        g = geometry
        self.geometry, self.block = g, block
        self.n = num_blocks(g.length, block)
        v0, v1 = g.prefix, g.prefix + g.video_tokens  # video tokens are [v0, v1)
        self.flo, self.fhi, self.has_extra, self.count = [], [], [], []
        for j in range(self.n):
            t0, t1 = j * block, min((j + 1) * block, g.length)
            a, b = max(t0, v0), min(t1, v1)
            if a < b:
                self.flo.append((a - v0) // g.tokens_per_frame)
                self.fhi.append((b - 1 - v0) // g.tokens_per_frame)
            else:
                self.flo.append(-1)
                self.fhi.append(-1)
            self.has_extra.append(t0 < v0 or t1 > v1)
            self.count.append(t1 - t0)


@lru_cache(maxsize=64)
def block_tables(geometry: Geometry, block: int) -> BlockTables:
    return BlockTables(geometry, block)


def frame_block_range(geometry: Geometry, block: int, f_lo: int, f_hi: int) -> tuple[int, int]:
    """Half-open range of blocks holding at least one token of frames [f_lo, f_hi] (clamped); (0, 0) if none."""
    f_lo, f_hi = max(f_lo, 0), min(f_hi, geometry.frames - 1)
    if f_lo > f_hi:
        return (0, 0)
    t0 = geometry.prefix + f_lo * geometry.tokens_per_frame
    t1 = geometry.prefix + (f_hi + 1) * geometry.tokens_per_frame
    return (t0 // block, -(-t1 // block))


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent union of half-open ranges; empty ranges dropped."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(r for r in ranges if r[0] < r[1]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _extra_ranges(geometry: Geometry, block: int) -> list[tuple[int, int]]:
    n = num_blocks(geometry.length, block)
    ranges = []
    if geometry.prefix:
        ranges.append((0, -(-geometry.prefix // block)))
    if geometry.suffix:
        ranges.append(((geometry.prefix + geometry.video_tokens) // block, n))
    return ranges


@lru_cache(maxsize=4096)
def key_block_ranges(geometry: Geometry, block: int, i: int, window: int,
                     anchors: tuple[int, ...] = (0,)) -> tuple[tuple[int, int], ...]:
    """Structural key-block set of query block `i` for a sparse head (spec §5.2), as merged ranges."""
    tab = block_tables(geometry, block)
    if tab.has_extra[i]:
        return ((0, tab.n),)
    ranges = [frame_block_range(geometry, block, tab.flo[i] - window, tab.fhi[i] + window)]
    ranges += [frame_block_range(geometry, block, a, a) for a in anchors if a < geometry.frames]
    ranges += _extra_ranges(geometry, block)
    return tuple(merge_ranges(ranges))


@lru_cache(maxsize=64)
def _structural_block_mask_cpu(geometry: Geometry, block: int, window: int, anchors: tuple[int, ...]) -> torch.Tensor:
    n = num_blocks(geometry.length, block)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for s, e in key_block_ranges(geometry, block, i, window, anchors):
            mask[i, s:e] = True
    return mask


def structural_block_mask(geometry: Geometry, block: int, window: int, anchors: tuple[int, ...] = (0,),
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) bool: True where query block i computes key block j structurally. For top-k and tests.

    Built once per (geometry, block, window, anchors): top-k calls it on every attention call. A new tensor
    is returned each time, so callers may modify it.
    """
    return _structural_block_mask_cpu(geometry, block, window, tuple(anchors)).to(device, copy=True)


def block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over the tokens of each block: (B, H, L, D) -> (B, H, N, D), fp32 or wider; short last block."""
    b, h, length, d = x.shape
    n = num_blocks(length, block)
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    pad = n * block - length
    if pad:
        x = torch.cat([x, x.new_zeros(b, h, pad, d)], dim=2)
    sums = x.view(b, h, n, block, d).sum(dim=3)
    counts = torch.full((n,), float(block), dtype=x.dtype, device=x.device)
    counts[-1] = block - pad
    return sums / counts[:, None]


def topk_lut(q: torch.Tensor, k: torch.Tensor, plan: AttentionPlan) -> torch.Tensor | None:
    """Content-selected key blocks per (batch, head, query block), spec §5.2 "Top-k".

    Returns a (B, H, N, K) int32 LUT (K = largest topk of a sparse head), each row sorted ascending and
    padded with -1, or None when no sparse head asks for top-k. Heads that are not sparse get all -1.
    """
    kmax = max((t for r, t in zip(plan.routes, plan.topk) if r == SPARSE), default=0)
    if kmax == 0:
        return None
    bsz, heads, length, _ = q.shape
    n = num_blocks(length, plan.block)
    lut = torch.full((bsz, heads, n, kmax), -1, dtype=torch.int32, device=q.device)
    qm, km = block_means(q, plan.block), block_means(k, plan.block)
    for (route, window, topk), hs in plan.groups().items():
        if route != SPARSE or topk == 0:
            continue
        idx = torch.tensor(hs, device=q.device)
        score = qm[:, idx] @ km[:, idx].transpose(-1, -2)  # (B, h, N, N)
        struct = structural_block_mask(plan.geometry, plan.block, window, plan.live_anchors, q.device)
        score = score.masked_fill(struct, float("-inf"))
        kk = min(topk, n)
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :kk]
        picked = torch.gather(score, -1, order) > float("-inf")
        order = torch.where(picked, order, torch.full_like(order, n))  # sort the -1 padding to the end
        order = torch.sort(order, dim=-1).values
        order = torch.where(order == n, torch.full_like(order, -1), order)
        lut[:, idx, :, :kk] = order.to(torch.int32)
    return lut


@lru_cache(maxsize=1024)
def _sparse_pairs(geometry: Geometry, block: int, window: int, anchors: tuple[int, ...]) -> int:
    n = num_blocks(geometry.length, block)
    return sum(e - s for i in range(n) for s, e in key_block_ranges(geometry, block, i, window, anchors))


@lru_cache(maxsize=256)
def _linear_counts(geometry: Geometry, block: int, kind: str, own_block: bool) -> tuple[int, int]:
    """(exact pairs, pooled reads in pair units) of one linear head over all query blocks (spec §6)."""
    g = geometry
    tab = block_tables(g, block)
    extra_blocks = sum(e - s for s, e in merge_ranges(_extra_ranges(g, block)))
    pairs = reads = 0
    for i in range(tab.n):
        if tab.has_extra[i]:
            pairs += tab.n  # rule E: computed densely
        elif kind == "feature":
            reads += 3  # phi(q) S_f and phi(q) z_f (block x D^2 each: a pair's work at D = block) + the state pass
        else:
            ranges = (frame_block_range(g, block, f, f) for f in range(tab.flo[i], tab.fhi[i] + 1))
            segments = sum(e - s for s, e in ranges)
            pairs += int(own_block) + extra_blocks  # own block's frame tokens, the extra tokens: exact
            reads += math.ceil(segments / block)  # the pooled segments of the query's frames
    return pairs, reads


@lru_cache(maxsize=256)
def _compensation_reads(geometry: Geometry, block: int) -> int:
    """Pooled reads of the compensation pass of one sparse head: ceil(N/block) per query block (spec §6)."""
    tab = block_tables(geometry, block)
    return sum(not extra for extra in tab.has_extra) * math.ceil(tab.n / block)


def pair_counts(plan: AttentionPlan, lut: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """Per head: (exact (query block, key block) pairs, cost in pair units) for one batch element (spec §6).

    Exact pairs are the pairs with at least one exact logit: density counts them, so it is at most 1 on every
    route. The cost adds the pooled reads (a sparse head's compensation pass, a linear head's pooled segments or
    feature state) at one pair per `block` pooled keys; it is what calibration minimises and what one call
    costs. With a LUT, top-k pairs are counted from batch element 0. The structural counts are cached per
    (geometry, block, window, anchors): this runs on every patched call.
    """
    g, block = plan.geometry, plan.block
    n = num_blocks(g.length, block)
    pairs, cost = [], []
    lut_pairs = (lut[0] >= 0).sum(dim=(1, 2)).tolist() if lut is not None else None
    for h, (route, window) in enumerate(zip(plan.routes, plan.window)):
        if route == DENSE:
            p, reads = n * n, 0
        elif route == SPARSE:
            p = _sparse_pairs(g, block, window, plan.live_anchors)
            if lut_pairs is not None:
                p += int(lut_pairs[h])
            reads = _compensation_reads(g, block) if plan.compensation else 0
        else:
            assert route == LINEAR
            p, reads = _linear_counts(g, block, plan.linear_kind, plan.linear_own_block)
        pairs.append(p)
        cost.append(p + reads)
    return pairs, cost


def density(plan: AttentionPlan, lut: torch.Tensor | None = None) -> float:
    """Mean over heads of exact pairs / N^2, in [0, 1] (spec §6)."""
    n = num_blocks(plan.geometry.length, plan.block)
    pairs, _ = pair_counts(plan, lut)
    return sum(pairs) / (len(pairs) * n * n)
