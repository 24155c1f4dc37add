"""The SparseFlow operator in plain PyTorch: the definition every kernel is checked against.

docs/spec.md §5 (§8: precision "int8-qk" takes the logits from int8 q and mean-smoothed k, sparseflow/quantize.py;
the pooled means are of the smoothed k, unquantized; "fp8" adds e4m3 V and P for the exact keys' P·V,
sparseflow/fp8.py). Chunked over query blocks and gathering only the key blocks
each one computes, so it runs at Wan-1.3B 480p size on a GPU without an L x L tensor. Computes in fp32 (fp64 for
fp64 input).
Same signature as the Triton launcher (`kernels/fused.py`); tests and bench import it from here.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .fp8 import fp8_softmax_pv, quantize_v
from .geometry import Geometry
from .inputs import check_qkv, from_bhld, to_bhld
from .masks import block_means, block_tables, key_block_ranges, topk_lut
from .partials import PartialAttention
from .plan import DENSE, FP8, INT8_QK, SPARSE, AttentionPlan
from .quantize import quantize_qk

__all__ = ["SegmentTable", "dense_attention", "reference_attention", "segment_table"]

_MAX_SCORE_ELEMS = 1 << 26


class SegmentTable:
    """Segments (frame f, block j) = tokens of frame f inside block j, ordered by frame then block (spec §5.3)."""

    def __init__(self, geometry: Geometry, block: int) -> None:
        g, fsize = geometry, geometry.tokens_per_frame
        frame, blk, start, stop, first = [], [], [], [], []
        for f in range(g.frames):
            first.append(len(frame))
            f0, f1 = g.prefix + f * fsize, g.prefix + (f + 1) * fsize
            for j in range(f0 // block, -(-f1 // block)):
                frame.append(f)
                blk.append(j)
                start.append(max(j * block, f0))
                stop.append(min((j + 1) * block, f1))
        first.append(len(frame))
        self.frame = torch.tensor(frame)
        self.block = torch.tensor(blk)
        self.count = torch.tensor(stop) - torch.tensor(start)
        self.first = first  # segments of frame f are [first[f], first[f + 1])
        seg_of_token = torch.full((g.length,), -1, dtype=torch.long)
        for s, (a, b) in enumerate(zip(start, stop)):
            seg_of_token[a:b] = s
        self.seg_of_token = seg_of_token


@lru_cache(maxsize=16)
def segment_table(geometry: Geometry, block: int) -> SegmentTable:
    return SegmentTable(geometry, block)


def _extra_tokens(g: Geometry, device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(g.prefix, device=device),
                      torch.arange(g.prefix + g.video_tokens, g.length, device=device)])


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           lse: torch.Tensor | None = None, fp8: bool = False) -> torch.Tensor:
    """`lse`, when given, is a (B, h, L) buffer that receives each row's log-sum-exp (as for every route below);
    `fp8`: P in e4m3 (sparseflow/fp8.py), v the dequantized e4m3 V."""
    b, h, length, _ = q.shape
    rows = max(1, _MAX_SCORE_ELEMS // max(1, b * h * k.shape[2]))
    out = torch.empty_like(q)
    for r0 in range(0, length, rows):
        s = (q[:, :, r0:r0 + rows] @ k.transpose(-1, -2)) * scale
        out[:, :, r0:r0 + rows] = fp8_softmax_pv([s], [v], [], []) if fp8 else torch.softmax(s, dim=-1) @ v
        if lse is not None:
            lse[:, :, r0:r0 + rows] = torch.logsumexp(s, dim=-1)
    return out


def _softmax_merge(logits: list[torch.Tensor], values: list[torch.Tensor],
                   lse: torch.Tensor | None = None, exact_fp8: int = 0) -> torch.Tensor:
    """softmax over the joined logits; with `exact_fp8` > 0 the first that many parts are exact keys with P in e4m3."""
    s = torch.cat(logits, dim=-1)
    if lse is not None:
        lse.copy_(torch.logsumexp(s, dim=-1))
    if exact_fp8:
        return fp8_softmax_pv(logits[:exact_fp8], values[:exact_fp8], logits[exact_fp8:], values[exact_fp8:])
    return torch.softmax(s, dim=-1) @ torch.cat(values, dim=-2)


def _rows(lse: torch.Tensor | None, t0: int, t1: int) -> torch.Tensor | None:
    return None if lse is None else lse[:, :, t0:t1]


def _sparse(q, k, v, plan: AttentionPlan, window: int, lut: torch.Tensor | None, scale: float,
            kp: torch.Tensor, lse: torch.Tensor | None = None, vp: torch.Tensor | None = None) -> torch.Tensor:
    """`kp`, `vp`: the keys and values the pooled block means are taken of (smoothed k; v unquantized)."""
    g, blk = plan.geometry, plan.block
    tab = block_tables(g, blk)
    b, h, length, d = q.shape
    dev = q.device
    out = torch.empty_like(q)
    if plan.compensation:
        km, vm = block_means(kp, blk), block_means(v if vp is None else vp, blk)
        log_n = torch.log(torch.tensor(tab.count, dtype=q.dtype, device=dev))
    arange_blk = torch.arange(blk, device=dev)
    for i in range(tab.n):
        t0, t1 = i * blk, min((i + 1) * blk, length)
        qi = q[:, :, t0:t1]
        ranges = key_block_ranges(g, blk, i, window, plan.live_anchors)
        tok = torch.cat([torch.arange(s * blk, min(e * blk, length), device=dev) for s, e in ranges])
        logits, values = [(qi @ k[:, :, tok].transpose(-1, -2)) * scale], [v[:, :, tok]]
        skipped = None
        if plan.compensation:
            skipped = torch.ones(b, h, tab.n, dtype=torch.bool, device=dev)
            for s, e in ranges:
                skipped[:, :, s:e] = False
        if lut is not None:
            sel = lut[:, :, i].long()  # (B, h, K), -1 padded
            top = (sel.clamp(min=0)[..., None] * blk + arange_blk).flatten(2)  # (B, h, K*blk)
            valid = ((sel >= 0)[..., None] & (top.view(*sel.shape, blk) < length)).flatten(2)
            top = top.clamp(max=length - 1)
            kt = torch.gather(k, 2, top[..., None].expand(-1, -1, -1, d))
            vt = torch.gather(v, 2, top[..., None].expand(-1, -1, -1, d))
            lt = (qi @ kt.transpose(-1, -2)) * scale
            logits.append(lt.masked_fill(~valid[:, :, None, :], float("-inf")))
            values.append(vt)
            if skipped is not None:
                hit = torch.zeros(b, h, tab.n + 1, dtype=torch.bool, device=dev)
                hit.scatter_(2, torch.where(sel >= 0, sel, tab.n), True)
                skipped &= ~hit[:, :, : tab.n]
        if skipped is not None:
            lc = (qi @ km.transpose(-1, -2)) * scale + log_n
            logits.append(lc.masked_fill(~skipped[:, :, None, :], float("-inf")))
            values.append(vm)
        exact = (len(logits) - (skipped is not None)) if plan.precision == FP8 else 0
        out[:, :, t0:t1] = _softmax_merge(logits, values, _rows(lse, t0, t1), exact)
    return out


def _linear_pooled(q, k, v, plan: AttentionPlan, scale: float, kp: torch.Tensor,
                   lse: torch.Tensor | None = None, vp: torch.Tensor | None = None) -> torch.Tensor:
    """Exact keys in P·V of the input dtype at every precision (fp8: V dequantized, segment means of `vp`)."""
    g, blk = plan.geometry, plan.block
    tab, seg = block_tables(g, blk), segment_table(g, blk)
    b, h, length, d = q.shape
    dev = q.device
    vid = seg.seg_of_token.to(dev) >= 0
    sid = seg.seg_of_token.to(dev)[vid]
    nseg = len(seg.frame)
    count = seg.count.to(dev, q.dtype)
    km = torch.zeros(b, h, nseg, d, dtype=q.dtype, device=dev).index_add_(2, sid, kp[:, :, vid]) / count[:, None]
    vp = v if vp is None else vp
    vm = torch.zeros(b, h, nseg, d, dtype=q.dtype, device=dev).index_add_(2, sid, vp[:, :, vid]) / count[:, None]
    log_n = torch.log(count)
    seg_frame, seg_block = seg.frame.to(dev), seg.block.to(dev)
    extra = _extra_tokens(g, dev)
    out = torch.empty_like(q)
    for i in range(tab.n):
        t0, t1 = i * blk, min((i + 1) * blk, length)
        qi = q[:, :, t0:t1]
        if tab.has_extra[i]:
            out[:, :, t0:t1] = _dense(qi, k, v, scale, _rows(lse, t0, t1), plan.precision == FP8)
            continue
        qf = (torch.arange(t0, t1, device=dev) - g.prefix) // g.tokens_per_frame  # (bq,)
        s0, s1 = seg.first[tab.flo[i]], seg.first[tab.fhi[i] + 1]
        ok = seg_frame[None, s0:s1] == qf[:, None]
        if plan.linear_own_block:
            ok &= seg_block[None, s0:s1] != i
        ls = (qi @ km[:, :, s0:s1].transpose(-1, -2)) * scale + log_n[s0:s1]
        logits, values = [ls.masked_fill(~ok, float("-inf"))], [vm[:, :, s0:s1]]
        if plan.linear_own_block:
            lo = (qi @ k[:, :, t0:t1].transpose(-1, -2)) * scale
            logits.append(lo.masked_fill(qf[:, None] != qf[None, :], float("-inf")))
            values.append(v[:, :, t0:t1])
        if len(extra):
            logits.append((qi @ k[:, :, extra].transpose(-1, -2)) * scale)
            values.append(v[:, :, extra])
        out[:, :, t0:t1] = _softmax_merge(logits, values, _rows(lse, t0, t1))
    return out


def _linear_feature(q, k, v, plan: AttentionPlan, scale: float, qd: torch.Tensor, kd: torch.Tensor,
                    lse: torch.Tensor | None = None, vd: torch.Tensor | None = None) -> torch.Tensor:
    """Spec §5.3 `feature` from q, k, v; the dense rows of query blocks with extra tokens from (qd, kd, vd)."""
    g, blk = plan.geometry, plan.block
    tab, fsize = block_tables(g, blk), g.tokens_per_frame
    out = torch.empty_like(q)
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    extra = _extra_tokens(g, q.device)
    s_extra = phi_k[:, :, extra].transpose(-1, -2) @ v[:, :, extra]  # (B, h, D, D)
    z_extra = phi_k[:, :, extra].sum(dim=2)  # (B, h, D)
    for f in range(g.frames):
        a, b = g.prefix + f * fsize, g.prefix + (f + 1) * fsize
        s = phi_k[:, :, a:b].transpose(-1, -2) @ v[:, :, a:b] + s_extra
        z = phi_k[:, :, a:b].sum(dim=2) + z_extra
        norm = phi_q[:, :, a:b] @ z[..., None]
        out[:, :, a:b] = (phi_q[:, :, a:b] @ s) / norm
        if lse is not None:  # the log of the linear normaliser: partials merge by the same rule (partials.py)
            lse[:, :, a:b] = torch.log(norm[..., 0])
    for i in range(tab.n):
        if tab.has_extra[i]:
            t0, t1 = i * blk, min((i + 1) * blk, g.length)
            out[:, :, t0:t1] = _dense(qd[:, :, t0:t1], kd, v if vd is None else vd, scale, _rows(lse, t0, t1),
                                      plan.precision == FP8)
    return out


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, *,
                        heads: int | None = None, lut: torch.Tensor | None = None,
                        return_lse: bool = False) -> torch.Tensor | PartialAttention:
    """SparseFlow attention of one call (spec §5). Layout (B, H, L, D), or (B, L, H*D) with `heads`.

    `lut` is the top-k LUT from `masks.topk_lut`; it is computed here when None and a head needs it (from the
    unquantized q, k at every precision).
    Returns a tensor of q's layout and dtype; with `return_lse`, a `PartialAttention` whose `out` is (B, H, L, D)
    and `lse` (B, H, L) (the log of each row's softmax normaliser, `partials.py`), both in the compute dtype.
    """
    _, h, _, d = check_qkv(q, k, v, plan, heads, op="reference")
    cdt = torch.promote_types(q.dtype, torch.float32)
    qb, kb, vb = (to_bhld(t, h).to(cdt) for t in (q, k, v))
    if lut is None:
        lut = topk_lut(qb, kb, plan)
    scale = plan.softmax_scale(d)
    out = torch.empty_like(qb)
    if plan.precision in (INT8_QK, FP8):  # logits from dequantized int8 q and smoothed k; pooled means of smoothed k
        qz = quantize_qk(to_bhld(q, h), to_bhld(k, h), plan.block)  # from the inputs, as the kernel's pre-pass
        ql, kl = (t.to(cdt) for t in qz.dequantized())
        kp = kb - qz.k_mean[:, :, None].to(cdt)
    else:
        ql, kl, kp = qb, kb, kb
    # fp8: exact keys' values are the dequantized e4m3 V; pooled means and feature heads take the unquantized V
    vx = quantize_v(to_bhld(v, h)).dequantized().to(cdt) if plan.precision == FP8 else vb
    fp8 = plan.precision == FP8
    lse = qb.new_empty(qb.shape[:3]) if return_lse else None
    for (route, window, topk), hs in plan.groups().items():
        idx = torch.tensor(hs, device=q.device)
        qs, ks, vs, vxs = ql[:, idx], kl[:, idx], vb[:, idx], vx[:, idx]
        ls = None if lse is None else lse.new_empty(lse.shape[0], len(hs), lse.shape[2])
        if route == DENSE:
            o = _dense(qs, ks, vxs, scale, ls, fp8)
        elif route == SPARSE:
            o = _sparse(qs, ks, vxs, plan, window, lut[:, idx] if (lut is not None and topk) else None, scale,
                        kp[:, idx], ls, vs)
        elif plan.linear_kind == "pooled":
            o = _linear_pooled(qs, ks, vxs, plan, scale, kp[:, idx], ls, vs)
        else:
            o = _linear_feature(qb[:, idx], kb[:, idx], vs, plan, scale, qs, ks, ls, vxs)
        out[:, idx] = o
        if lse is not None:
            lse[:, idx] = ls
    if lse is not None:
        return PartialAttention(out, lse)
    return from_bhld(out.to(q.dtype), q)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Exact softmax attention on (B, H, L, D), fp32 accumulation, chunked over queries."""
    cdt = torch.promote_types(q.dtype, torch.float32)
    s = scale if scale is not None else q.shape[-1] ** -0.5
    return _dense(q.to(cdt), k.to(cdt), v.to(cdt), s).to(q.dtype)

