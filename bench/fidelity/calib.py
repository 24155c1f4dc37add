"""Calibration on the fidelity model's captured q/k/v, linear-kind errors, and the full-size Wan 1.3B timing.

Uses `sparseflow.calibrate` (head_errors -> ErrorTable -> choose_routes), the same math the Calibrate node
runs, with the op passed in (`hooks.op_attention`: the Triton kernel on CUDA, or the reference).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
from comfyui_sparseflow.sparseflow.calibrate import (
    DEFAULT_CANDIDATES,
    CalibrationResult,
    Candidate,
    ErrorTable,
    choose_routes,
    head_errors,
)
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR
from comfyui_sparseflow.sparseflow.routing import RoutingMap

from .hooks import Capture

__all__ = ["WAN13B_GEOMETRY", "calibrate_captures", "calibrated_map", "error_tensor", "linear_kind_errors",
           "time_full_calibration"]

log = logging.getLogger("sparseflow.bench.fidelity.calib")

WAN13B_GEOMETRY = Geometry(21, 30, 52)  # 832x480, 81 frames: L = 32760 (ANCHORS.md)


def calibrate_captures(captures: Sequence[Capture], geometry: Geometry, attention: Callable[..., torch.Tensor],
                       candidates: Sequence[Candidate] = DEFAULT_CANDIDATES, *, block: int = 128,
                       linear_kind: str = "pooled") -> ErrorTable:
    """Per-(layer, head, candidate) errors accumulated over every capture (RMS over steps and samples)."""
    table = ErrorTable(tuple(candidates))
    for cap in captures:
        errors, costs = head_errors(cap.q, cap.k, cap.v, geometry, candidates, block=block, compensation=True,
                                    linear_kind=linear_kind, attention=attention)
        table.add(cap.layer, errors, costs)
    return table


def error_tensor(table: ErrorTable, layers: int) -> torch.Tensor:
    """(layers, heads, C) RMS errors."""
    return torch.stack([table.rms(layer) for layer in range(layers)])


def calibrated_map(table: ErrorTable, layers: int, budget: float) -> tuple[RoutingMap, CalibrationResult]:
    """The cheapest route within `budget` per head, as a RoutingMap (windows fixed per head, topk from candidates)."""
    res = choose_routes(error_tensor(table, layers), table.costs, table.candidates, budget)
    rmap = RoutingMap(res.routes(), res.windows(), res.topks(), res.error.float(), "generic",
                      f"calibrate:budget={budget:g}", "fidelity model, captured q/k/v")
    return rmap, res


def linear_kind_errors(captures: Sequence[Capture], geometry: Geometry, attention: Callable[..., torch.Tensor],
                       layers: int, block: int = 128) -> dict[str, torch.Tensor]:
    """(layers, heads) RMS relative error vs dense attention of the linear route, per linear kind."""
    out = {}
    cands = (Candidate(LINEAR), Candidate(DENSE))
    for kind in ("pooled", "feature"):
        table = calibrate_captures(captures, geometry, attention, cands, block=block, linear_kind=kind)
        out[kind] = error_tensor(table, layers)[..., 0]
    return out


def time_full_calibration(attention: Callable[..., torch.Tensor], *, layers: int = 30, heads: int = 12,
                          geometry: Geometry = WAN13B_GEOMETRY, budget: float = 0.1, time_cap: float = 120.0,
                          device: str = "cuda", seed: int = 0) -> dict:
    """Wall time of calibrating a full Wan 1.3B map: random-weight bf16 q/k/v (1, 12, 32760, 128) per layer
    through head_errors (DEFAULT_CANDIDATES), then choose_routes. Stops at `time_cap` and extrapolates."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (1, heads, geometry.length, 128)
    table = ErrorTable(DEFAULT_CANDIDATES)
    per_layer = []
    # warm-up outside the clock: kernel compilation and autotuning happen once per process
    q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3))
    head_errors(q, k, v, geometry, DEFAULT_CANDIDATES, compensation=True, attention=attention)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    for layer in range(layers):
        t0 = time.perf_counter()
        q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3))
        errors, costs = head_errors(q, k, v, geometry, DEFAULT_CANDIDATES, compensation=True, attention=attention)
        table.add(layer, errors, costs)
        if device == "cuda":
            torch.cuda.synchronize()
        per_layer.append(time.perf_counter() - t0)
        done += 1
        if time.perf_counter() - start > time_cap:
            break
    if done == layers:
        res = choose_routes(error_tensor(table, layers), table.costs, DEFAULT_CANDIDATES, budget)
        del res
    seconds = time.perf_counter() - start
    total = seconds if done == layers else seconds / done * layers
    return {"layers_done": done, "layers": layers, "heads": heads, "length": geometry.length,
            "seconds_measured": seconds, "seconds_full_map": total, "extrapolated": done < layers,
            "seconds_per_layer_median": sorted(per_layer)[len(per_layer) // 2],
            "candidates": [c.name for c in DEFAULT_CANDIDATES]}
