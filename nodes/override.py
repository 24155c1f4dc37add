"""SparseFlow's attention override: ComfyUI's `optimized_attention_override`, for tensors and for containers.

After core `nodes_sparse_attention.py` (`make_attention_override` / `install_override`): the override recognises
Wan self-attention (nodes/decide.py) and runs the SparseFlow operator; every other call goes to the override below
it, or to ComfyUI's attention, with all kwargs forwarded. Newest ComfyUI wraps q/k/v in `AttentionTensorContainer`s
and hands them to an override's `container_function` (COMFY_NOTES §1.2): SparseFlow reads the shapes with `peek()`,
takes the tensors only for a call it runs, and passes the containers on untouched otherwise, so a backend below can
take them and free them early. Composition: an override below is chained, never replaced; SparseFlow's dense steps
skip the sparse overrides below it (another SparseFlow, core "Model Sparse Attention", known by their markers) and
reach the real dense path; re-installing (ON_PREPARE_STATE, every model call) does nothing while SparseFlow is
anywhere in the chain, so stacking with core's node (which re-installs itself on top each step) does not grow.
"""

from __future__ import annotations

import logging
import sys

import torch

from ..sparseflow.inputs import KernelLaunchError
from .config import COMFY_BACKEND
from .decide import EXPECTED_REASONS, Pass
from .report import log_once
from .run import RUN_KEY, RunState

__all__ = ["OVERRIDE_KEY", "SparseFlowOverride", "chain", "dense_below", "ensure_override", "unwrap_previous"]

OVERRIDE_KEY = "optimized_attention_override"
_CORE_PREVIOUS = "_block_sparse_attention_previous"  # core BSA's marker (comfy_extras/sparse_attention_history.py)


def _below(override: object) -> tuple[bool, object]:
    """(is it a known sparse override, the override below it): SparseFlow's or core BSA's markers."""
    if getattr(override, "_sparseflow", False):
        return True, override._sparseflow_previous
    if hasattr(override, _CORE_PREVIOUS):
        return True, getattr(override, _CORE_PREVIOUS)
    return False, None


def chain(override: object) -> list:
    """The overrides reachable from `override` through known markers, top first (an unmarked one ends it)."""
    out, seen = [], set()
    while override is not None and id(override) not in seen:
        seen.add(id(override))
        out.append(override)
        known, override = _below(override)
        if not known:
            break
    return out


def dense_below(override: object) -> object:
    """The first override at or below `override` that is not a known sparse one (None: ComfyUI's attention)."""
    for item in chain(override):
        if not _below(item)[0]:
            return item
    return None


def unwrap_previous(override: object) -> object:
    """The override below SparseFlow's when `override` is SparseFlow's (patching twice replaces)."""
    while getattr(override, "_sparseflow", False):
        override = override._sparseflow_previous
    return override


def ensure_override(to: dict) -> None:
    """Put SparseFlow's override on top of what is installed in `to`, unless SparseFlow is already in its chain."""
    current = to.get(OVERRIDE_KEY)
    if any(getattr(item, "_sparseflow", False) for item in chain(current)):
        return
    if current is not None:
        name = getattr(current, "__qualname__", type(current).__qualname__)
        log_once(("override replaced", name), "SparseFlow: another attention override (%s) was installed after "
                 "SparseFlow; SparseFlow runs first and hands it every call it does not take", name)
    to[OVERRIDE_KEY] = SparseFlowOverride(current)


def _global_attention():
    """ComfyUI's startup attention (decorated): called inside the wrapper it runs the backend directly."""
    return sys.modules["comfy.ldm.modules.attention"].optimized_attention


