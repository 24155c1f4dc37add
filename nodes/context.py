"""One WanModel call as SparseFlow sees it before any layer runs: token geometry, step, progress, per-layer calls.

The DIFFUSION_MODEL wrapper (nodes/hook.py) builds a `CallContext` per model call, outside torch.compile's trace,
and writes it into that call's transformer_options; the attention override and the block patches read it.
Geometry follows ComfyUI's Wan forward (COMFY_NOTES §2.3): the video grid after pad-to-patch, plus the extra tokens
that are not in `grid_sizes`: Fun-Control's `reference_latent` (prepended through `ref_conv`) and the newest
in-context `context_latents` (each patch-embedded and appended).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sparseflow.geometry import Geometry, token_grid
from ..sparseflow.schedule import StepParams

__all__ = ["BLOCK_KEY", "CONTEXT_KEY", "PROBE_KEY", "CallContext", "LayerCall", "geometry_for", "sigma_lists",
           "step_index"]

CONTEXT_KEY = "sparseflow_call"  # per model call, written by the wrapper into the per-call dict
BLOCK_KEY = "sparseflow_block"  # per block, written by the block patch
PROBE_KEY = "sparseflow_probe"  # set in the behaviour check's own transformer_options (nodes/forwards/probe.py)


def _latent_tokens(latent: torch.Tensor, patch: tuple[int, int, int]) -> int:
    """Tokens of a (B, C, T, H, W) latent after pad-to-patch and the patch embedding."""
    t, h, w = (int(s) for s in latent.shape[-3:])
    return math.ceil(t / patch[0]) * math.ceil(h / patch[1]) * math.ceil(w / patch[2])


def geometry_for(dm: object, x: torch.Tensor, time_dim_concat: torch.Tensor | None, kwargs: dict) -> Geometry:
    """Self-attention token geometry of one WanModel call, from x before ComfyUI pads it (COMFY_NOTES §2.3).

    Grid = ceil((T + time_dim_concat frames) / pt), ceil(H / ph), ceil(W / pw); Fun-Control's `ref_conv`
    reference latent prepends (H_ref / ph) * (W_ref / pw) tokens; each of newest ComfyUI's `context_latents`
    appends its own patch-embedded tokens. I2V concat channels do not change the grid.
    """
    patch = tuple(getattr(dm, "patch_size", (1, 2, 2)))
    extra = int(time_dim_concat.shape[2]) if isinstance(time_dim_concat, torch.Tensor) else 0
    t, h, w = token_grid(tuple(int(s) for s in x.shape[-3:]), patch, extra)
    prefix = 0
    ref = kwargs.get("reference_latent")
    if getattr(dm, "ref_conv", None) is not None and isinstance(ref, torch.Tensor):
        prefix = (int(ref.shape[-2]) // patch[1]) * (int(ref.shape[-1]) // patch[2])  # Conv2d, no padding
    suffix = sum(_latent_tokens(lat, patch) for lat in kwargs.get("context_latents") or ()
                 if isinstance(lat, torch.Tensor) and lat.dim() == 5)
    return Geometry(t, h, w, prefix, suffix)


def step_index(sigma: float, sample_sigmas: list[float]) -> int:
    """Index of the entry of `sample_sigmas` closest to `sigma` (first on ties)."""
    dists = [abs(s - sigma) for s in sample_sigmas]
    return dists.index(min(dists))


def sigma_lists(to: dict) -> tuple[float, list[float]] | None:
    """(current sigma, sample_sigmas as floats) from transformer_options, or None when the sampler gave none."""
    sigmas, sample = to.get("sigmas"), to.get("sample_sigmas")
    if sigmas is None or sample is None:
        return None
    sigma = float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float(sigmas[0])
    return sigma, [float(s) for s in (sample.flatten().tolist() if isinstance(sample, torch.Tensor) else sample)]


@dataclass(frozen=True)
class LayerCall:
    """How one layer's self-attention runs in this model call: `kind` "dense" (ComfyUI's attention), "sparse"
    (SparseFlow's operator with the plan `code` on `backend`) or "pass" (SparseFlow cannot run it: `reason`)."""

    kind: str
    code: torch.Tensor | None = None
    backend: str = ""
    plan_id: int = -1  # the plan's index in the run's plan list, or -1 (dense / pass)
    reason: str = ""


@dataclass(frozen=True)
class CallContext:
    """What the wrapper derived for one model call, before any layer runs (outside torch.compile's trace).

    `forwards` is the behaviour check's answer for this model's Wan forwards (nodes/forwards/probe.py), `model` the
    diffusion model and `context_img_len` what its forward passes its blocks (for the fused block body).
    """

    geometry: Geometry
    step: int
    progress: float
    params: StepParams
    window: int
    layers: tuple[LayerCall, ...] = ()
    forwards: object = None
    model: object = None
    context_img_len: int | None = None
