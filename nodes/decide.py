"""Which attention calls SparseFlow takes: the route decision for one call of the attention override.

A call is Wan self-attention of this model when it is unmasked, (B, L, H·D), q/k/v of one shape, this model's head
count and head size, and L the model call's token count (video grid plus extra tokens, nodes/context.py); then the
layer's `LayerCall` of the model call decides (made before the call, so this path does no Python work per layer).
Anything else is a `Pass`, handed to the override below or to ComfyUI's attention, with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sparseflow.geometry import Geometry
from .config import HEAD_DIMS
from .context import BLOCK_KEY, CONTEXT_KEY, CallContext, LayerCall
from .plans import PlanCache

__all__ = ["EXPECTED_REASONS", "Pass", "Route", "decide"]

EXPECTED_REASONS = ("cross-attention", "masked attention", "pre-shaped (B, H, L, D) attention")


@dataclass(frozen=True)
class Pass:
    """A call SparseFlow does not take: `reason` (counted in the run summary) and a `detail` for the log."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Route:
    """A Wan self-attention call of `layer` in the model call `ctx`, run as `call` says ("dense" or "sparse")."""

    ctx: CallContext
    layer: int
    call: LayerCall


def decide(plans: PlanCache, q: object, k: object, v: object, heads: object,
           mask: object, skip_reshape: bool, skip_output_reshape: bool, to: dict) -> Pass | Route:
    """The route of one attention call (q, k, v as tensors; a container's `peek()` for newest ComfyUI)."""
    cfg = plans.config
    if mask is not None:
        return Pass("masked attention")
    if skip_reshape or skip_output_reshape:
        return Pass("pre-shaped (B, H, L, D) attention")
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        return Pass("not (B, L, H*D) layout")
    if q.shape != k.shape or q.shape != v.shape:
        return Pass("cross-attention")
    if not isinstance(heads, int) or heads != cfg.heads or q.shape[2] % heads:
        return Pass("other head count", f"heads {heads}, model {cfg.heads}")
    if q.shape[2] // heads not in HEAD_DIMS:
        return Pass("head_dim", f"head_dim {q.shape[2] // heads} not in {HEAD_DIMS}")
    ctx = to.get(CONTEXT_KEY)
    if not isinstance(ctx, CallContext):
        return Pass("no geometry", "the diffusion-model wrapper did not run")
    geometry = ctx.geometry
    grid = to.get("grid_sizes")  # newest ComfyUI: the grid after patch embedding; the extra tokens are not in it
    if grid is not None and len(grid) == 3:
        geometry = Geometry(int(grid[0]), int(grid[1]), int(grid[2]), geometry.prefix, geometry.suffix)
    if q.shape[1] != geometry.length:
        return Pass("token count mismatch", f"{q.shape[1]} tokens, geometry {geometry.describe()}")
    layer = to.get(BLOCK_KEY, to.get("block_index"))
    if not isinstance(layer, int) or not 0 <= layer < cfg.layers:
        return Pass("no block index", f"block {layer!r}, model layers 0..{cfg.layers - 1}")
    if geometry == ctx.geometry and layer < len(ctx.layers):
        call = ctx.layers[layer]  # made before the model call (no Python work here)
    else:
        call = plans.layer_call(geometry, layer, ctx.params, q)
    if call.kind == "pass":
        return Pass("operator error", call.reason)
    return Route(ctx, layer, call)
