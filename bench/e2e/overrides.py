"""The peers' attention paths as ComfyUI users get them, installed through ComfyUI's own override hook.

- `install_sage`: what `--use-sage-attention` does, per model. That flag makes every attention call
  (Wan self- and cross-attention) run ComfyUI 0.3.64's `attention_sage`
  (`sageattn(q, k, v, attn_mask=None, is_causal=False, tensor_layout="NHD")`, fallback to PyTorch on error).
  The override calls that same function; `_inside_attn_wrapper` is forwarded, so its `wrap_attn`
  decorator runs it directly instead of re-entering the hook.
- `apply_core_sparse_attention`: a stand-in for ComfyUI core "Model Sparse Attention" (newest
  `comfy_extras/nodes_sparse_attention.py` @cf3103c5, read with the search tool; it cannot be imported on the test
  trees: it needs comfy_kitchen, `comfy.model_prefetch` and MiniMax-H3, which 0.3.64 lacks). It does for a Wan model
  what the node does: a clone, the override installed on top of the one there (its `previous` is the dense
  fallback), re-installed from ON_PREPARE_STATE each step unless it is already on top (so a node applied later
  cannot replace it), the per-run state reset on ON_CLEANUP, the override marked with the patch and its previous
  (`mark_attention_override`). The override: dense for masks, outside the sigma window [percent_to_sigma(end),
  percent_to_sigma(start)], below min_tokens, for blocks in dense_blocks, for cross-attention / GQA / non-CUDA /
  head_dim != 128 / mixed dtypes; otherwise `ck.sol_attn(q, k, v, tau, scale, sink_blocks=[0, 0], sink_q=[0, 0],
  topk_ratio, token_aug=extra_tokens)` on BTHD views (no sinks: no MiniMax-H3 layout), fp32 cast to bf16. Node
  defaults: method sol-attn (tau 1.3, topk_ratio 0), start 0.2, end 1.0, min_tokens 12288, extra_tokens 256.
  Differences, for measuring and testing only: `ck` is passed in (the bench: comfy-kitchen 0.2.40 from .peers/;
  tests: a recording stand-in), `devices` says where the kernel may run (core: CUDA only), the patch counts its
  sparse and dense self-attention calls for the report, and ON_PREPARE_STATE also takes 0.3.64's two arguments
  (there it re-installs nothing: 0.3.64 passes no model_options).
"""

from __future__ import annotations

import logging

import torch

__all__ = ["CorePatch", "apply_core_sparse_attention", "install_core_override", "install_sage"]

log = logging.getLogger("sparseflow.bench.e2e.overrides")

OVERRIDE = "optimized_attention_override"
HEAD_DIM = 128


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


class CorePatch:
    """Options and per-run state of one core sparse-attention patch, plus counters for the report."""

    def __init__(self, ck, sigma_start: float, sigma_end: float, tau: float = 1.3, topk_ratio: float = 0.0,
                 min_tokens: int = 12288, extra_tokens: int = 256, dense_blocks: frozenset = frozenset(),
                 devices: tuple[str, ...] = ("cuda",)) -> None:
        self.ck, self.sigma_start, self.sigma_end = ck, sigma_start, sigma_end
        self.tau, self.topk_ratio, self.min_tokens, self.extra_tokens = tau, topk_ratio, min_tokens, extra_tokens
        self.dense_blocks, self.devices = dense_blocks, devices
        self.installed: set = set()  # the overrides this patch has put on the hook
        self.counts = {"sparse": 0, "dense": 0}

    def reset(self) -> None:
        pass  # the generic (non-MiniMax) path keeps no per-run state

    def dense_reason(self, transformer_options: dict, tokens: int, block_index) -> str | None:
        sigmas = transformer_options.get("sigmas")
        if sigmas is not None:
            sigma = float(sigmas[0])
            if sigma > self.sigma_start or sigma < self.sigma_end:
                return f"sigma {sigma:.3g} outside the start/end window"
        if tokens < self.min_tokens:
            return f"{tokens} tokens < min_tokens {self.min_tokens}"
        if self.dense_blocks and block_index is not None and block_index in self.dense_blocks:
            return f"block {block_index} in dense_blocks"
        return None

    def ineligible(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim_head: int) -> str | None:
        """Why these BTHD tensors cannot go to the kernel, or None."""
        if q.device.type not in self.devices:
            return f"not on {'/'.join(self.devices)}"
        if not self.ck.sol_attn_is_available(q.device):
            return "no compiled sol_attn kernel for this GPU"
        if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            return f"dtype {q.dtype}"
        if dim_head != HEAD_DIM:
            return f"head_dim {dim_head} != {HEAD_DIM}"
        if q.shape != k.shape or q.shape != v.shape:
            return "cross-attention or GQA (kept dense)"
        if k.dtype != q.dtype or v.dtype != q.dtype:
            return "mixed dtypes"
        return None


