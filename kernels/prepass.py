"""Pre-pass of the fused kernel: per-call tables and pooled states (block means, linear segment means, feature states).

docs/spec.md §5.2 (compensation: block means of k and v), §5.3 (pooled linear: means of the segments
(frame f, block j); feature linear: per-frame sums of phi(k) v^T). Pooled means are made by one small
Triton kernel that reads each selected head's k and v once, through strides (no layout copy); the feature
state is a few fp32 einsums. Geometry tables depend only on (geometry, block, device) and are cached;
per-head tensors are cached on the plan, so a call with an unchanged plan uploads nothing. The compensation
bias (`compensation_bias`) gives each (sparse head, query block) a row over the N key blocks: log2 of the block's
token count where its mean is pooled, -1e30 where the block is computed exactly (one small Triton launch from the
fused kernel's own range code, so the kernel's compensation loop reads one value per column instead of testing
seven ranges).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..sparseflow.geometry import Geometry
from ..sparseflow.masks import num_blocks
from ..sparseflow.plan import DENSE, SPARSE, AttentionPlan
from ..sparseflow.reference import segment_table
from .ranges import _query_block, _structural_ranges

__all__ = ["MAX_ANCHORS", "GeometryTables", "compensation_bias", "feature_linear", "geometry_tables", "plan_tensors",
           "pooled_means"]

MAX_ANCHORS = 4  # live anchor frames the kernel reads (a fixed-size int32 tensor padded with -1)


class GeometryTables:
    """Device tables of one (geometry, block): pooled segments and spec blocks as token spans."""

    def __init__(self, g: Geometry, block: int, device: torch.device) -> None:
        seg = segment_table(g, block)
        fsize = g.tokens_per_frame
        start = torch.maximum(seg.block * block, g.prefix + seg.frame * fsize)
        stop = start + seg.count
        self.nseg = len(seg.frame)
        self.n = num_blocks(g.length, block)
        i32 = dict(dtype=torch.int32, device=device)
        self.seg_start, self.seg_stop = start.to(**i32), stop.to(**i32)
        self.seg_frame, self.seg_block = seg.frame.to(**i32), seg.block.to(**i32)
        self.seg_log2n = torch.log2(seg.count.double()).to(torch.float32).to(device)
        self.frame_first = torch.tensor(seg.first, **i32)
        blk = torch.arange(self.n)
        self.blk_start = (blk * block).to(**i32)
        self.blk_stop = torch.clamp((blk + 1) * block, max=g.length).to(**i32)


@lru_cache(maxsize=32)
def _tables(g: Geometry, block: int, device: str) -> GeometryTables:
    return GeometryTables(g, block, torch.device(device))


def geometry_tables(g: Geometry, block: int, device: torch.device) -> GeometryTables:
    return _tables(g, block, str(device))


def _head_cost(plan: AttentionPlan, h: int) -> float:
    """Key blocks one query block of head h reads, roughly: orders the launch so heavy heads start first."""
    g, block = plan.geometry, plan.block
    n = num_blocks(g.length, block)
    route = plan.routes[h]
    if route == DENSE:
        return float(n)
    per_frame = g.tokens_per_frame / block
    extra = math.ceil(g.prefix / block) + math.ceil(g.suffix / block)
    if route == SPARSE:
        frames = min(g.frames, 2 * plan.window[h] + 1 + len(plan.live_anchors))
        return min(float(n), (frames + 1) * per_frame + plan.topk[h] + extra)
    return 2.0 + extra


_PLAN_CACHE: dict = {}


def plan_tensors(plan: AttentionPlan, device: torch.device) -> dict[str, torch.Tensor]:
    """Per-head int32 routes/window/topk, the heavy-first head order and the padded anchors.

    Cached by plan value (plans are frozen and hashable), so a plan rebuilt by the custom op each call
    uploads nothing after its first use.
    """
    key = (plan, str(device))
    hit = _PLAN_CACHE.get(key)
    if hit is not None:
        return hit
    anchors = list(plan.live_anchors)
    if len(anchors) > MAX_ANCHORS:
        raise ValueError(f"fused_attention: at most {MAX_ANCHORS} anchor frames are supported, got {anchors}")
    order = sorted(range(plan.heads), key=lambda h: -_head_cost(plan, h))
    host = torch.tensor([list(plan.routes), list(plan.window), list(plan.topk), order], dtype=torch.int32)
    pad = torch.tensor(anchors + [-1] * (MAX_ANCHORS - len(anchors)), dtype=torch.int32)
    dev = host.to(device)
    out = {"routes": dev[0], "window": dev[1], "topk": dev[2], "head_order": dev[3], "anchors": pad.to(device)}
    if len(_PLAN_CACHE) >= 256:
        _PLAN_CACHE.clear()
    _PLAN_CACHE[key] = out
    return out


@triton.jit
def _pooled_mean_kernel(K, V, KM, VM, STARTS, STOPS, HEADS_SEL, stride_kb, stride_kh, stride_kl,
                        stride_vb, stride_vh, stride_vl, NP, BATCH, HEADS,
                        SPAN: tl.constexpr, HEAD_DIM: tl.constexpr):
    """KM[b, h, s] = mean of K[b, h, STARTS[s]:STOPS[s]] (same for V), fp32 sums, stored in KM's dtype."""
    s = tl.program_id(0)
    slot = tl.program_id(1)
    h = tl.load(HEADS_SEL + slot // BATCH).to(tl.int64)
    b = (slot % BATCH).to(tl.int64)
    a = tl.load(STARTS + s)
    e = tl.load(STOPS + s)
    offs = a + tl.arange(0, SPAN)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs < e)[:, None]
    kx = tl.load(K + b * stride_kb + h * stride_kh + offs[:, None] * stride_kl + offs_d[None, :], mask=mask, other=0.0)
    vx = tl.load(V + b * stride_vb + h * stride_vh + offs[:, None] * stride_vl + offs_d[None, :], mask=mask, other=0.0)
    inv = 1.0 / (e - a).to(tl.float32)
    dst = ((b * HEADS + h) * NP + s) * HEAD_DIM + offs_d
    tl.store(KM + dst, (tl.sum(kx.to(tl.float32), 0) * inv).to(KM.dtype.element_ty))
    tl.store(VM + dst, (tl.sum(vx.to(tl.float32), 0) * inv).to(VM.dtype.element_ty))


