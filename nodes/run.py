"""One sampling run of a SparseFlow-patched model: its plans, the calls it noted, its telemetry and its report.

The OUTER_SAMPLE wrapper (nodes/hook.py) makes a fresh `RunState` per sampling run and puts it in the run's own copy
of the model options (core EasyCache's per-run holder), so clones of a patched model never share run state, even on
newest ComfyUI, whose `clone()` shares the objects in model_options. Per model call `context()` (outside
torch.compile's trace) derives the geometry, the step and every layer's call; per attention call `decide()` picks
the route and `record()` notes the call (eager runs); `finish()` ends the run with one summary line, the websocket
report and `last_run(model)`.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch

from ..sparseflow.masks import num_blocks, pair_counts
from ..sparseflow.plan import DENSE, SPARSE
from ..sparseflow.schedule import progress_from_sigmas
from ..sparseflow.telemetry import CallRecord, RunTelemetry
from .config import PatchConfig
from .context import CallContext, geometry_for, sigma_lists, step_index
from .decide import Pass, Route, decide
from .plans import PlanCache
from .report import log_once, send_report
from .timeline import Timeline

__all__ = ["RUN_KEY", "NotedCall", "RunReport", "RunState", "Timeline", "last_run"]

log = logging.getLogger("sparseflow.nodes")

RUN_KEY = "sparseflow_run"  # the run's state in the run's own copy of transformer_options
_last: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ModelPatcher -> RunReport of its last run


@dataclass(frozen=True)
class NotedCall:
    """One self-attention call as noted during the run (made into a `CallRecord` by `flush()`)."""

    step: int
    progress: float
    layer: int
    window: int
    topk: int
    dense_step: bool
    plan_id: int  # -1: no plan (dense)
    batch: int
    length: int
    backend: str


@dataclass(frozen=True)
class RunReport:
    """A finished run: its telemetry and the summary line it logged."""

    telemetry: RunTelemetry
    summary: str


def last_run(model: object) -> RunReport | None:
    """The report of the last sampling run of this ModelPatcher, or None before its first."""
    return _last.get(model)


class RunState:
    """Everything one sampling run of one patched model changes (never shared between runs or clones)."""

    def __init__(self, config: PatchConfig, timeline: Timeline, owner: object = None) -> None:
        self.config = config
        self.timeline = timeline
        self.owner = owner  # the ModelPatcher being sampled (for last_run)
        self.plans = PlanCache(config)
        self.telemetry = RunTelemetry(precision=config.precision)
        self._noted: list[NotedCall] = []
        # per model call, from context(): stands for the calls when none was noted eagerly (under torch.compile the
        # attention path writes nothing, so no guard sees counters)
        self._planned: list[tuple[CallContext, int]] = []
        self._forwards = None  # the behaviour check's answer, asked once per run

    # -- per model call (DIFFUSION_MODEL wrapper); host work torch.compile (TorchCompileModel) must not trace
    @torch.compiler.disable
    def context(self, dm: object, x: torch.Tensor, time_dim_concat: torch.Tensor | None, clip_fea: object,
                to: dict, kwargs: dict) -> CallContext:
        cfg = self.config
        geometry = geometry_for(dm, x, time_dim_concat, kwargs)
        step, progress = self.step_of(to)
        params = cfg.schedule.at(progress)
        forwards = None
        if cfg.fuse_qk_norm_rope or cfg.fuse_block_norms:
            # imports and the behaviour check here, outside the trace: a first import inside it changes the import
            # cache between the first and second model call, and torch.compile recompiles the whole model
            from ..sparseflow import prologue, residual_norm
            from .forwards.probe import match_forwards

            prologue.triton_reason()
            residual_norm.triton_reason()
            if self._forwards is None:
                self._forwards = match_forwards(dm, x.device, x.dtype)
                self.telemetry.forward = self._forwards.describe()
            forwards = self._forwards
        img_len = forwards.block.context_img_len(dm, clip_fea) if forwards is not None and forwards.block else None
        calls = tuple(self.plans.layer_call(geometry, layer, params, x) for layer in range(cfg.layers))
        ctx = CallContext(geometry, step, progress, params, cfg.window_at(params), calls, forwards, dm, img_len)
        self._planned.append((ctx, int(x.shape[0])))
        return ctx

    def step_of(self, to: dict) -> tuple[int, float]:
        """(step index in this sampler call, progress) from transformer_options["sigmas"] and ["sample_sigmas"]."""
        sig = sigma_lists(to)
        if sig is None:
            log_once(("no sigmas",), "SparseFlow: the sampler passed no sigmas/sample_sigmas; using step 0 "
                     "(progress 0) for every model call", level=logging.WARNING)
            return 0, 0.0
        sigma, sample = sig
        step = step_index(sigma, sample)
        if self.config.schedule.progress_mode == "sigma" or self.timeline.by_sigma:
            # the fraction of the model's whole sigma range: one scale for both Wan 2.2 14B experts
            return step, progress_from_sigmas(sigma, [self.config.sigma_max, 0.0], "sigma")
        return step, progress_from_sigmas(sigma, self.timeline.sigmas or sample, "steps")

    # -- per attention call (override)
    def decide(self, q: object, k: object, v: object, heads: object, mask: object, skip_reshape: bool,
               skip_output_reshape: bool, to: dict) -> Pass | Route:
        return decide(self.plans, q, k, v, heads, mask, skip_reshape, skip_output_reshape, to)

    def record(self, route: Route, backend: str, batch: int, length: int) -> None:
        """Note one patched call (eager runs only: under torch.compile the run's records come from the per-call
        plans of `context()`, since a write here would put the counters under the graph's guards)."""
        if torch.compiler.is_compiling():
            return
        ctx = route.ctx
        self._noted.append(NotedCall(ctx.step, ctx.progress, route.layer, ctx.window, ctx.params.topk,
                                     ctx.params.dense, route.call.plan_id, batch, length, backend))

    def passthrough(self, reason: str, detail: str, q: object, k: object, level: int = logging.INFO) -> None:
        """Count a call handed to the attention below and log the reason once (eager only: under torch.compile a
        counter write would put the count under the graph's guards and a log call would break the graph)."""
        if torch.compiler.is_compiling():
            return
        self.telemetry.note_passthrough(reason)
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in (q, k)]
        log_once(("passthrough", reason), "SparseFlow: %s%s (q %s, k %s) goes to ComfyUI's attention unchanged",
                 reason, f" ({detail})" if detail else "", shapes[0], shapes[1], level=level)

    # -- end of the run
    def flush(self) -> RunTelemetry:
        """Turn the calls noted so far into telemetry records; returns the telemetry.

        Calls noted eagerly by `record()` win; with none (a torch.compile'd run), each model call's plans from
        `context()` stand for its self-attention calls.
        """
        cfg = self.config
        noted, planned = self._noted, self._planned
        self._noted, self._planned = [], []
        if not noted:
            noted = [NotedCall(ctx.step, ctx.progress, layer, ctx.window, ctx.params.topk, ctx.params.dense,
                               call.plan_id, batch, ctx.geometry.length, call.backend)
                     for ctx, batch in planned for layer, call in enumerate(ctx.layers) if call.kind != "pass"]
        for c in noted:
            n = num_blocks(c.length, cfg.block)
            dense_pairs = n * n * cfg.heads * c.batch
            if c.plan_id < 0:
                routes = self.plans.layers[c.layer].routes if not c.dense_step else (DENSE,) * cfg.heads
                pairs = cost = dense_pairs
            else:
                plan = self.plans.plans[c.plan_id]
                routes = plan.routes
                exact, work = pair_counts(plan)
                # top-k adds up to topk key blocks per query block on sparse heads (estimate: the full topk)
                extra = [n * t if r == SPARSE else 0 for r, t in zip(plan.routes, plan.topk)]
                pairs = sum(min(n * n, p + e) for p, e in zip(exact, extra)) * c.batch
                cost = sum(w + e for w, e in zip(work, extra)) * c.batch
            self.telemetry.record(CallRecord(c.step, c.progress, c.layer, c.window, c.topk, c.dense_step,
                                             tuple(routes), pairs, dense_pairs, c.backend, cost))
        return self.telemetry

    def finish(self) -> RunReport:
        """End the run: summary to the log and the prompt's UI, kept for `last_run(model)`."""
        tel = self.flush()
        report = RunReport(tel, tel.summary())
        if self.owner is not None:
            _last[self.owner] = report
        if tel.calls or tel.passthrough:
            log.info("%s", report.summary)
            send_report(self.config.node_id, report.summary, tel)
        return report
