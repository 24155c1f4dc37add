"""Per-model SparseFlow state: what a patch decided, each model call's context, and one run's telemetry.

`SparseFlowState` is the holder in `transformer_options["sparseflow"]` (EasyCache's holder pattern). Per model call,
`context()` (outside torch.compile's trace) derives the token geometry, the denoising step and every layer's plan;
per attention call, `decide()` picks the route from that context and `record()` notes the call (eager runs);
`finish()` ends a run with one summary. The hooks that call these live in nodes/hook.py.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import torch

from ..sparseflow.geometry import Geometry, token_grid
from ..sparseflow.masks import num_blocks, pair_counts
from ..sparseflow.plan import DENSE, SPARSE, AttentionPlan
from ..sparseflow.routing import RoutingMap
from ..sparseflow.schedule import Schedule, StepParams, progress_from_sigmas
from ..sparseflow.telemetry import CallRecord, RunTelemetry

__all__ = ["BLOCK_KEY", "COMFY_BACKEND", "CONTEXT_KEY", "HEAD_DIMS", "SPARSEFLOW_KEY", "CallContext", "PatchConfig",
           "SparseFlowState", "geometry_for", "log_once", "sigma_lists", "step_index"]

log = logging.getLogger("sparseflow.nodes")

SPARSEFLOW_KEY = "sparseflow"  # wrappers, callbacks and the state in transformer_options
CONTEXT_KEY = "sparseflow_call"  # per model call, written by the wrapper into the per-call dict
BLOCK_KEY = "sparseflow_block"  # per block, written by the block patch
HEAD_DIMS = (64, 128)
COMFY_BACKEND = "comfyui"  # telemetry name of ComfyUI's own attention (dense steps / all-dense layers)

_logged: set = set()


def log_once(key: object, msg: str, *args: object, level: int = logging.INFO) -> None:
    """Log `msg` the first time `key` is seen in this process (core BSA's log_once)."""
    if key in _logged:
        return
    _logged.add(key)
    log.log(level, msg, *args)


def geometry_for(dm: object, x: torch.Tensor, time_dim_concat: torch.Tensor | None, kwargs: dict) -> Geometry:
    """Self-attention token geometry of one WanModel call, from x before ComfyUI pads it (COMFY_NOTES §2.3).

    Grid = ceil((T + time_dim_concat frames) / pt), ceil(H / ph), ceil(W / pw); Fun-Control's `ref_conv`
    reference latent prepends (H_ref / ph) * (W_ref / pw) tokens. I2V concat channels do not change the grid.
    """
    patch = tuple(getattr(dm, "patch_size", (1, 2, 2)))
    extra = int(time_dim_concat.shape[2]) if isinstance(time_dim_concat, torch.Tensor) else 0
    t, h, w = token_grid(tuple(int(s) for s in x.shape[-3:]), patch, extra)
    prefix = 0
    ref = kwargs.get("reference_latent")
    if getattr(dm, "ref_conv", None) is not None and isinstance(ref, torch.Tensor):
        prefix = (int(ref.shape[-2]) // patch[1]) * (int(ref.shape[-1]) // patch[2])  # Conv2d, no padding
    return Geometry(t, h, w, prefix)


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
class PatchConfig:
    """Everything a patch decided at patch time (immutable, shared by clones)."""

    schedule: Schedule
    routing: RoutingMap
    layers: int
    heads: int
    head_dim: int
    family: str
    model_type: str
    anchors: tuple[int, ...] = (0,)
    linear_kind: str = "pooled"
    backend: str = "auto"  # "auto", "triton" or "reference" (sparseflow.ops)
    block: int = 128
    window: int = -1  # -1 = the schedule's window
    sigma_max: float = 1.0
    node_id: str | None = None
    fuse_qk_norm_rope: bool = True
    fuse_block_norms: bool = True


@dataclass(frozen=True)
class CallContext:
    """What the wrapper derived for one model call, before any layer runs (outside torch.compile's trace).

    `layers[i]`: ("dense", None, backend), ("sparse", plan code tensor, backend) or ("pass", None, reason) for
    block i; `plan_ids[i]`: the plan's index in the run's plan list, or -1 (read only in eager runs).
    """

    geometry: Geometry
    step: int
    progress: float
    params: StepParams
    layers: tuple = ()
    plan_ids: tuple = ()


@dataclass
class SparseFlowState:
    """Holder in `transformer_options["sparseflow"]`: the config plus one run's telemetry.

    `clone()` shares the config and starts empty (ComfyUI 0.3.64 deep-copies model_options on every
    `ModelPatcher.clone()`; `__deepcopy__` routes that here). `reset()` drops per-run state; `finish()` ends
    a run: one summary line in the log, one websocket event, the telemetry kept in `last`.
    """

    config: PatchConfig
    telemetry: RunTelemetry = field(default_factory=RunTelemetry)
    last: RunTelemetry | None = None
    last_summary: str = ""
    _plans: dict = field(default_factory=dict, repr=False)
    # per-layer (routes, window, topk) as Python tuples, read once from the map's tensors: the attention path
    # then reads no tensor values, so torch.compile traces it without a data-dependent graph break per layer
    _layers: tuple = field(default=(), repr=False)
    _raw: list = field(default_factory=list, repr=False)  # calls noted by record(), made records by flush()
    _planned: list = field(default_factory=list, repr=False)  # per model call, from context(): used when no
    # call was noted eagerly (under torch.compile the attention path writes nothing, so no guard sees counters)
    _plan_list: list = field(default_factory=list, repr=False)
    _codes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        rmap = self.config.routing
        self._layers = tuple((rmap.head_routes(i), rmap.head_window(i), rmap.head_topk(i))
                             for i in range(rmap.layers))

    def clone(self) -> SparseFlowState:
        return SparseFlowState(self.config)

    def __deepcopy__(self, memo: dict) -> SparseFlowState:
        return self.clone()

    def reset(self) -> None:
        self.telemetry = RunTelemetry()
        self._plans.clear()
        self._raw = []
        self._planned = []
        self._plan_list.clear()
        self._codes.clear()

    def finish(self) -> str:
        """End a sampling run: summary to the log and the UI, telemetry kept in `last`, then `reset()`."""
        tel = self.flush()
        text = tel.summary()
        self.last, self.last_summary = tel, text
        self.reset()
        if tel.calls or tel.passthrough:
            log.info("%s", text)
            _send_report(self.config.node_id, text, tel)
        return text

    # -- per model call (wrapper); host-side bookkeeping that torch.compile (TorchCompileModel) must not trace
    @torch.compiler.disable
    def context(self, dm: object, x: torch.Tensor, time_dim_concat: torch.Tensor | None, to: dict,
                kwargs: dict) -> CallContext:
        geometry = geometry_for(dm, x, time_dim_concat, kwargs)
        step, progress = self.step_of(to)
        params = self.config.schedule.at(progress)
        if self.config.fuse_qk_norm_rope:
            # import the prologue kernel here, outside the trace: a first import inside it changes the import
            # cache between the first and second model call, and torch.compile recompiles the whole model
            from ..sparseflow import prologue
            prologue.triton_reason()
        if self.config.fuse_block_norms:  # the same for the block kernel (eager runs only, but one import path)
            from ..sparseflow import residual_norm
            residual_norm.triton_reason()
        calls = [self.layer_call(geometry, layer, params, x) for layer in range(self.config.layers)]
        ctx = CallContext(geometry, step, progress, params, tuple(c[0] for c in calls), tuple(c[1] for c in calls))
        self._planned.append((ctx, int(x.shape[0])))
        return ctx

    def layer_call(self, geometry: Geometry, layer: int, params: StepParams, t: torch.Tensor) -> tuple:
        """((kind, plan code or None, backend or reason), plan index or -1) of one layer's self-attention."""
        if params.dense or all(r == DENSE for r in self._layers[layer][0]):
            return ("dense", None, COMFY_BACKEND), -1
        from ..sparseflow import ops

        plan, pid = self._plan(geometry, layer, params)
        try:
            backend = ops.backend_for(t, plan, self.config.backend)
        except ValueError as e:
            return ("pass", None, str(e)), -1
        if pid not in self._codes:
            self._codes[pid] = ops.encode_plan(plan)
        return ("sparse", self._codes[pid], backend), pid

    def step_of(self, to: dict) -> tuple[int, float]:
        """(step index, progress) from transformer_options["sigmas"] and ["sample_sigmas"]."""
        sig = sigma_lists(to)
        if sig is None:
            log_once(("no sigmas",), "SparseFlow: the sampler passed no sigmas/sample_sigmas; using step 0 "
                     "(progress 0) for every model call", level=logging.WARNING)
            return 0, 0.0
        sigma, sample_list = sig
        step = step_index(sigma, sample_list)
        if self.config.schedule.progress_mode == "sigma":
            # Fraction of the model's whole sigma range: the same scale for both Wan 2.2 14B experts,
            # each of which sees only its own slice of sample_sigmas.
            progress = progress_from_sigmas(sigma, [self.config.sigma_max, 0.0], "sigma")
        else:
            progress = progress_from_sigmas(sigma, sample_list, "steps")
        return step, progress

    # -- per attention call (override)
    def decide(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: object,
               skip_reshape: bool, skip_output_reshape: bool, to: dict) -> tuple:
        """("pass", reason, detail) or (kind "dense"/"sparse", ctx, layer, plan code or None, backend, plan index
        or None = the context's)."""
        if mask is not None:
            return ("pass", "masked attention", "")
        if skip_reshape or skip_output_reshape:
            return ("pass", "pre-shaped (B, H, L, D) attention", "")
        if not isinstance(q, torch.Tensor) or q.dim() != 3:
            return ("pass", "not (B, L, H*D) layout", "")
        if q.shape != k.shape or q.shape != v.shape:
            return ("pass", "cross-attention", "")
        if not isinstance(heads, int) or heads != self.config.heads or q.shape[2] % heads:
            return ("pass", "other head count", f"heads {heads}, model {self.config.heads}")
        if q.shape[2] // heads not in HEAD_DIMS:
            return ("pass", "head_dim", f"head_dim {q.shape[2] // heads} not in {HEAD_DIMS}")
        ctx = to.get(CONTEXT_KEY)
        if not isinstance(ctx, CallContext):
            return ("pass", "no geometry", "the diffusion-model wrapper did not run")
        geometry = ctx.geometry
        grid = to.get("grid_sizes")  # newest ComfyUI: the real grid after patch embedding
        if grid is not None and len(grid) == 3:
            geometry = Geometry(int(grid[0]), int(grid[1]), int(grid[2]), int(to.get("img_offset", 0) or 0))
        if q.shape[1] != geometry.length:
            return ("pass", "token count mismatch", f"{q.shape[1]} tokens, geometry {geometry.describe()}")
        layer = to.get(BLOCK_KEY, to.get("block_index"))
        if not isinstance(layer, int) or not 0 <= layer < self.config.layers:
            return ("pass", "no block index", f"block {layer!r}, model layers 0..{self.config.layers - 1}")
        if geometry == ctx.geometry and layer < len(ctx.layers):
            entry, pid = ctx.layers[layer], None  # made before the model call (no Python work here)
        else:
            entry, pid = self.layer_call(geometry, layer, ctx.params, q)
        kind, code, backend = entry
        if kind == "pass":
            return ("pass", "operator error", backend)
        return (kind, ctx, layer, code, backend, pid)

    def _plan(self, geometry: Geometry, layer: int, params: StepParams) -> tuple[AttentionPlan, int]:
        """(plan, its index in this run's plan list), cached per (geometry, layer, window, topk, compensation)."""
        cfg = self.config
        window = params.window if cfg.window < 0 else cfg.window
        key = (geometry, layer, window, params.topk, params.compensation)
        if key not in self._plans:
            routes, head_window, head_topk = self._layers[layer]
            win = tuple(window if w < 0 else w for w in head_window)
            topk = tuple(params.topk if t < 0 else t for t in head_topk)
            plan = AttentionPlan(geometry, routes, win, topk, anchors=cfg.anchors,
                                 compensation=params.compensation, linear_kind=cfg.linear_kind, block=cfg.block)
            self._plans[key] = (plan, len(self._plan_list))
            self._plan_list.append(plan)
        return self._plans[key]

    def record(self, ctx: CallContext, layer: int, backend: str, batch: int, length: int,
               plan_id: int | None = None) -> None:
        """Note one patched call (eager runs only: under torch.compile the run's records come from the
        per-call plans of `context()`, since a write here would put the counters under the graph's guards)."""
        if torch.compiler.is_compiling():
            return
        pid = ctx.plan_ids[layer] if plan_id is None else plan_id
        window = ctx.params.window if self.config.window < 0 else self.config.window
        self._raw.append((ctx.step, ctx.progress, layer, window, ctx.params.topk, ctx.params.dense, pid, batch,
                          length, backend))

    def flush(self) -> RunTelemetry:
        """Turn the calls noted since the last flush into telemetry records; returns the telemetry.

        Calls noted eagerly by `record()` win; with none (a torch.compile'd run), each model call's plans from
        `context()` stand for its self-attention calls.
        """
        cfg = self.config
        raw, planned = self._raw, self._planned
        self._raw, self._planned = [], []
        if not raw:
            for ctx, batch in planned:
                window = ctx.params.window if cfg.window < 0 else cfg.window
                for layer, (kind, _, backend) in enumerate(ctx.layers):
                    if kind != "pass":
                        raw.append((ctx.step, ctx.progress, layer, window, ctx.params.topk, ctx.params.dense,
                                    ctx.plan_ids[layer], batch, ctx.geometry.length, backend))
        for step, progress, layer, window, topk, dense, plan_id, batch, length, backend in raw:
            n = num_blocks(length, cfg.block)
            dense_pairs = n * n * cfg.heads * batch
            if plan_id < 0:
                routes = self._layers[layer][0] if not dense else (DENSE,) * cfg.heads
                pairs = dense_pairs
            else:
                plan = self._plan_list[plan_id]
                routes = plan.routes
                per_head, _ = pair_counts(plan)
                # top-k adds up to topk key blocks per query block on sparse heads (estimate: the full topk)
                per_head = [min(n * n, p + (n * t if r == SPARSE else 0))
                            for p, r, t in zip(per_head, plan.routes, plan.topk)]
                pairs = sum(per_head) * batch
            self.telemetry.record(CallRecord(step, progress, layer, window, topk, dense, tuple(routes), pairs,
                                             dense_pairs, backend))
        return self.telemetry

    def passthrough(self, reason: str, detail: str, q: object, k: object, level: int = logging.INFO) -> None:
        """Count a call handed to ComfyUI's attention and log the reason once (eager only: under torch.compile
        a counter write would put the count under the graph's guards and a log call would break the graph)."""
        if torch.compiler.is_compiling():
            return
        self.telemetry.note_passthrough(reason)
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in (q, k)]
        log_once(("passthrough", reason), "SparseFlow: %s%s (q %s, k %s) goes to ComfyUI's attention unchanged",
                 reason, f" ({detail})" if detail else "", shapes[0], shapes[1], level=level)


def _send_report(node_id: str | None, text: str, tel: RunTelemetry) -> None:
    """One `sparseflow.report` websocket event, when a ComfyUI server runs in this process."""
    srv = sys.modules.get("server")
    instance = getattr(getattr(srv, "PromptServer", None), "instance", None) if srv is not None else None
    if instance is None:
        return
    payload = {"node": node_id, "text": text, "density_per_step": list(tel.density_per_step().values()),
               "route_counts": tel.route_counts(), "backend": "+".join(tel.backends())}
    try:
        instance.send_sync("sparseflow.report", payload)
    except Exception as e:  # noqa: BLE001 - a UI message must never break sampling
        log_once(("send_sync", type(e).__name__), "SparseFlow: could not send the run report: %s", e,
                 level=logging.WARNING)
