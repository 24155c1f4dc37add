"""The per-model SparseFlow hooks: attention override, diffusion-model wrapper, block patches and callbacks.

Follows ComfyUI's own extension points (core `nodes_sparse_attention.py` install_override / dense fallback,
`nodes_easycache.py` holder + wrapper): the override recognises Wan self-attention and runs the SparseFlow
operator; everything else goes to the previous override or to ComfyUI's attention with every kwarg
forwarded. The DIFFUSION_MODEL wrapper gives each model call its context (nodes/state.py), the per-block
`("dit", "double_block", i)` replace patches give the block index (0.3.64; newest also sets `block_index` /
`grid_sizes`, used when present). Nothing here raises inside the attention path.
"""

from __future__ import annotations

import logging

import torch

from .state import (
    BLOCK_KEY,
    COMFY_BACKEND,
    CONTEXT_KEY,
    HEAD_DIMS,
    SPARSEFLOW_KEY,
    CallContext,
    PatchConfig,
    SparseFlowState,
    geometry_for,
    log_once,
    sigma_lists,
    step_index,
)

__all__ = [
    "BLOCK_KEY",
    "COMFY_BACKEND",
    "CONTEXT_KEY",
    "HEAD_DIMS",
    "OVERRIDE_KEY",
    "SPARSEFLOW_KEY",
    "CallContext",
    "PatchConfig",
    "SparseFlowState",
    "diffusion_model_wrapper",
    "ensure_override",
    "geometry_for",
    "log_once",
    "make_block_patch",
    "make_override",
    "on_cleanup",
    "on_prepare_state",
    "run_operator",
    "sigma_lists",
    "step_index",
    "unwrap_previous",
]

OVERRIDE_KEY = "optimized_attention_override"


def run_operator(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, code: torch.Tensor, heads: int,
                 backend: str) -> torch.Tensor:
    """`sparseflow.ops.attention_encoded` with the plan code and backend chosen per model call (`context()`)."""
    from ..sparseflow import ops

    return ops.attention_encoded(q, k, v, code, heads=heads, backend=backend)


_EXPECTED_REASONS = ("cross-attention", "masked attention", "pre-shaped (B, H, L, D) attention")


def make_override(previous=None):
    """The attention override, chained onto `previous` (another node's override) as the dense fallback."""

    def sparseflow_attention(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                             skip_output_reshape=False, **kwargs):
        given = {}
        if mask is not None:
            given["mask"] = mask
        if attn_precision is not None:
            given["attn_precision"] = attn_precision
        if skip_reshape:
            given["skip_reshape"] = skip_reshape
        if skip_output_reshape:
            given["skip_output_reshape"] = skip_output_reshape

        def fallback():
            if previous is not None:
                return previous(func, q, k, v, heads=heads, **given, **kwargs)
            return func(q, k, v, heads=heads, **given, **kwargs)

        to = kwargs.get("transformer_options")
        state = to.get(SPARSEFLOW_KEY) if isinstance(to, dict) else None
        if not isinstance(state, SparseFlowState):
            return fallback()
        try:
            decision = state.decide(q, k, v, heads, mask, skip_reshape, skip_output_reshape, to)
        except Exception as e:  # noqa: BLE001 - never raise in the attention path
            state.passthrough("error", f"{type(e).__name__}: {e}", q, k, logging.WARNING)
            return fallback()
        if decision[0] == "pass":
            level = logging.INFO if decision[1] in _EXPECTED_REASONS else logging.WARNING
            state.passthrough(decision[1], decision[2], q, k, level)
            return fallback()
        kind, ctx, layer, code, backend, plan_id = decision
        if kind == "dense":
            state.record(ctx, layer, COMFY_BACKEND, q.shape[0], q.shape[1], plan_id)
            return fallback()
        try:
            out = run_operator(q, k, v, code, heads, backend)
        except Exception as e:  # noqa: BLE001 - fall back to dense, counted and logged
            state.passthrough("operator error", f"{type(e).__name__}: {e}", q, k, logging.WARNING)
            return fallback()
        state.record(ctx, layer, backend, q.shape[0], q.shape[1], plan_id)
        return out

    sparseflow_attention._sparseflow = True
    sparseflow_attention._sparseflow_previous = previous
    return sparseflow_attention


def unwrap_previous(override):
    """The override below ours when `override` is a SparseFlow override (patching twice replaces)."""
    while override is not None and getattr(override, "_sparseflow", False):
        override = override._sparseflow_previous
    return override


def ensure_override(to: dict) -> None:
    """Put our override on top of whatever is installed in `to` unless it already is ours."""
    current = to.get(OVERRIDE_KEY)
    if getattr(current, "_sparseflow", False):
        return
    if current is not None:
        log_once(("override replaced", getattr(current, "__qualname__", repr(current))),
                 "SparseFlow: another attention override (%s) was installed after SparseFlow; SparseFlow runs "
                 "first and hands it every call it does not take", getattr(current, "__qualname__", current))
    to[OVERRIDE_KEY] = make_override(current)


def make_block_patch(index: int, previous=None):
    """A `("dit", "double_block", index)` replace that only records the block index (chained onto `previous`)."""

    def sparseflow_block(args, extra):
        args["transformer_options"][BLOCK_KEY] = index
        if previous is not None:
            return previous(args, extra)
        return extra["original_block"](args)

    sparseflow_block._sparseflow = True
    sparseflow_block._sparseflow_previous = previous
    return sparseflow_block


def diffusion_model_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                            transformer_options=None, **kwargs):
    """DIFFUSION_MODEL wrapper: geometry, step and override for one WanModel call; tidies up after it."""
    to = transformer_options if transformer_options is not None else {}
    state = to.get(SPARSEFLOW_KEY)
    if isinstance(state, SparseFlowState):
        try:
            to[CONTEXT_KEY] = state.context(executor.class_obj, x, time_dim_concat, to, kwargs)
            ensure_override(to)
        except Exception as e:  # noqa: BLE001 - without a context every call passes through, counted
            log_once(("context", type(e).__name__), "SparseFlow: could not derive the token geometry (%s); "
                     "this model call runs dense", e, level=logging.WARNING)
            to.pop(CONTEXT_KEY, None)
    try:
        return executor(x, timestep, context, clip_fea, time_dim_concat, to, **kwargs)
    finally:
        to.pop(CONTEXT_KEY, None)
        to.pop(BLOCK_KEY, None)


def on_prepare_state(patcher, timestep, *rest) -> None:
    """ON_PREPARE_STATE: reinstall the override in the live model_options (newest passes them; 0.3.64 does not)."""
    if rest and isinstance(rest[0], dict):
        to = rest[0].setdefault("transformer_options", {})
        if isinstance(to.get(SPARSEFLOW_KEY), SparseFlowState):
            ensure_override(to)


def on_cleanup(patcher) -> None:
    """ON_CLEANUP (also on interrupt): summary + reset of this patcher's state."""
    state = patcher.model_options.get("transformer_options", {}).get(SPARSEFLOW_KEY)
    if isinstance(state, SparseFlowState):
        state.finish()
