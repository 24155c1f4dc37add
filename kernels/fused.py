"""Fused SparseFlow forward: one Triton launch for the dense, sparse and linear heads of a call.

docs/spec.md §5. Program (query tile, batch x head slot); slots are ordered heavy heads first. Each
program reads its head's route, window and top-k from int32 tensors (runtime values: a schedule change
never recompiles) and walks key tiles with an online softmax (exp2, fp32 accumulation) after Triton's
06-fused-attention tutorial:

1. sparse heads derive their key-block ranges from the geometry scalars exactly as
   `masks.key_block_ranges` does (prefix, anchor frames, temporal window, suffix), clipped by a sweep in
   start order so a block covered by two ranges is computed once; no mask tensor, no scoring pass;
   then the optional top-k blocks of the LUT, then the optional pooled compensation over the N block
   means of the blocks skipped by both (logit + log n_j; the pre-pass writes each query block's row of
   log n_j or -inf, `prepass.compensation_bias`, so the loop tests no range per column);
2. dense heads, and every query block holding extra tokens (Rule E), walk all key blocks;
3. pooled linear heads attend to the exact extra tokens, the exact tokens of their own frame in their own
   block, and the segment means (frame f, block j) of their frame (logit + log n);
   `feature` linear rows are written by `prepass.feature_linear` and skipped here.

PRECISION 1 (int8-qk, spec §8): q and the mean-smoothed k arrive as int8 with one fp32 scale per spec block
(`kernels/quant.py`); exact Q·K tiles are int8 x int8 -> int32 dots whose two block scales join the log2 softmax
scale, pooled means are dotted with q's int8 values in the input dtype; P·V is unchanged. PRECISION 2 (fp8): also
exact keys' P·V in e4m3, V scaled per channel in the epilogue (`kernels/fp8.py`, `kernels/fp8_prepass.py`).

RETURN_LSE: each row's log-sum-exp (natural log, over the keys it attended, `sparseflow/partials.py`) goes to LSE
(B, H, L) fp32, so partial results over disjoint key sets merge exactly (ring steps, keys split over ranks).
"""

from __future__ import annotations

import inspect

import triton
import triton.language as tl

from . import configs
from .fp8 import _fp8_values, _scale_out
from .quant import _logits, _pooled_operand
from .ranges import _drop_tail, _lut_clean, _query_block, _structural_ranges
from .tiles import _key_tile, _online_update, _op, _v_ptrs

__all__ = ["compiled_variants"]


_LOG2E = 1.4426950408889634
_LN2 = tl.constexpr(0.6931471805599453)


