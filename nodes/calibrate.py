"""The SparseFlow Calibrate node: dense sampling of the user's own inputs, per-head errors, a routing map.

Follows Sparse-vDiT's offline per-head search (arXiv 2506.03065) through `sparseflow/calibrate.py`: while
ComfyUI samples densely, a capture override measures every candidate route on the real q/k/v of each
self-attention call (batch element 0, at a few evenly spread steps), then the cheapest route within the
error budget is kept per head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..sparseflow.calibrate import DEFAULT_CANDIDATES, ErrorTable, choose_routes, head_errors
from ..sparseflow.plan import BLOCKS
from ..sparseflow.routing import RoutingMap, routing_to_json
from .context import BLOCK_KEY, geometry_for, sigma_lists, step_index
from .hook import make_block_patch
from .patch import WanInfo, wan_info
from .report import log_once
from .types import RoutingType, advanced, schema
from .unpatch import dense_clone

__all__ = ["DenseCalibration", "SparseFlowCalibrate", "calibrate_model", "dense_calibration", "measured_steps"]

log = logging.getLogger("sparseflow.nodes")

CAPTURE_KEY = "sparseflow_calibrate"


def measured_steps(steps: int, count: int) -> list[int]:
    """`count` step indices spread evenly over 0..steps-1 (first and last included)."""
    count = max(1, min(count, steps))
    if count == 1:
        return [0]
    return sorted({round(i * (steps - 1) / (count - 1)) for i in range(count)})


class _Capture:
    """Per-run capture state: which calls to measure, the error table and the progress bar."""

    def __init__(self, layers: int, heads: int, steps: list[int], block: int, anchors: tuple[int, ...],
                 linear_kind: str, pbar) -> None:
        self.layers, self.heads, self.steps = layers, heads, set(steps)
        self.block, self.anchors, self.linear_kind = block, anchors, linear_kind
        self.table = ErrorTable(tuple(DEFAULT_CANDIDATES))
        self.pbar = pbar
        self.model_call = 0
        self.done: set[tuple[int, int]] = set()  # (step, layer): one measurement each (VACE blocks share i)
        self.measured = 0

    def wrapper(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                transformer_options=None, **kwargs):
        to = transformer_options if transformer_options is not None else {}
        self.model_call += 1
        sig = sigma_lists(to)
        step = step_index(*sig) if sig is not None else 0
        to[CAPTURE_KEY] = (self.model_call, step, geometry_for(executor.class_obj, x, time_dim_concat, kwargs))
        try:
            return executor(x, timestep, context, clip_fea, time_dim_concat, to, **kwargs)
        finally:
            to.pop(CAPTURE_KEY, None)
            to.pop(BLOCK_KEY, None)

    def override(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        given = {name: val for name, val, default in (("mask", mask, None), ("attn_precision", attn_precision, None),
                                                      ("skip_reshape", skip_reshape, False),
                                                      ("skip_output_reshape", skip_output_reshape, False))
                 if val is not default}
        try:
            self._measure(q, k, v, heads, mask, skip_reshape or skip_output_reshape, kwargs.get("transformer_options"))
        except Exception as e:  # noqa: BLE001 - calibration never breaks the dense sampling it rides on
            log_once(("calibrate", type(e).__name__), "SparseFlow Calibrate: could not measure a call (%s)", e,
                     level=logging.WARNING)
        return func(q, k, v, heads=heads, **given, **kwargs)

    def _measure(self, q, k, v, heads, mask, preshaped, to) -> None:
        if mask is not None or preshaped or not isinstance(to, dict) or q.dim() != 3:
            return
        if q.shape != k.shape or q.shape != v.shape or heads != self.heads:
            return
        call = to.get(CAPTURE_KEY)
        layer = to.get(BLOCK_KEY, to.get("block_index"))
        if call is None or not isinstance(layer, int):
            return
        _, step, geometry = call
        if step not in self.steps or q.shape[1] != geometry.length or (step, layer) in self.done:
            return
        self.done.add((step, layer))
        b, length, hd = q.shape
        d = hd // heads
        qs, ks, vs = (t[:1].detach().float().view(1, length, heads, d).transpose(1, 2) for t in (q, k, v))
        errors, costs = head_errors(qs, ks, vs, geometry, self.table.candidates, block=self.block,
                                    anchors=self.anchors, linear_kind=self.linear_kind)
        self.table.add(layer, errors, costs)
        self.measured += 1
        if self.pbar is not None:
            self.pbar.update(1)


@dataclass(frozen=True)
class DenseCalibration:
    """One dense sampling run with every head measured: the error table, the dense latent it sampled, and how."""

    info: WanInfo
    table: ErrorTable
    latent: torch.Tensor
    notes: str

    def routing(self, budget: float) -> tuple[RoutingMap, str]:
        """The routing map (and its readable report) that keeps, per head, the cheapest route within `budget`."""
        info, table = self.info, self.table
        errors = torch.stack([table.rms(la) for la in range(info.layers)])
        result = choose_routes(errors, table.costs, table.candidates, budget)
        notes = f"{self.notes}, error budget {budget}"
        rmap = RoutingMap(result.routes(), result.windows(), result.topks(), result.error.float(), info.family,
                          f"calibrate:{info.model_type}", notes)
        return rmap, result.report() + "\n" + notes


def dense_calibration(model, positive, negative, latent: dict, *, steps: int = 4, cfg: float = 5.0, seed: int = 0,
                      sampler_name: str = "euler", scheduler: str = "simple", measure: int = 2, block: int = 128,
                      anchors: tuple[int, ...] = (0,), linear_kind: str = "pooled", pbar=None, callback=None,
                      who: str = "SparseFlow Calibrate") -> DenseCalibration:
    """Sample densely with ComfyUI (`comfy.sample.sample`) on a clean clone (a SparseFlow patch taken off) and
    measure every head at `measure` evenly spread steps; `pbar.update(1)` per measured layer, `callback` per step."""
    import comfy.patcher_extension as pe
    import comfy.sample

    info = wan_info(model)
    if block not in BLOCKS:
        raise ValueError(f"{who}: block must be one of {BLOCKS}; got {block!r}")
    at = measured_steps(steps, measure)
    cap = _Capture(info.layers, info.heads, at, block, anchors, linear_kind, pbar)

    m = dense_clone(model, who)
    to = m.model_options.setdefault("transformer_options", {})
    previous = to.get("optimized_attention_override")
    if previous is not None:
        log.warning("%s: the model already has an attention override (%s); calibration measures against "
                    "ComfyUI's own dense attention instead", who, getattr(previous, "__qualname__", previous))
    to["optimized_attention_override"] = cap.override
    for i in range(info.layers):
        m.set_model_patch_replace(make_block_patch(i), "dit", "double_block", i)
    m.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, CAPTURE_KEY)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, CAPTURE_KEY, cap.wrapper)

    samples = comfy.sample.fix_empty_latent_channels(m, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    out = comfy.sample.sample(m, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                              noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True, seed=seed)

    missing = [la for la in range(info.layers) if la not in cap.table.count]
    if missing:
        raise RuntimeError(f"{who}: no self-attention call was measured for layers {missing}; "
                           "is this a Wan model run through ComfyUI's own sampler?")
    notes = (f"calibrated on {steps} {sampler_name}/{scheduler} steps at cfg {cfg}, measured at steps "
             f"{at} ({cap.measured} calls), block {block}")
    return DenseCalibration(info, cap.table, out, notes)


def calibrate_model(model, positive, negative, latent: dict, *, steps: int = 4, cfg: float = 5.0, seed: int = 0,
                    sampler_name: str = "euler", scheduler: str = "simple", budget: float = 0.1,
                    measure: int = 2, block: int = 128, anchors: tuple[int, ...] = (0,),
                    linear_kind: str = "pooled", node_id: str | None = None) -> tuple[RoutingMap, str]:
    """Sample densely with ComfyUI (`comfy.sample.sample`), measure every head, choose routes within `budget`."""
    import comfy.utils

    info = wan_info(model)
    if block not in BLOCKS:
        raise ValueError(f"SparseFlow Calibrate: block must be one of {BLOCKS}; got {block!r}")
    if not budget >= 0:
        raise ValueError(f"SparseFlow Calibrate: error budget must be >= 0; got {budget!r}")
    pbar = comfy.utils.ProgressBar(len(measured_steps(steps, measure)) * info.layers, node_id=node_id)
    dense = dense_calibration(model, positive, negative, latent, steps=steps, cfg=cfg, seed=seed,
                              sampler_name=sampler_name, scheduler=scheduler, measure=measure, block=block,
                              anchors=anchors, linear_kind=linear_kind, pbar=pbar)
    rmap, report = dense.routing(budget)
    log.info("SparseFlow Calibrate: %s", report.splitlines()[1] if "\n" in report else report)
    return rmap, report


class SparseFlowCalibrate(io.ComfyNode):
    """MODEL + conditioning + latent -> SPARSEFLOW_ROUTING + report."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return schema(
            node_id="SparseFlowCalibrate",
            display_name="SparseFlow Calibrate",
            description=("Finds the cheapest route for every attention head of your model on your own prompt and "
                         "latent: samples a few steps densely, measures each route's error per head, keeps the "
                         "cheapest within the error budget. Save the map with SparseFlow Save Routing."),
            inputs=[
                io.Model.Input("model", tooltip="The unpatched Wan model to calibrate."),
                io.Conditioning.Input("positive", tooltip="Your positive prompt (as for the KSampler)."),
                io.Conditioning.Input("negative", tooltip="Your negative prompt."),
                io.Latent.Input("latent", tooltip="The latent you sample (its size sets the token geometry; use the "
                                                  "resolution and length you will render)."),
                io.Int.Input("steps", default=4, min=1, max=100, step=1,
                             tooltip="Dense sampling steps to run (few are enough: 4)."),
                io.Int.Input("measure_steps", default=2, min=1, max=100, step=1,
                             tooltip="At how many of those steps (spread evenly, first and last included) every "
                                     "layer's q/k/v is measured. More = steadier maps, slower."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale, as in your workflow."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, step=1,
                             control_after_generate=True, tooltip="Noise seed."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="Sampler, as in your workflow."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                               tooltip="Scheduler, as in your workflow."),
                io.Float.Input("error_budget", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Largest relative error ||route - dense|| / ||dense|| a head may have; "
                                       "0.1 keeps ~90% of each head's output. Lower = denser, safer."),
                io.Combo.Input("block_size", options=["128", "64"], default="128",
                               tooltip="Tokens per attention block; must match SparseFlow Patch's block_size.",
                               **advanced(io.Combo.Input)),
            ],
            outputs=[RoutingType.Output(display_name="routing", tooltip="Connect to SparseFlow Patch or Save "
                                                                        "Routing."),
                     io.String.Output(display_name="report", tooltip="Per-head routes and errors, readable.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, *, model: io.Model.Type, positive, negative, latent: dict, steps: int, measure_steps: int,
                cfg: float, seed: int, sampler_name: str, scheduler: str, error_budget: float,
                block_size: str) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        rmap, report = calibrate_model(model, positive, negative, latent, steps=steps, cfg=cfg, seed=seed,
                                       sampler_name=sampler_name, scheduler=scheduler, budget=error_budget,
                                       measure=measure_steps, block=int(block_size), node_id=node_id)
        return io.NodeOutput(rmap, report, ui={"sparseflow_routing": [routing_to_json(rmap)], "text": [report]})
