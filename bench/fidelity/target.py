"""The quality-target calibration as a setting family of the fidelity study ("target" points on the plot).

Mirrors SparseFlow Calibrate to Target (nodes/calibrate_target.py) on the fidelity model: on the calibration seeds
(never the held-out evaluation seeds), a few-step dense preview and one preview per (sparsity, error budget) setting
of `sparseflow.target_search`'s default grid (Patch's sparsity slider on the `balanced` schedule, routing maps
calibrated at each budget from evaluate.py's calibration table); the cost of a setting is its plans' pair cost
(`masks.pair_counts`, what the node reads from `CallRecord.cost`); `target_search.choose` keeps the cheapest setting
meeting each target. evaluate.py then samples each chosen setting on the held-out seeds like every other setting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from comfyui_sparseflow.sparseflow import target_search as ts
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.masks import num_blocks, pair_counts
from comfyui_sparseflow.sparseflow.routing import RoutingMap
from comfyui_sparseflow.sparseflow.schedule import SCHEDULE_PRESETS, Schedule, scaled

from .hooks import DenseOverride, SparseFlowOverride, plan_for
from .sampler import sample

__all__ = ["BASE_SCHEDULE", "TARGETS", "plan_cost", "search", "target_schedule"]

BASE_SCHEDULE = "balanced"  # the Patch node's default
TARGETS = (ts.QualityTarget("psnr_db", 30.0), ts.QualityTarget("psnr_db", 33.0), ts.QualityTarget("psnr_db", 36.0))


def target_schedule(sparsity: float) -> Schedule:
    """The schedule a setting applies: the Patch node's default schedule under its sparsity slider."""
    return scaled(SCHEDULE_PRESETS[BASE_SCHEDULE], sparsity)


def plan_cost(geometry: Geometry, rmap: RoutingMap, schedule: Schedule, steps: int) -> tuple[int, int]:
    """(pair cost of every self-attention call of a `steps`-step run, the same calls dense), per batch element."""
    n = num_blocks(geometry.length, 128)
    done = full = 0
    for i in range(steps):
        params = schedule.at(i / max(1, steps - 1))
        for layer in range(rmap.layers):
            done += sum(pair_counts(plan_for(geometry, rmap, layer, params))[1])
            full += n * n * rmap.heads
    return done, full


def search(model: torch.nn.Module, cfg, maps: dict[float, RoutingMap], geometry: Geometry,
           attention: Callable[..., torch.Tensor], noise: torch.Tensor, classes: torch.Tensor, *, steps: int,
           shift: float, targets=TARGETS, space: ts.SearchSpace = ts.SearchSpace()) -> dict:
    """Preview dense and every setting of `space` (budgets must be keys of `maps`); the choice per target.

    Returns {"trials": [...], "choices": {target: {"sparsity", "budget", "met", "preview_psnr", "est_speedup"}}}.
    """
    layers = next(iter(maps.values())).layers
    ref = sample(model, cfg, noise, classes, DenseOverride(layers), steps=steps, shift=shift)
    trials = []
    for setting in space.settings():
        rmap, sched = maps[setting.budget], target_schedule(setting.sparsity)
        x = sample(model, cfg, noise, classes, SparseFlowOverride(geometry, rmap, sched, attention), steps=steps,
                   shift=shift)
        done, full = plan_cost(geometry, rmap, sched, steps)
        trials.append(ts.Trial(setting, ts.measure(x, ref, done, full)))
    out = {"preview_steps": steps, "trials": [{"sparsity": t.setting.sparsity, "budget": t.setting.budget,
                                               "psnr": t.measurement.psnr, "rel_err": t.measurement.rel_err,
                                               "nonfinite": t.measurement.nonfinite,
                                               "est_speedup": t.measurement.speedup} for t in trials],
           "choices": {}}
    for target in targets:
        r = ts.choose(target, trials)
        m = r.chosen.measurement
        out["choices"][target.describe()] = {"target_db": target.value, "sparsity": r.chosen.setting.sparsity,
                                             "budget": r.chosen.setting.budget, "met": r.met,
                                             "preview_psnr": m.psnr, "est_speedup": m.speedup,
                                             "report": ts.search_report(r)}
    return out