@triton.jit
def _comp_bias_kernel(CB, HEADS_SEL, ROUTES, WINDOW, ANCHORS, L, P, T, F, N, LUT_ONLY,
                      BLOCK: tl.constexpr, BLOCK_J: tl.constexpr):
    """CB[h, i, j] = log2(tokens of key block j) if query block i of head h pools block j, else -1e30 (spec §5.2)."""
    i = tl.program_id(0)
    h = tl.load(HEADS_SEL + tl.program_id(1))
    t0, t1, eff, flo, fhi = _query_block(i, tl.load(ROUTES + h), P, F, T, L, BLOCK)  # as the fused kernel
    s0, n0, s1, n1, s2, n2, s3, n3, s4, n4, s5, n5, s6, n6 = _structural_ranges(
        eff, tl.load(WINDOW + h), flo, fhi, ANCHORS, LUT_ONLY, P, F, T, N, L, BLOCK)
    log2_last = tl.log2((L - (N - 1) * BLOCK).to(tl.float32))
    log2_block = tl.log2(tl.zeros([], tl.float32) + BLOCK)
    row = CB + (h.to(tl.int64) * N + i) * N
    for c in range(0, tl.cdiv(N, BLOCK_J)):
        j = c * BLOCK_J + tl.arange(0, BLOCK_J)
        inside = ((j >= s0) & (j < s0 + n0)) | ((j >= s1) & (j < s1 + n1)) | ((j >= s2) & (j < s2 + n2))
        inside = inside | ((j >= s3) & (j < s3 + n3)) | ((j >= s4) & (j < s4 + n4))
        inside = inside | ((j >= s5) & (j < s5 + n5)) | ((j >= s6) & (j < s6 + n6))
        bias = tl.where(inside, -1.0e30, tl.where(j == N - 1, log2_last, log2_block))
        tl.store(row + j, bias, mask=j < N)


