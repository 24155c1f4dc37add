"""The SparseFlow Calibrate to Target node: the fastest Patch setting whose few-step preview stays within a target.

One dense preview, sampled with ComfyUI's sampler on a clean clone, is both the reference and the per-head
calibration run (nodes/calibrate.py measures every head on it). Then each (sparsity, error budget) setting of the
grid is applied with `apply_sparseflow` (what the Patch node does) and previewed with the same seed; the framework-
free search (sparseflow/target_search.py) keeps the cheapest setting meeting the target. Speed is estimated from the
preview run's plans (`CallRecord.cost`), not timed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from comfy_api.latest import io

from ..sparseflow import target_search as ts
from ..sparseflow.routing import RoutingMap, routing_to_json
from ..sparseflow.schedule import DEFAULT_SCHEDULE, Schedule, scaled, schedule_preset
from .calibrate import dense_calibration
from .patch import apply_sparseflow, check_backend, wan_info
from .run import last_run
from .types import RoutingType, ScheduleType, advanced, schema
from .unpatch import dense_clone

__all__ = ["SparseFlowCalibrateToTarget", "TargetOutcome", "calibrate_to_target"]

log = logging.getLogger("sparseflow.nodes")

WHO = "SparseFlow Calibrate to Target"


@dataclass(frozen=True)
class TargetOutcome:
    """What the search gives the Patch node (routing map, sparsity) and the user (report), plus the raw result."""

    routing: RoutingMap
    sparsity: float
    report: str
    result: ts.SearchResult


def _sampler(model, positive, negative, latent: dict, steps: int, cfg: float, seed: int, sampler_name: str,
             scheduler: str, callback):
    """One preview with ComfyUI's sampler, as `nodes.common_ksampler` runs it."""
    import comfy.sample

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                               noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True, seed=seed)


def calibrate_to_target(model, positive, negative, latent: dict, *, target: ts.QualityTarget,
                        space: ts.SearchSpace = ts.SearchSpace(), steps: int = 4, cfg: float = 5.0, seed: int = 0,
                        sampler_name: str = "euler", scheduler: str = "simple", block: int = 128,
                        schedule: Schedule | None = None, backend: str = "auto",
                        node_id: str | None = None) -> TargetOutcome:
    """Preview dense and every setting of `space`; keep the cheapest meeting `target` (the densest when none)."""
    import comfy.model_management
    import comfy.utils

    info = wan_info(model)  # every user error is raised here, before any sampling
    check_backend(backend)
    if not isinstance(steps, int) or not 1 <= steps <= 100:
        raise ValueError(f"{WHO}: preview_steps must be an int in [1, 100]; got {steps!r}")
    sched = schedule if schedule is not None else schedule_preset(DEFAULT_SCHEDULE)
    settings = space.settings()
    pbar = comfy.utils.ProgressBar(steps * (1 + len(settings)), node_id=node_id)
    done = [0]

    def on_step(step, *_args) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        pbar.update_absolute(done[0] + step + 1)

    clean = dense_clone(model, WHO)
    dense = dense_calibration(clean, positive, negative, latent, steps=steps, cfg=cfg, seed=seed,
                              sampler_name=sampler_name, scheduler=scheduler, measure=2, block=block,
                              callback=on_step, who=WHO)
    ref = dense.latent
    trials, seen, maps = [], {}, {}
    for setting in settings:
        done[0] += steps
        comfy.model_management.throw_exception_if_processing_interrupted()
        if setting.budget not in maps:
            maps[setting.budget] = dense.routing(setting.budget)[0]
        rmap = maps[setting.budget]
        key = ts.effective_patch(scaled(sched, setting.sparsity), rmap, steps)
        if key not in seen:  # an identical patch gives an identical preview: measured once
            patched = apply_sparseflow(clean, schedule=sched, routing=rmap, sparsity=setting.sparsity, block=block,
                                       backend=backend)
            x = _sampler(patched, positive, negative, latent, steps, cfg, seed, sampler_name, scheduler, on_step)
            calls = last_run(patched).telemetry.calls
            cost = sum(c.pairs if c.cost is None else c.cost for c in calls)
            seen[key] = ts.measure(x, ref, cost, sum(c.dense_pairs for c in calls))
            del patched, x
        trials.append(ts.Trial(setting, seen[key]))
        pbar.update_absolute(done[0] + steps)

    result = ts.choose(target, trials)
    chosen = result.chosen.setting
    rmap = maps[chosen.budget]
    notes = (f"{len(seen)} distinct previews of {steps} {sampler_name}/{scheduler} steps at cfg {cfg}, seed {seed}, "
             f"{info.layers}x{info.heads} heads, block {block}, schedule {sched.name}; apply with SparseFlow Patch "
             f"at block_size {block}, window -1, anchor_frames 1, linear_kind pooled and this schedule")
    report = ts.search_report(result, notes)
    if result.met:
        log.info("%s: %s", WHO, result.message)
    else:
        log.warning("%s: %s", WHO, result.message)
    return TargetOutcome(rmap, chosen.sparsity, report, result)