def _fused_fwd_kernel(
    Q, K, V, Out, BKM, BVM, CB, SKM, SVM, LUT, QS, KS, VS,
    ROUTES, WINDOW, TOPK, HEAD_ORDER, ANCHORS, SEG_FRAME, SEG_BLOCK, SEG_LOG2N, FRAME_FIRST,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
    qk_scale, L, P, T, F, N, NSEG, KL, COMP, OWN, FEATURE, LUT_ONLY, BATCH, HEADS, TIER, LSE,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, TMA: tl.constexpr, HAS_LUT: tl.constexpr, HAS_COMP: tl.constexpr,
    HAS_LINEAR: tl.constexpr, PRECISION: tl.constexpr, RETURN_LSE: tl.constexpr = False,
):
    """O[b, h, rows of one query tile] = SparseFlow attention (spec §5); see the module docstring."""
    tl.static_assert(BLOCK % BLOCK_M == 0)
    tl.static_assert(BLOCK % BLOCK_N == 0)
    tl.static_assert(HEAD_DIM == 64 or HEAD_DIM == 128)
    tl.static_assert(PRECISION == 0 or PRECISION == 1 or PRECISION == 2)
    R: tl.constexpr = BLOCK // BLOCK_N
    NEG: tl.constexpr = -1.0e30

    # -- which (batch, head, query block) this program owns
    pid_m = tl.program_id(0)
    slot = tl.program_id(1)
    h = tl.load(HEAD_ORDER + slot // BATCH)
    b = slot % BATCH
    route = tl.load(ROUTES + h)
    window = tl.load(WINDOW + h)
    topk = tl.load(TOPK + h)
    h64 = h.to(tl.int64)
    b64 = b.to(tl.int64)
    i = (pid_m * BLOCK_M) // BLOCK
    t0, t1, eff, flo, fhi = _query_block(i, route, P, F, T, L, BLOCK)  # Rule E: extra-token query blocks are dense
    VE = P + T * F

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    if PRECISION >= 1:  # int8 q and k (spec §8): the query block's scale joins the softmax scale
        q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :],
                    mask=offs_m[:, None] < L, other=0)
        qk_scale = qk_scale * tl.load(QS + (b64 * HEADS + h64) * N + i)
        ks_row = KS + (b64 * HEADS + h64) * N
        qp = _pooled_operand(q, Out, UPCAST)
    else:
        q = _op(tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :],
                        mask=offs_m[:, None] < L, other=0.0), UPCAST)
        ks_row = KS
        qp = q
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    if TMA:  # this (batch, head)'s K and V as [L, D] tensors: the copy engine zero-fills rows >= L
        kd = tl.make_tensor_descriptor(k_base, shape=[L, HEAD_DIM], strides=[stride_kl, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
        if PRECISION == 2:  # e4m3 v token-contiguous: stride_vl is its feature stride; tiles come as [D, BLOCK_N]
            vd = tl.make_tensor_descriptor(v_base, shape=[HEAD_DIM, L], strides=[stride_vl, 1],
                                           block_shape=[HEAD_DIM, BLOCK_N])
        else:
            vd = tl.make_tensor_descriptor(v_base, shape=[L, HEAD_DIM], strides=[stride_vl, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
    else:
        kd = k_base
        vd = v_base
    m_i = tl.full([BLOCK_M], NEG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lut_row = LUT + ((b64 * HEADS + h64) * N + i) * KL

    if eff != 2:
        # -- structural ranges (dense: one range over all blocks), sorted by start, clipped by a sweep
        s0, n0, s1, n1, s2, n2, s3, n3, s4, n4, s5, n5, s6, n6 = _structural_ranges(
            eff, window, flo, fhi, ANCHORS, LUT_ONLY, P, F, T, N, L, BLOCK)
        # the partial last key block leaves its range and runs after the loop, masked; the loop masks nothing
        tail = (L % BLOCK != 0) & (eff != 2)
        k0, d0 = _drop_tail(s0, n0, tail, N)
        k1, d1 = _drop_tail(s1, n1, tail, N)
        k2, d2 = _drop_tail(s2, n2, tail, N)
        k3, d3 = _drop_tail(s3, n3, tail, N)
        k4, d4 = _drop_tail(s4, n4, tail, N)
        k5, d5 = _drop_tail(s5, n5, tail, N)
        k6, d6 = _drop_tail(s6, n6, tail, N)
        tail_in = d0 | d1 | d2 | d3 | d4 | d5 | d6
        n_struct = (k0 + k1 + k2 + k3 + k4 + k5 + k6) * R

        # -- structural key tiles: tile -> (piece, block) by a chain over the piece counts
        for it in range(0, n_struct):
            c = it // R
            blk = s0 + c
            c = c - k0
            blk = tl.where(c >= 0, s1 + c, blk)
            c = c - k1
            blk = tl.where(c >= 0, s2 + c, blk)
            c = c - k2
            blk = tl.where(c >= 0, s3 + c, blk)
            c = c - k3
            blk = tl.where(c >= 0, s4 + c, blk)
            c = c - k4
            blk = tl.where(c >= 0, s5 + c, blk)
            c = c - k5
            blk = tl.where(c >= 0, s6 + c, blk)
            start_n = blk * BLOCK + (it % R) * BLOCK_N
            acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, kd, vd, k_base, v_base, stride_kl, stride_vl, start_n, L,
                                      qk_scale, ks_row, BLOCK_N, HEAD_DIM, UPCAST, False, TMA, BLOCK,
                                      PRECISION)
        # the partial last block: only its tiles that hold keys < L
        last0 = (N - 1) * BLOCK
        for it in range(0, tl.where(tail_in, (L - last0 + BLOCK_N - 1) // BLOCK_N, 0)):
            acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, kd, vd, k_base, v_base, stride_kl, stride_vl,
                                      last0 + it * BLOCK_N, L, qk_scale, ks_row, BLOCK_N, HEAD_DIM, UPCAST, True,
                                      TMA, BLOCK, PRECISION)

        # (HAS_LUT / HAS_COMP / HAS_LINEAR: constexpr, False compiles a path this call never takes out)
        kq = tl.where(eff == 1, tl.minimum(topk, KL), 0)
        if HAS_LUT:
            # -- top-k key blocks from the LUT (disjoint from the structural set by construction); a row whose
            # entries are all valid and miss the partial last block runs unmasked
            if _lut_clean(lut_row, kq, N, L % BLOCK != 0):
                for it in range(0, kq * R):
                    sel = tl.load(lut_row + it // R)
                    acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, kd, vd, k_base, v_base, stride_kl, stride_vl,
                                              sel * BLOCK + (it % R) * BLOCK_N, L, qk_scale, ks_row, BLOCK_N,
                                              HEAD_DIM, UPCAST, False, TMA, BLOCK, PRECISION)
            else:
                for it in range(0, kq * R):
                    sel = tl.load(lut_row + it // R)
                    start_n = tl.maximum(sel, 0) * BLOCK + (it % R) * BLOCK_N
                    acc, m_i, l_i = _key_tile(acc, m_i, l_i, q, kd, vd, k_base, v_base, stride_kl, stride_vl,
                                              start_n, tl.where(sel >= 0, L, 0), qk_scale, ks_row, BLOCK_N,
                                              HEAD_DIM, UPCAST, True, TMA, BLOCK, PRECISION)

        if HAS_COMP:
            # -- pooled compensation: one mean key per skipped block, logit + log2(n_j); the pre-pass's bias row
            # (kernels/prepass.py `compensation_bias`) holds log2(n_j) for a skipped block and NEG for the others
            n_comp = tl.where((eff == 1) & (COMP != 0), (N + BLOCK_N - 1) // BLOCK_N, 0)
            bias_row = CB + (h64 * N + i) * N
            for it in range(0, n_comp):
                j = it * BLOCK_N + tl.arange(0, BLOCK_N)
                valid = j < N
                bias = tl.load(bias_row + j, mask=valid, other=NEG)
                if HAS_LUT:
                    for kk in range(0, kq):
                        bias = tl.where(j != tl.load(lut_row + kk), bias, NEG)
                pool = (b64 * HEADS + h64) * N + j
                kb = _op(tl.load(BKM + pool[None, :] * HEAD_DIM + offs_d[:, None], mask=valid[None, :], other=0.0),
                         UPCAST)
                qk = tl.dot(qp, kb) * qk_scale + bias[None, :]
                vb = _op(tl.load(BVM + pool[:, None] * HEAD_DIM + offs_d[None, :], mask=valid[:, None], other=0.0),
                         UPCAST)
                acc, m_i, l_i = _online_update(acc, m_i, l_i, qk, vb)
    elif HAS_LINEAR:
        # -- linear (pooled): exact extra tokens and own-frame tokens of the own block
        pooled = FEATURE == 0
        qf = (offs_m - P) // F
        n_pre = tl.where(pooled, (P + BLOCK_N - 1) // BLOCK_N, 0)
        n_own = tl.where(pooled & (OWN != 0), R, 0)
        suf0 = (VE // BLOCK_N) * BLOCK_N
        n_suf = tl.where(pooled & (VE < L), (L - suf0 + BLOCK_N - 1) // BLOCK_N, 0)
        for it in range(0, n_pre + n_own + n_suf):
            in_own = (it >= n_pre) & (it < n_pre + n_own)
            start_n = tl.where(it < n_pre, it * BLOCK_N,
                               tl.where(in_own, t0 + (it - n_pre) * BLOCK_N, suf0 + (it - n_pre - n_own) * BLOCK_N))
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kf = (offs_n - P) // F
            extra_k = (offs_n < P) | ((offs_n >= VE) & (offs_n < L))
            own_k = (offs_n < t1)[None, :] & (kf[None, :] == qf[:, None])
            allow = tl.where(in_own, own_k, extra_k[None, :])
            kmask = offs_n < L
            k = tl.load(k_base + offs_n[None, :] * stride_kl + offs_d[:, None], mask=kmask[None, :], other=0.0)
            qk = tl.where(allow, _logits(q, k, qk_scale, ks_row, start_n, BLOCK, UPCAST, PRECISION), NEG)
            v = tl.load(_v_ptrs(v_base, offs_n, offs_d, stride_vl, PRECISION), mask=kmask[:, None], other=0.0)
            v = _fp8_values(v, Out, UPCAST, PRECISION)
            acc, m_i, l_i = _online_update(acc, m_i, l_i, qk, v)
        # -- pooled segments (frame f, block j) of the query's frame, logit + log2(n)
        g0 = tl.load(FRAME_FIRST + flo)
        g1 = tl.load(FRAME_FIRST + fhi + 1)
        n_seg = tl.where(pooled, (g1 - g0 + BLOCK_N - 1) // BLOCK_N, 0)
        for it in range(0, n_seg):
            sidx = g0 + it * BLOCK_N + tl.arange(0, BLOCK_N)
            smask = sidx < g1
            sf = tl.load(SEG_FRAME + sidx, mask=smask, other=-1)
            sb = tl.load(SEG_BLOCK + sidx, mask=smask, other=-1)
            lg = tl.load(SEG_LOG2N + sidx, mask=smask, other=0.0)
            allow = (sf[None, :] == qf[:, None]) & (sb != tl.where(OWN != 0, i, -2))[None, :]
            pool = (b64 * HEADS + h64) * NSEG + sidx
            kb = _op(tl.load(SKM + pool[None, :] * HEAD_DIM + offs_d[:, None], mask=smask[None, :], other=0.0), UPCAST)
            qk = tl.where(allow, tl.dot(qp, kb) * qk_scale + lg[None, :], NEG)
            vb = _op(tl.load(SVM + pool[:, None] * HEAD_DIM + offs_d[None, :], mask=smask[:, None], other=0.0), UPCAST)
            acc, m_i, l_i = _online_update(acc, m_i, l_i, qk, vb)

    # -- epilogue: normalise and store in O's dtype and layout (feature-linear rows belong to the pre-pass)
    if RETURN_LSE:  # m_i and log2(l_i) are log2-domain; a row with no key gets -inf
        lse = tl.where(l_i > 0.0, (m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0))) * _LN2, float("-inf"))
        lse_end = tl.where((eff == 2) & (FEATURE != 0), 0, L)
        tl.store(LSE + (b64 * HEADS + h64) * L + offs_m, lse, mask=offs_m < lse_end)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = _scale_out(acc / l_i[:, None], VS, b64 * HEADS + h64, HEAD_DIM, PRECISION)
    row_end = tl.where((eff == 2) & (FEATURE != 0), 0, L)
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < row_end)


_RUNTIME_INTS = ["L", "P", "T", "F", "N", "NSEG", "KL", "COMP", "OWN", "FEATURE", "LUT_ONLY", "BATCH", "HEADS",
                 "TIER"]
_jit_kernel = triton.jit(do_not_specialize=_RUNTIME_INTS)(_fused_fwd_kernel)  # the kernel, jitted once
_tuned_kernel = None


def _kernel():
    """The autotuned kernel on a GPU; the plain jit kernel (one fixed config) under TRITON_INTERPRET=1."""
    global _tuned_kernel
    if configs.INTERPRET:
        return _jit_kernel
    if _tuned_kernel is None:
        extra = {}
        if "cache_results" in inspect.signature(triton.autotune).parameters:
            extra["cache_results"] = True  # later processes reuse the tuning from Triton's disk cache
        _tuned_kernel = triton.autotune(configs=configs.all_configs(), key=configs.AUTOTUNE_KEY,
                                        prune_configs_by={"early_config_prune": configs.keep}, **extra)(_jit_kernel)
    return _tuned_kernel


def compiled_variants() -> int:
    """Number of compiled variants of the fused kernel in this process (all devices, all configs)."""
    caches = getattr(_jit_kernel, "device_caches", {})
    return sum(len(entry[0]) for entry in caches.values())