def compensation_bias(plan: AttentionPlan, pt: dict[str, torch.Tensor], heads: list[int], device: torch.device,
                      lut_only: bool = False) -> torch.Tensor:
    """(H, N, N) fp32: row (h, i) is log2 n_j over the key blocks j that query block i of sparse head h pools, and
    -1e30 over those it computes exactly (structural ranges; the LUT's blocks are taken out by the kernel). Rows of
    heads not listed, and of query blocks the kernel runs dense (Rule E), are not read; `pt` = `plan_tensors`;
    `lut_only` as `fused_attention`'s (no structural range: every block not in the LUT is pooled)."""
    g, block = plan.geometry, plan.block
    n = num_blocks(g.length, block)
    cb = torch.empty(plan.heads, n, n, dtype=torch.float32, device=device)
    if heads:
        _comp_bias_kernel[(n, len(heads))](
            cb, _head_list(tuple(heads), str(device)), pt["routes"], pt["window"], pt["anchors"], g.length, g.prefix,
            g.frames, g.tokens_per_frame, n, int(lut_only), BLOCK=block, BLOCK_J=128, num_warps=4)
    return cb


@lru_cache(maxsize=256)
def _head_list(heads: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(heads, dtype=torch.int32, device=device)


def pooled_means(k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor, stops: torch.Tensor,
                 heads: list[int], span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, NP, D) means of k and v over the token spans [starts, stops) for the listed heads.

    k and v are (B, H, L, D) views with unit last stride; rows of unlisted heads are left unwritten.
    """
    bsz, nh, _, d = k.shape
    npool = starts.numel()
    km = torch.empty(bsz, nh, npool, d, dtype=k.dtype, device=k.device)
    vm = torch.empty_like(km)
    if heads and npool:
        sel = _head_list(tuple(heads), str(k.device))
        _pooled_mean_kernel[(npool, bsz * len(heads))](
            k, v, km, vm, starts, stops, sel, k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), npool, bsz, nh, SPAN=span, HEAD_DIM=d, num_warps=4)
    return km, vm


def feature_linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, heads: list[int],
                   out: torch.Tensor, lse: torch.Tensor | None = None) -> None:
    """Spec §5.3 `feature` for the video rows of the listed heads, written into `out` (B, H, L, D); with `lse`
    (B, H, L), the log of each row's linear normaliser there too (the merge rule of `sparseflow/partials.py`).

    phi = elu + 1 in fp32; S_f = sum over frame f and the extra tokens of phi(k) v^T, z_f likewise.
    Rows of query blocks with extra tokens are overwritten afterwards by the fused kernel (Rule E).
    """
    g = plan.geometry
    idx = torch.tensor(heads, device=q.device)
    p, ve, fsize = g.prefix, g.prefix + g.video_tokens, g.tokens_per_frame
    qs, ks, vs = (t[:, idx].float() for t in (q, k, v))
    bsz, nh, _, d = qs.shape
    phi_q = F.elu(qs[:, :, p:ve]) + 1
    phi_k = F.elu(ks) + 1
    pk, vv = phi_k[:, :, p:ve].reshape(bsz, nh, g.frames, fsize, d), vs[:, :, p:ve].reshape(bsz, nh, g.frames, fsize, d)
    s = torch.einsum("bhtfd,bhtfe->bhtde", pk, vv)
    z = pk.sum(dim=3)
    if p or ve < g.length:
        ex = torch.cat([torch.arange(p), torch.arange(ve, g.length)]).to(q.device)
        s = s + torch.einsum("bhnd,bhne->bhde", phi_k[:, :, ex], vs[:, :, ex])[:, :, None]
        z = z + phi_k[:, :, ex].sum(dim=2)[:, :, None]
    pq = phi_q.reshape(bsz, nh, g.frames, fsize, d)
    num = torch.einsum("bhtfd,bhtde->bhtfe", pq, s)
    den = torch.einsum("bhtfd,bhtd->bhtf", pq, z)
    out[:, idx, p:ve] = (num / den[..., None]).reshape(bsz, nh, g.video_tokens, d).to(out.dtype)
    if lse is not None:
        lse[:, idx, p:ve] = torch.log(den).reshape(bsz, nh, g.video_tokens)
