"""The peers' attention paths as ComfyUI users get them, installed through ComfyUI's own override hook.

- `install_sage`: what `--use-sage-attention` does, per model. That flag makes every attention call
  (Wan self- and cross-attention) run ComfyUI 0.3.64's `attention_sage`
  (`sageattn(q, k, v, attn_mask=None, is_causal=False, tensor_layout="NHD")`, fallback to PyTorch on error).
  The override calls that same function; `_inside_attn_wrapper` is forwarded, so its `wrap_attn`
  decorator runs it directly instead of re-entering the hook.
- `install_sol_attn`: ComfyUI core "Model Sparse Attention" (`comfy_extras/nodes_sparse_attention.py`,
  newest, method sol-attn), whose override is generic and needs nothing newer than 0.3.64's hook. This
  is its `make_attention_override` + `install_override` logic with the node's defaults: tau 1.3,
  topk_ratio 0, start_percent 0.2, end_percent 1.0, min_tokens 12288, extra_tokens 256, no dense_blocks,
  no sinks (Wan); dense outside the sigma window, below min_tokens, for masks, and for cross-attention
  (`q.shape != k.shape`). `comfy_kitchen` comes from the carried comfy-kitchen 0.2.40 wheel (.peers/).
"""

from __future__ import annotations

import logging

import torch

__all__ = ["SolAttnPatch", "install_sage", "install_sol_attn"]

log = logging.getLogger("sparseflow.bench.e2e.overrides")

OVERRIDE = "optimized_attention_override"


def _options(model) -> dict:
    return model.model_options.setdefault("transformer_options", {})


def install_sage(model, comfy) -> None:
    """Every attention call of this ModelPatcher through ComfyUI's `attention_sage` (as --use-sage-attention)."""
    if not comfy.attention.SAGE_ATTENTION_IS_AVAILABLE:
        raise RuntimeError("sage: sageattention not importable (carry .peers, run bench/prepare_peers.sh)")
    sage = comfy.attention.attention_sage

    def override(func, *args, **kwargs):
        return sage(*args, **kwargs)

    _options(model)[OVERRIDE] = override


class SolAttnPatch:
    """Options and counters of the core node's override (sparse / dense calls, for the report)."""

    def __init__(self, sigma_start: float, sigma_end: float, tau: float = 1.3, topk_ratio: float = 0.0,
                 min_tokens: int = 12288, extra_tokens: int = 256) -> None:
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self.tau, self.topk_ratio, self.min_tokens, self.extra_tokens = tau, topk_ratio, min_tokens, extra_tokens
        self.counts = {"sparse": 0, "dense": 0}

    def dense_reason(self, transformer_options: dict, tokens: int) -> str | None:
        sigmas = transformer_options.get("sigmas")
        if sigmas is not None:
            sigma = float(sigmas[0])
            if sigma > self.sigma_start or sigma < self.sigma_end:
                return f"sigma {sigma:.3g} outside the start/end window"
        if tokens < self.min_tokens:
            return f"{tokens} tokens < min_tokens {self.min_tokens}"
        return None


def _ineligible(ck, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim_head: int) -> str | None:
    if q.device.type != "cuda":
        return "not on CUDA"
    if not ck.sol_attn_is_available(q.device):
        return "no compiled sol_attn kernel for this GPU"
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"dtype {q.dtype}"
    if dim_head != 128:
        return f"head_dim {dim_head} != 128"
    if q.shape != k.shape or q.shape != v.shape:
        return "cross-attention or GQA (kept dense)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return "mixed dtypes"
    return None


def install_sol_attn(model, start_percent: float = 0.2, end_percent: float = 1.0, **options) -> SolAttnPatch:
    """Core "Model Sparse Attention" (method sol-attn, node defaults) on this ModelPatcher; returns its patch."""
    import comfy_kitchen as ck

    sampling = model.get_model_object("model_sampling")
    patch = SolAttnPatch(float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)),
                         **options)
    previous = _options(model).get(OVERRIDE)

    def override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        transformer_options = kwargs.get("transformer_options") or {}

        def dense():
            kw = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                      skip_output_reshape=skip_output_reshape, **kwargs)
            return func(q, k, v, heads, **kw) if previous is None else previous(func, q, k, v, heads, **kw)

        if mask is not None:
            return dense()
        tokens = q.shape[2] if skip_reshape else q.shape[1]
        if patch.dense_reason(transformer_options, tokens) is not None:
            patch.counts["dense"] += int(q.shape == k.shape)   # self-attention calls kept dense
            return dense()
        if skip_reshape:
            b, _, _, dim_head = q.shape
            qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
        else:
            b, _, dim_head = q.shape
            dim_head //= heads
            qs, ks, vs = (t.view(b, -1, heads, dim_head) for t in (q, k, v))
        if _ineligible(ck, qs, ks, vs, dim_head) is not None:
            return dense()     # cross-attention lands here, as in the node; not counted
        if q.dtype == torch.float32:
            qs, ks, vs = (t.to(torch.bfloat16) for t in (qs, ks, vs))
        out = ck.sol_attn(qs, ks, vs, tau=patch.tau, scale=kwargs.get("scale"), sink_blocks=[0, 0], sink_q=[0, 0],
                          topk_ratio=patch.topk_ratio, token_aug=patch.extra_tokens).to(q.dtype)
        patch.counts["sparse"] += 1
        if skip_output_reshape:
            return out.transpose(1, 2)
        return out.reshape(b, -1, heads * dim_head)

    _options(model)[OVERRIDE] = override
    return patch