def _make_override(patch: CorePatch, previous):
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
        if patch.dense_reason(transformer_options, tokens, transformer_options.get("block_index")) is not None:
            patch.counts["dense"] += int(q.shape == k.shape)  # self-attention calls kept dense
            return dense()
        if skip_reshape:
            b, _, _, dim_head = q.shape
            qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
        else:
            b, _, dim_head = q.shape
            dim_head //= heads
            qs, ks, vs = (t.view(b, -1, heads, dim_head) for t in (q, k, v))
        if patch.ineligible(qs, ks, vs, dim_head) is not None:
            return dense()  # cross-attention lands here, as in the node; not counted
        if q.dtype == torch.float32:
            qs, ks, vs = (t.to(torch.bfloat16) for t in (qs, ks, vs))
        out = patch.ck.sol_attn(qs, ks, vs, tau=patch.tau, scale=kwargs.get("scale"), sink_blocks=[0, 0],
                                sink_q=[0, 0], topk_ratio=patch.topk_ratio, token_aug=patch.extra_tokens).to(q.dtype)
        patch.counts["sparse"] += 1
        if skip_output_reshape:
            return out.transpose(1, 2)
        return out.reshape(b, -1, heads * dim_head)

    override._block_sparse_attention_patch = patch  # core's mark_attention_override
    override._block_sparse_attention_previous = previous
    return override


def install_core_override(patch: CorePatch, transformer_options: dict) -> None:
    """Put the patch's override on top of the one there, unless one of its own already is (core install_override)."""
    current = transformer_options.get(OVERRIDE)
    if current in patch.installed:
        return
    override = _make_override(patch, current)
    patch.installed.add(override)
    transformer_options[OVERRIDE] = override


def apply_core_sparse_attention(model, ck=None, start_percent: float = 0.2, end_percent: float = 1.0,
                                **options):
    """(a clone of `model` patched as core "Model Sparse Attention" patches it, its CorePatch); `ck` defaults to the
    comfy_kitchen module (the bench carries comfy-kitchen 0.2.40 in .peers/)."""
    import comfy.patcher_extension as pe

    if ck is None:
        import comfy_kitchen as ck
    sampling = model.get_model_object("model_sampling")
    sigma_start, sigma_end = (float(sampling.percent_to_sigma(p)) for p in (start_percent, end_percent))
    patch = CorePatch(ck, sigma_start, sigma_end, **options)
    m = model.clone()
    install_core_override(patch, _options(m))

    def on_prepare_state(model_patcher, timestep, *model_options):  # newest passes model_options; 0.3.64 does not
        if model_options:
            install_core_override(patch, model_options[0]["transformer_options"])

    m.add_callback_with_key(pe.CallbacksMP.ON_PREPARE_STATE, "block_sparse_attention", on_prepare_state)
    m.add_callback_with_key(pe.CallbacksMP.ON_CLEANUP, "block_sparse_attention", lambda model_patcher: patch.reset())
    return m, patch
