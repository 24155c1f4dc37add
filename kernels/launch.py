"""The Python side of the fused SparseFlow forward: inputs checked and laid out, the pre-pass (geometry tables, plan
tensors, top-k LUT, pooled means, `feature` linear rows, int8 / fp8 quantization), then one launch of the kernel of
`kernels/fused.py` with the device tier's configs (`kernels/configs.py`).
"""

from __future__ import annotations

import math

import torch
import triton

from ..sparseflow.inputs import KernelLaunchError, check_qkv, to_bhld
from ..sparseflow.masks import topk_lut
from ..sparseflow.partials import PartialAttention
from ..sparseflow.plan import FP8, INT8_QK, LINEAR, PRECISIONS, SPARSE, AttentionPlan
from ..sparseflow.quantize import int8_device_reason
from . import configs
from .fp8_prepass import quantize_call
from .fused import _LOG2E, _jit_kernel, _kernel
from .prepass import compensation_bias, feature_linear, geometry_tables, plan_tensors, pooled_means
from .quant import quantize_qk, smoothed_means

__all__ = ["fused_attention"]


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, *,
                    heads: int | None = None, lut: torch.Tensor | None = None, _lut_only: bool = False,
                    return_lse: bool = False, _config: tuple[int, int, int, int] | None = None,
                    _descriptors: bool | None = None) -> torch.Tensor | PartialAttention:
    """SparseFlow attention of one call in one fused Triton launch (plus the small pre-pass).

    Same contract as `sparseflow.reference.reference_attention`: (B, H, L, D) or (B, L, H*D) with `heads`,
    fp16/bf16, D in {64, 128}; returns q's layout and dtype, or with `return_lse` a `PartialAttention` of the
    output as a (B, H, L, D) view in q's dtype and each row's log-sum-exp (B, H, L) fp32. `lut` is the
    (B, H, N, K) top-k LUT of `masks.topk_lut` (computed when None and a sparse head has topk > 0).
    `_lut_only` (bench only) makes sparse heads compute just the LUT's blocks, to time a given random block
    mask. `_config` ((BLOCK_M, BLOCK_N, num_warps, num_stages), skipping the autotuner) is for the bench's
    side-by-side sweep; `_descriptors` forces the K/V load path (tests: the descriptor path under the CPU
    interpreter). `plan.precision` "int8-qk" quantizes q and the mean-smoothed k per spec block first
    (kernels/quant.py, spec §8) and runs Q·K in int8. The launch configs and the K/V load path follow the
    device's tier (kernels/configs.py); a device that cannot launch any of
    them raises `KernelLaunchError` with the shared memory asked and allowed.
    """
    bsz, nh, length, d = check_qkv(q, k, v, plan, heads, op="fused_attention")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"fused_attention: q dtype must be float16 or bfloat16, got {q.dtype}")
    g, block = plan.geometry, plan.block
    dev = q.device
    qb, kb, vb = (_unit_stride(to_bhld(t, nh)) for t in (q, k, v))
    out = torch.empty_like(q) if q.stride(-1) == 1 else torch.empty(q.shape, dtype=q.dtype, device=dev)
    ob = to_bhld(out, nh)
    tabs = geometry_tables(g, block, dev)
    pt = plan_tensors(plan, dev)
    sparse_heads = [h for h, r in enumerate(plan.routes) if r == SPARSE]
    linear_heads = [h for h, r in enumerate(plan.routes) if r == LINEAR]
    pooled_linear = plan.linear_kind == "pooled"

    if lut is None and any(plan.topk[h] for h in sparse_heads):
        lut = topk_lut(qb, kb, plan)
    if lut is None:
        lut_t, kl = torch.full((1,), -1, dtype=torch.int32, device=dev), 0
    else:
        lut_t, kl = lut.to(device=dev, dtype=torch.int32).contiguous(), lut.shape[-1]
        if lut_t.shape[:3] != (bsz, nh, tabs.n):
            raise ValueError(f"fused_attention: lut shape {tuple(lut.shape)} must be ({bsz}, {nh}, {tabs.n}, K)")
    if plan.compensation and sparse_heads:
        bkm, bvm = pooled_means(kb, vb, tabs.blk_start, tabs.blk_stop, sparse_heads, block)
        cb = compensation_bias(plan, pt, sparse_heads, dev, _lut_only)
    else:
        bkm = bvm = qb.new_empty(1)
        cb = torch.empty(1, dtype=torch.float32, device=dev)
    if pooled_linear and linear_heads:
        skm, svm = pooled_means(kb, vb, tabs.seg_start, tabs.seg_stop, linear_heads, block)
    else:
        skm = svm = qb.new_empty(1)
    # without return_lse an fp32 stand-in: the autotuner keys on argument dtypes, so both calls pick one config and
    # return_lse changes nothing but the LSE store
    lse = torch.empty((bsz, nh, length) if return_lse else (1,), dtype=torch.float32, device=dev)
    if not pooled_linear and linear_heads:
        feature_linear(qb, kb, vb, plan, linear_heads, ob, lse if return_lse else None)
    qs = ks = vs = None
    if plan.precision == INT8_QK:  # int8 q and smoothed k; the pooled means are of the smoothed k too
        if not configs.INTERPRET and (why := int8_device_reason(q)):
            raise KernelLaunchError(f"fused_attention: {why}")
        qz = quantize_qk(qb, kb, block)
        qb, kb, qs, ks = qz.q8, qz.k8, qz.q_scale, qz.k_scale
        bkm, bvm, skm, svm = smoothed_means((bkm, bvm, skm, svm), qz.k_mean)
    elif plan.precision == FP8:  # as int8-qk, plus e4m3 v per channel; pooled v means in units of its scale
        z = quantize_call(q, qb, kb, vb, (bkm, bvm, skm, svm), block)
        qb, kb, vb, qs, ks, vs, (bkm, bvm, skm, svm) = z.q8, z.k8, z.v8, z.q_scale, z.k_scale, z.v_scale, z.means

    qk_scale = plan.softmax_scale(d) * _LOG2E
    args = (qb, kb, vb, ob, bkm, bvm, cb, skm, svm, lut_t, qs, ks, vs, pt["routes"], pt["window"], pt["topk"],
            pt["head_order"], pt["anchors"], tabs.seg_frame, tabs.seg_block, tabs.seg_log2n, tabs.frame_first,
            qb.stride(0), qb.stride(1), qb.stride(2), kb.stride(0), kb.stride(1), kb.stride(2),
            # precision fp8: v is token-contiguous e4m3, and stride_vl carries its feature stride (kernels/fused.py)
            vb.stride(0), vb.stride(1), vb.stride(3) if plan.precision == FP8 else vb.stride(2),
            ob.stride(0), ob.stride(1), ob.stride(2),
            qk_scale, length, g.prefix, g.frames, g.tokens_per_frame, tabs.n, tabs.nseg, kl,
            int(plan.compensation), int(plan.linear_own_block), int(not pooled_linear), int(_lut_only), bsz, nh)
    tier, tma = (0, False) if configs.INTERPRET else configs.launch_plan(kb, vb, plan.precision == FP8)
    if _descriptors is not None:
        tma = _descriptors
    if tma and not configs.INTERPRET:
        configs.ensure_allocator()
    # the call kind: paths a call never takes are compiled out (fewer live registers, less shared memory)
    flags = dict(TMA=tma, HAS_LUT=kl > 0, HAS_COMP=bool(plan.compensation and sparse_heads),
                 HAS_LINEAR=bool(linear_heads), PRECISION=PRECISIONS.index(plan.precision), RETURN_LSE=return_lse)
    args = (*args, tier, lse)  # LSE last: the parameters before it are as without it
    if configs.INTERPRET or _config is not None:
        if _config is None:
            cfg = configs.interpret_config()
        else:
            cfg = dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), _config))
        grid = (math.ceil(length / cfg["BLOCK_M"]), bsz * nh)
        _jit_kernel[grid](*args, HEAD_DIM=d, BLOCK=block, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                          UPCAST=configs.INTERPRET, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **flags)
    else:
        def grid(meta):
            return (triton.cdiv(length, meta["BLOCK_M"]), bsz * nh)
        try:
            _kernel()[grid](*args, HEAD_DIM=d, BLOCK=block, UPCAST=False, **flags)
        except Exception as e:  # int8-qk / fp8 not yet run on a GPU here: a failure is said, not a crash of the run
            if qs is None or isinstance(e, KernelLaunchError):
                raise
            raise KernelLaunchError(f"fused_attention: the {plan.precision} kernel failed on this device with triton "
                                    f"{triton.__version__} ({type(e).__name__}: {str(e)[:200]})") from e
    return PartialAttention(ob, lse) if return_lse else out
