"""The per-model SparseFlow hooks: OUTER_SAMPLE and DIFFUSION_MODEL wrappers, block patches and a callback.

ComfyUI's own extension points only (core `nodes_sparse_attention.py`, `nodes_easycache.py`): the OUTER_SAMPLE
wrapper gives each sampling run its own `RunState` (nodes/run.py) in the run's copy of the model options and ends it
with one summary, on interrupt too; the DIFFUSION_MODEL wrapper gives each model call its context (geometry, step,
per-layer calls, the behaviour check's answer) and keeps the attention override (nodes/override.py) in the chain; the
per-block `("dit", "double_block", i)` replace patches give the block index (0.3.64; newest also sets `block_index`)
and run the fused block body (nodes/fused_block.py) in place of ComfyUI's; ON_PREPARE_STATE keeps the override in
newest ComfyUI's live model options. Nothing here raises inside the attention path.
"""

from __future__ import annotations

import logging

import torch

from .config import SPARSEFLOW_KEY, PatchConfig
from .context import BLOCK_KEY, CONTEXT_KEY, CallContext
from .fused_block import run_block
from .override import ensure_override
from .report import log_once
from .run import RUN_KEY, RunState
from .timeline import locate

__all__ = ["diffusion_model_wrapper", "make_block_patch", "on_prepare_state", "outer_sample_wrapper"]


def outer_sample_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: a fresh RunState for this sampling run (never shared by clones), its summary after."""
    import comfy.model_patcher
    import comfy.samplers

    guider = executor.class_obj
    original = guider.model_options
    config = original.get("transformer_options", {}).get(SPARSEFLOW_KEY)
    if not isinstance(config, PatchConfig):
        return executor(*args, **kwargs)
    patcher = guider.model_patcher
    sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
    timeline = locate(patcher.get_model_object("model_sampling"), sigmas, comfy.samplers)
    run = RunState(config, timeline, patcher)
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original
        run.finish()


def diffusion_model_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                            transformer_options=None, **kwargs):
    """DIFFUSION_MODEL wrapper: geometry, step and override for one WanModel call; tidies up after it."""
    to = transformer_options if transformer_options is not None else {}
    run = to.get(RUN_KEY)
    if isinstance(run, RunState):
        try:
            to[CONTEXT_KEY] = run.context(executor.class_obj, x, time_dim_concat, clip_fea, to, kwargs)
            ensure_override(to)
        except Exception as e:  # noqa: BLE001 - without a context every call passes through, counted
            log_once(("context", type(e).__name__), "SparseFlow: could not derive the token geometry (%s); "
                     "this model call runs dense", e, level=logging.WARNING)
            to.pop(CONTEXT_KEY, None)
    elif isinstance(to.get(SPARSEFLOW_KEY), PatchConfig):
        log_once(("no run",), "SparseFlow: a model call outside a ComfyUI sampling run (no OUTER_SAMPLE wrapper ran) "
                 "uses ComfyUI's own attention", level=logging.WARNING)
    try:
        return executor(x, timestep, context, clip_fea, time_dim_concat, to, **kwargs)
    finally:
        to.pop(CONTEXT_KEY, None)
        to.pop(BLOCK_KEY, None)


def _block_body(index: int, original, to: dict):
    """What runs as block `index`: SparseFlow's fused block body (as a replace patch's `original_block`), or
    ComfyUI's own block where fused block norms are off, compiling, or no supported forward matched."""
    if torch.compiler.is_compiling():  # inductor fuses ComfyUI's own passes; no host work inside the trace
        return original
    run, ctx = to.get(RUN_KEY), to.get(CONTEXT_KEY)
    if not isinstance(run, RunState) or not isinstance(ctx, CallContext) or not run.config.fuse_block_norms:
        return original
    forwards = ctx.forwards
    version = getattr(forwards, "block", None)
    model = ctx.model
    if version is None or index >= len(getattr(model, "blocks", ())):
        why = getattr(forwards, "block_reason", "") or "no behaviour check ran"
        run.telemetry.note_block_norms(why)
        return original

    def fused(args):
        return run_block(version, model.blocks[index], args, ctx.context_img_len, run, original)

    return fused


def make_block_patch(index: int, previous=None):
    """A `("dit", "double_block", index)` replace: records the block index, runs the fused block body; chained
    onto `previous` (another node's replace), which gets the fused body as its `original_block`."""

    def sparseflow_block(args, extra):
        to = args["transformer_options"]
        to[BLOCK_KEY] = index
        body = _block_body(index, extra["original_block"], to)
        if previous is not None:
            return previous(args, {**extra, "original_block": body})
        return body(args)

    sparseflow_block._sparseflow = True
    sparseflow_block._sparseflow_previous = previous
    return sparseflow_block


def on_prepare_state(patcher, timestep, *rest) -> None:
    """ON_PREPARE_STATE: keep the override in the live model_options (newest passes them; 0.3.64 does not)."""
    if rest and isinstance(rest[0], dict):
        to = rest[0].setdefault("transformer_options", {})
        if isinstance(to.get(SPARSEFLOW_KEY), PatchConfig):
            ensure_override(to)