class SparseFlowOverride:
    """The override, chained onto `previous` (another node's override) as the fallback for calls it declines."""

    _sparseflow = True

    def __init__(self, previous: object = None) -> None:
        self._sparseflow_previous = previous

    def __call__(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        return self._attend(func, (q, k, v), False, heads, mask, attn_precision, skip_reshape, skip_output_reshape,
                            kwargs)

    def container_function(self, q, k, v, heads=None, mask=None, attn_precision=None, skip_reshape=False,
                           skip_output_reshape=False, **kwargs):
        """Newest ComfyUI: q/k/v as AttentionTensorContainers, no `func` (wrap_attn calls this instead)."""
        return self._attend(None, (q, k, v), True, heads, mask, attn_precision, skip_reshape, skip_output_reshape,
                            kwargs)

    def _attend(self, func, qkv, containers, heads, mask, attn_precision, skip_reshape, skip_output_reshape, kwargs):
        given = {name: val for name, val, default in (("mask", mask, None), ("attn_precision", attn_precision, None),
                                                      ("skip_reshape", skip_reshape, False),
                                                      ("skip_output_reshape", skip_output_reshape, False))
                 if val is not default}
        to = kwargs.get("transformer_options")
        run = to.get(RUN_KEY) if isinstance(to, dict) else None
        if not isinstance(run, RunState):
            return self._fallback(func, qkv, containers, heads, given, kwargs, dense=False)
        q, k, v = (t.peek() for t in qkv) if containers else qkv
        try:
            decision = run.decide(q, k, v, heads, mask, skip_reshape, skip_output_reshape, to)
        except Exception as e:  # noqa: BLE001 - never raise in the attention path
            decision = Pass("error", f"{type(e).__name__}: {e}")
        if isinstance(decision, Pass):
            level = logging.INFO if decision.reason in EXPECTED_REASONS else logging.WARNING
            run.passthrough(decision.reason, decision.detail, q, k, level)
            return self._fallback(func, qkv, containers, heads, given, kwargs, dense=False)
        shape = q.shape
        if decision.call.kind == "dense":
            run.record(decision, COMFY_BACKEND, shape[0], shape[1])
            return self._fallback(func, qkv, containers, heads, given, kwargs, dense=True)
        if containers:
            del q, k, v
            q, k, v = (t.take() for t in qkv)  # ours now: freed as soon as the operator is done with them
        try:
            out = _run_operator(q, k, v, decision.call.code, heads, decision.call.backend)
        except KernelLaunchError as e:  # this GPU cannot launch the kernel: said, with the sizes, in the summary
            run.passthrough(f"kernel cannot launch here: {e}", "", q, k, logging.WARNING)
            return self._fallback(func, (q, k, v), False, heads, given, kwargs, dense=True)
        except Exception as e:  # noqa: BLE001 - fall back to dense, counted and logged
            run.passthrough("operator error", f"{type(e).__name__}: {e}", q, k, logging.WARNING)
            return self._fallback(func, (q, k, v), False, heads, given, kwargs, dense=True)
        run.record(decision, decision.call.backend, shape[0], shape[1])
        return out

    def _fallback(self, func, qkv, containers, heads, given, kwargs, dense):
        """A declined call to the override below (for dense steps: the first that is not a sparse one) or to
        ComfyUI's attention; containers go on as containers where the next one takes them."""
        target = dense_below(self._sparseflow_previous) if dense else self._sparseflow_previous
        if containers:
            if target is not None and hasattr(target, "container_function"):
                return target.container_function(*qkv, heads=heads, **given, **kwargs)
            if target is None:  # kwargs hold _inside_attn_wrapper: the wrapper runs its backend, no override
                return _global_attention()(*qkv, heads=heads, **given, **kwargs)
            qkv = tuple(t.take() for t in qkv)
        if func is None:
            func = _global_attention()
        if target is None:
            return func(*qkv, heads=heads, **given, **kwargs)
        return target(func, *qkv, heads=heads, **given, **kwargs)


def _run_operator(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, code: torch.Tensor, heads: int,
                  backend: str) -> torch.Tensor:
    """`sparseflow.ops.attention_encoded` with the plan code and backend chosen per model call."""
    from ..sparseflow import ops

    return ops.attention_encoded(q, k, v, code, heads=heads, backend=backend)
