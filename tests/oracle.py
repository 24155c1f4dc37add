"""Test oracle: SparseFlow attention as one materialized masked softmax per head, in float64.

Written straight from docs/spec.md with token-level brute force (python sets, full L x L masks), sharing
no mask code with sparseflow/, so that agreeing with it checks `masks.key_block_ranges`, the top-k
selection and the reference together. Small shapes only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from comfyui_sparseflow.sparseflow.plan import DENSE, SPARSE, AttentionPlan


def _token_tables(plan: AttentionPlan):
    g, blk = plan.geometry, plan.block
    length = g.length
    frame = [-1] * length
    for t in range(g.prefix, g.prefix + g.video_tokens):
        frame[t] = (t - g.prefix) // g.tokens_per_frame
    n = math.ceil(length / blk)
    bframes = [set(frame[t] for t in range(j * blk, min((j + 1) * blk, length)) if frame[t] >= 0) for j in range(n)]
    bextra = [any(frame[t] < 0 for t in range(j * blk, min((j + 1) * blk, length))) for j in range(n)]
    return frame, n, bframes, bextra


def oracle_block_mask(plan: AttentionPlan, window: int) -> torch.Tensor:
    """(N, N) structural mask of a sparse head, straight from spec §5.2."""
    _, n, bframes, bextra = _token_tables(plan)
    anchors = {a for a in plan.anchors if a < plan.geometry.frames}
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if bextra[i] or bextra[j]:
                mask[i, j] = True
                continue
            lo, hi = min(bframes[i]) - window, max(bframes[i]) + window
            mask[i, j] = any(lo <= f <= hi for f in bframes[j]) or bool(bframes[j] & anchors)
    return mask


def oracle_topk(q: torch.Tensor, k: torch.Tensor, plan: AttentionPlan, window: int, topk: int) -> list:
    """Per (b, h, i): sorted list of selected blocks, by python sorting on (-score, j)."""
    blk, length = plan.block, q.shape[2]
    n = math.ceil(length / blk)
    struct = oracle_block_mask(plan, window)
    qm = torch.stack([q[:, :, j * blk:(j + 1) * blk].double().mean(2) for j in range(n)], 2)
    km = torch.stack([k[:, :, j * blk:(j + 1) * blk].double().mean(2) for j in range(n)], 2)
    sel = []
    for b in range(q.shape[0]):
        per_h = []
        for h in range(q.shape[1]):
            per_i = []
            for i in range(n):
                cand = [j for j in range(n) if not struct[i, j]]
                cand.sort(key=lambda j: (-float(qm[b, h, i] @ km[b, h, j]), j))
                per_i.append(sorted(cand[:topk]))
            per_h.append(per_i)
        sel.append(per_h)
    return sel


def oracle_exact_logits(plan: AttentionPlan, route: int, window: int, sel=None) -> torch.Tensor:
    """(L, L) bool: query token t takes an exact logit against key token u (spec §5, Rule E), for one head.

    Pooled keys and feature states are not exact logits. `sel` is the head's top-k selection per query block.
    """
    blk, length = plan.block, plan.geometry.length
    frame, n, _, bextra = _token_tables(plan)
    qblock = torch.tensor([t // blk for t in range(length)])
    dense_row = torch.tensor([bextra[t // blk] for t in range(length)])[:, None].expand(length, length)
    if route == DENSE:
        return torch.ones(length, length, dtype=torch.bool)
    if route == SPARSE:
        bmask = oracle_block_mask(plan, window)
        for i in range(n):
            for j in sel[i] if sel is not None else []:
                bmask[i, j] = True
        return bmask[qblock][:, qblock] | dense_row
    if plan.linear_kind == "feature":
        return dense_row.clone()
    fr = torch.tensor(frame)
    extra_key = (fr < 0)[None, :].expand(length, length)
    own = (qblock[:, None] == qblock[None, :]) & (fr[:, None] == fr[None, :]) & (fr[:, None] >= 0)
    return extra_key | dense_row | (own if plan.linear_own_block else torch.zeros_like(own))


def _head(q, k, v, plan: AttentionPlan, route: int, window: int, topk: int, scale: float, sel):
    """One (batch, head): q, k, v are (L, D) float64. Returns (out (L, D), lse (L,))."""
    blk = plan.block
    length = q.shape[0]
    frame, n, bframes, bextra = _token_tables(plan)
    qblock = [t // blk for t in range(length)]
    dense_row = torch.tensor([bextra[qblock[t]] for t in range(length)])
    s = (q @ k.T) * scale
    if route == DENSE:
        return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
    if route == SPARSE:
        bmask = oracle_block_mask(plan, window)
        for i in range(n):
            for j in sel[i] if sel is not None else []:
                bmask[i, j] = True
        tmask = oracle_exact_logits(plan, route, window, sel)
        logits, values = [s.masked_fill(~tmask, float("-inf"))], [v]
        if plan.compensation:
            kbar = torch.stack([k[j * blk:(j + 1) * blk].mean(0) for j in range(n)])
            vbar = torch.stack([v[j * blk:(j + 1) * blk].mean(0) for j in range(n)])
            cnt = torch.tensor([float(min((j + 1) * blk, length) - j * blk) for j in range(n)], dtype=q.dtype)
            lc = (q @ kbar.T) * scale + torch.log(cnt)
            cmask = ~bmask[torch.tensor(qblock)]  # skipped blocks of each query's block
            logits.append(lc.masked_fill(~cmask, float("-inf")))
            values.append(vbar)
        p = torch.softmax(torch.cat(logits, -1), -1)
        return p @ torch.cat(values, 0), torch.logsumexp(torch.cat(logits, -1), -1)
    # linear
    fr = torch.tensor(frame)
    same_frame = (fr[:, None] == fr[None, :]) & (fr[:, None] >= 0)
    extra_key = (fr < 0)[None, :].expand(length, length)
    if plan.linear_kind == "feature":
        a = (F.elu(q) + 1) @ (F.elu(k) + 1).T
        a = a.masked_fill(~(same_frame | extra_key), 0.0)
        out = (a @ v) / a.sum(-1, keepdim=True)
        lse = torch.log(a.sum(-1))
    else:
        segs = {}
        for t in range(length):
            if frame[t] >= 0:
                segs.setdefault((frame[t], t // blk), []).append(t)
        keys = sorted(segs)
        kbar = torch.stack([k[segs[key]].mean(0) for key in keys])
        vbar = torch.stack([v[segs[key]].mean(0) for key in keys])
        lc = (q @ kbar.T) * scale + torch.log(torch.tensor([float(len(segs[key])) for key in keys], dtype=q.dtype))
        cmask = torch.zeros(length, len(keys), dtype=torch.bool)
        tmask = oracle_exact_logits(plan, route, window)
        for t in range(length):
            if frame[t] < 0:
                continue
            for c, (f, j) in enumerate(keys):
                if f == frame[t] and not (plan.linear_own_block and j == qblock[t]):
                    cmask[t, c] = True
        logits = [s.masked_fill(~tmask, float("-inf")), lc.masked_fill(~cmask, float("-inf"))]
        p = torch.softmax(torch.cat(logits, -1), -1)
        out = p @ torch.cat([v, vbar], 0)
        lse = torch.logsumexp(torch.cat(logits, -1), -1)
    dense = torch.softmax(s, -1) @ v
    return torch.where(dense_row[:, None], dense, out), torch.where(dense_row, torch.logsumexp(s, -1), lse)


def oracle_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, L, D) float64."""
    return oracle_attention_lse(q, k, v, plan)[0]


def oracle_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan):
    """(out (B, H, L, D), lse (B, H, L)) float64; lse is the log of each row's normaliser."""
    q, k, v = q.double(), k.double(), v.double()
    scale = plan.scale if plan.scale is not None else q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3])
    for h in range(q.shape[1]):
        route, window, topk = plan.routes[h], plan.window[h], plan.topk[h]
        sel = oracle_topk(q[:, h:h + 1], k[:, h:h + 1], plan, window, topk) if (route == SPARSE and topk) else None
        for b in range(q.shape[0]):
            out[b, h], lse[b, h] = _head(q[b, h], k[b, h], v[b, h], plan, route, window, topk, scale,
                                         sel[b][0] if sel is not None else None)
    return out, lse
