"""Calibrate a SparseFlow routing map on the first sampling step's q/k/v, inside ComfyUI's sampling loop.

The SparseFlow Calibrate logic (sparseflow/calibrate.py, after Sparse-vDiT's per-head search): one
sampler step at the first sigma runs with default attention, and an attention override scores every
candidate route of every head on each Wan self-attention call against dense (`head_errors`, on the
cond half of the CFG batch, through `sparseflow.ops.attention` on the chosen backend); the cheapest
candidate per head within the error budget wins (`choose_routes`). Layer = order of the self-attention
call within the model call. Nothing is stored but the (heads x candidates) error table per layer.
"""

from __future__ import annotations

import time

import torch

__all__ = ["calibrate_routing"]


def calibrate_routing(comfy, base_model, bench, latent: torch.Tensor, positive, negative, *, seed: int, cfg: float,
                      sampler: str, scheduler: str, steps: int, budget: float, backend: str, family: str):
    """Returns (RoutingMap, seconds, report text)."""
    from comfyui_sparseflow.sparseflow import ops
    from comfyui_sparseflow.sparseflow.calibrate import DEFAULT_CANDIDATES, choose_routes, head_errors
    from comfyui_sparseflow.sparseflow.geometry import geometry_from_latent
    from comfyui_sparseflow.sparseflow.routing import RoutingMap

    geometry = geometry_from_latent(tuple(latent.shape))
    layers = bench.layers
    table: dict[int, torch.Tensor] = {}
    costs_seen: list[torch.Tensor] = []
    counter = {"n": 0}
    m = base_model.clone()
    dm = m.get_model_object("diffusion_model")

    def attention(q, k, v, plan):
        return ops.attention(q, k, v, plan, backend=backend)

    def override(func, q, k, v, heads, *args, **kwargs):
        h = heads
        out = func(q, k, v, heads, *args, **kwargs)
        if q.shape != k.shape or q.dim() != 3:
            return out
        layer = counter["n"] % layers
        counter["n"] += 1
        if layer in table:          # only the first model call (first step) is scored
            return out
        to = kwargs.get("transformer_options") or {}
        order = list(to.get("cond_or_uncond", [0]))
        chunk = q.shape[0] // max(1, len(order))
        i = order.index(0) * chunk if 0 in order else 0
        b, n, c = q.shape
        qs, ks, vs = (t[i:i + 1].view(1, n, h, c // h).transpose(1, 2).contiguous() for t in (q, k, v))
        with torch.no_grad():
            errors, costs = head_errors(qs, ks, vs, geometry, DEFAULT_CANDIDATES, attention=attention)
        table[layer] = errors
        costs_seen.append(costs)
        return out

    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    # one step of the same sigma schedule: sigma_max first, as the timed runs' first step
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), scheduler, steps)[:2]
    noise = comfy.sample.prepare_noise(latent, seed)
    comfy.sample.sample(m, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                        sigmas=sigmas, disable_pbar=True, seed=seed)
    if len(table) != layers:
        raise RuntimeError(f"calibrate: scored {len(table)} of {layers} layers (dm has {len(dm.blocks)} blocks)")
    errors = torch.stack([table[i] for i in range(layers)])
    costs = torch.stack(costs_seen).amax(0)
    result = choose_routes(errors, costs, DEFAULT_CANDIDATES, budget)
    rmap = RoutingMap(result.routes(), result.windows(), result.topks(), result.error.float(), family,
                      f"bench-calibrate:budget={budget}")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return rmap, time.perf_counter() - t0, result.report().split("\n")[:3]