class SparseFlowCalibrateToTarget(io.ComfyNode):
    """MODEL + conditioning + latent + quality target -> SPARSEFLOW_ROUTING + sparsity + report."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return schema(
            node_id="SparseFlowCalibrateToTarget",
            display_name="SparseFlow Calibrate to Target",
            description=("Picks the fastest SparseFlow setting that keeps your video close to dense: samples a few "
                         "steps densely (the reference, and a per-head calibration), then every sparsity x error "
                         "budget setting with the same seed, and keeps the cheapest that meets your PSNR or error "
                         "target. Connect routing and sparsity to SparseFlow Patch."),
            inputs=[
                io.Model.Input("model", tooltip="The Wan model (unpatched; a SparseFlow Patch on it is taken off "
                                                "for the search)."),
                io.Conditioning.Input("positive", tooltip="Your positive prompt (as for the KSampler)."),
                io.Conditioning.Input("negative", tooltip="Your negative prompt."),
                io.Latent.Input("latent", tooltip="The latent you sample (use the resolution and length you will "
                                                  "render)."),
                io.Combo.Input("metric", options=list(ts.METRICS), default=ts.METRICS[0],
                               tooltip="psnr_db: PSNR of the preview's final latent vs dense, in dB (higher = "
                                       "closer; 30 dB is close). relative_error: ||x - dense|| / ||dense|| of the "
                                       "final latent (lower = closer)."),
                io.Float.Input("target", default=30.0, min=0.0, max=200.0, step=0.5, round=0.001,
                               tooltip="psnr_db: at least this many dB (1 to 200). relative_error: at most this "
                                       "(0 to 1, e.g. 0.1)."),
                io.Int.Input("preview_steps", default=4, min=1, max=100, step=1,
                             tooltip="Steps of each preview run (1 dense + one per setting). 4 is enough to rank."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale, as in your workflow."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, step=1,
                             control_after_generate=True, tooltip="Noise seed (same seed = same choice)."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="Sampler, as in your workflow."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                               tooltip="Scheduler, as in your workflow."),
                io.String.Input("sparsity_values", default=", ".join(f"{v:g}" for v in ts.DEFAULT_SPARSITIES),
                                tooltip="Patch sparsity slider values to try (0 to 1, comma separated).",
                                **advanced(io.String.Input)),
                io.String.Input("error_budgets", default=", ".join(f"{v:g}" for v in ts.DEFAULT_BUDGETS),
                                tooltip="Per-head error budgets to calibrate routing maps at (>= 0, comma "
                                        "separated; lower = more dense heads).", **advanced(io.String.Input)),
                io.Combo.Input("block_size", options=["128", "64"], default="128",
                               tooltip="Tokens per attention block; must match SparseFlow Patch's block_size.",
                               **advanced(io.Combo.Input)),
                ScheduleType.Input("schedule", optional=True,
                                   tooltip="The schedule you give SparseFlow Patch (default: 'balanced')."),
            ],
            outputs=[RoutingType.Output(display_name="routing", tooltip="Connect to SparseFlow Patch's routing."),
                     io.Float.Output(display_name="sparsity", tooltip="Connect to SparseFlow Patch's sparsity."),
                     io.String.Output(display_name="report", tooltip="The choice, its measured quality, its "
                                                                     "estimated speed-up and every setting tried.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, *, model: io.Model.Type, positive, negative, latent: dict, metric: str, target: float,
                preview_steps: int, cfg: float, seed: int, sampler_name: str, scheduler: str, sparsity_values: str,
                error_budgets: str, block_size: str, schedule: Schedule | None = None) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        space = ts.SearchSpace(ts.parse_values(sparsity_values, "sparsity_values"), ts.parse_values(error_budgets,
                                                                                             "error_budgets"))
        out = calibrate_to_target(model, positive, negative, latent, target=ts.QualityTarget(metric, target),
                                  space=space, steps=preview_steps, cfg=cfg, seed=seed, sampler_name=sampler_name,
                                  scheduler=scheduler, block=int(block_size), schedule=schedule,
                                  node_id=None if node_id is None else str(node_id))
        return io.NodeOutput(out.routing, out.sparsity, out.report,
                             ui={"sparseflow_routing": [routing_to_json(out.routing)], "text": [out.report]})
