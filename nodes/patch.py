"""Patching a Wan MODEL with SparseFlow: model detection, backend check, `apply_sparseflow`, the Patch node.

After core `nodes_sparse_attention.py` (clone, chained override, ON_PREPARE_STATE reinstall, ON_CLEANUP reset)
and `nodes_easycache.py` (holder + DIFFUSION_MODEL wrapper). User errors raise here, at patch time, naming
what is supported; nothing is patched process-wide.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from comfy_api.latest import io

from ..sparseflow.plan import BLOCKS, FP8, FP16, INT8_QK, LINEAR_KINDS, PRECISIONS, PrecisionChoice
from ..sparseflow.routing import (
    DEFAULT_ROUTING,
    RoutingMap,
    parse_overrides,
    routing_preset,
    routing_to_json,
    summary,
    with_overrides,
)
from ..sparseflow.schedule import DEFAULT_SCHEDULE, Schedule, describe, scaled, schedule_preset
from .config import SPARSEFLOW_KEY, PatchConfig
from .hook import diffusion_model_wrapper, make_block_patch, on_prepare_state, outer_sample_wrapper
from .override import OVERRIDE_KEY, SparseFlowOverride, unwrap_previous
from .prologue import fused_forward_patches
from .types import RoutingType, ScheduleType, advanced, schema

__all__ = ["AUTO", "BACKEND_CHOICES", "PRECISION_CHOICES", "SUPPORTED", "SparseFlowPatch", "WanInfo",
           "apply_sparseflow", "check_backend", "check_precision", "resolve_precision", "wan_info"]

log = logging.getLogger("sparseflow.nodes")

SUPPORTED = "SparseFlow supports Wan 2.1/2.2 (t2v, i2v, vace, ti2v-5b)"
BACKEND_CHOICES = ("auto", "triton", "reference")
_WAN_TYPES = ("t2v", "i2v", "vace")


@dataclass(frozen=True)
class WanInfo:
    """What SparseFlow needs to know about a Wan diffusion model."""

    model_type: str
    family: str
    layers: int
    heads: int
    head_dim: int
    vace_layers: int
    config_name: str


def _model_type_name(model: object) -> str:
    base = getattr(model, "model", None)
    cfg = getattr(base, "model_config", None)
    unet = getattr(cfg, "unet_config", None) or {}
    image_model = unet.get("image_model")
    if image_model == "wan2.1":
        return str(unet.get("model_type", "unknown"))
    if image_model:
        return str(image_model)
    if cfg is not None:
        return type(cfg).__name__
    return type(base).__name__ if base is not None else type(model).__name__


def wan_info(model: object) -> WanInfo:
    """Detect a supported Wan model or raise ValueError naming what is supported and what was given."""
    base = getattr(model, "model", None)
    cfg = getattr(base, "model_config", None)
    unet = getattr(cfg, "unet_config", None) or {}
    name = _model_type_name(model)
    if unet.get("image_model") != "wan2.1" or unet.get("model_type") not in _WAN_TYPES:
        raise ValueError(f"{SUPPORTED}; got model type '{name}'")
    dm = model.get_model_object("diffusion_model")
    heads = int(dm.num_heads)
    out_dim = int(getattr(dm, "out_dim", 16))
    family = "wan2.2-5b" if out_dim == 48 else "wan2.1"  # 2.2 14B experts detect as 2.1 (COMFY_NOTES §5)
    return WanInfo(name, family, len(dm.blocks), heads, int(dm.dim) // heads,
                   len(getattr(dm, "vace_blocks", ()) or ()), type(cfg).__name__)


def check_piece_hidden(value: float | None) -> float:
    """The FFN pieces' hidden size in streams: `value`, or sparseflow.ffn's default for None; ValueError unless > 0."""
    from ..sparseflow import ffn

    if value is None:
        return ffn.PIECE_HIDDEN_PER_STREAM
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"SparseFlow: ffn_piece_hidden must be a number > 0 (streams); got {value!r}")
    return float(value)


def check_backend(backend: str) -> None:
    """Raise ValueError when `backend` is unknown or, explicitly chosen, cannot run here (with the reasons)."""
    from ..sparseflow import ops

    if backend not in BACKEND_CHOICES:
        raise ValueError(f"SparseFlow: backend must be one of {', '.join(BACKEND_CHOICES)}; got '{backend}'")
    if backend == "auto":
        return
    reasons = ops.available_backends()
    if reasons.get(backend) is not None:
        usable = [k for k, r in reasons.items() if r is None]
        raise ValueError(f"SparseFlow: backend '{backend}' cannot run here: {reasons[backend]}; "
                         f"usable backends: {', '.join(['auto', *usable])}")


AUTO = "auto"  # the Patch node's precision choice that picks per device (kernels/configs.py auto_precision)
PRECISION_CHOICES = (AUTO, *PRECISIONS)


def resolve_precision(precision: str, device=None) -> PrecisionChoice:
    """The concrete precision of a patch: `precision` itself, or for "auto" the one measured faster on the CUDA
    device the model samples on (`device`, else the current one): int8-qk on the a100, rtx50 and consumer launch
    tiers, fp16 elsewhere, below sm_80 and without CUDA or Triton."""
    import torch

    if precision != AUTO:
        return PrecisionChoice(precision, "chosen on the node")
    if not torch.cuda.is_available():
        return PrecisionChoice(FP16, "no CUDA device")
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cuda":
        return PrecisionChoice(FP16, f"the model samples on {dev}")
    try:
        from ..kernels import configs
    except ImportError as e:  # no Triton: the reference backend runs, at fp16
        return PrecisionChoice(FP16, f"the Triton kernels do not import ({e})")
    return configs.auto_precision(configs.device_limits(dev))


def check_precision(precision: str) -> None:
    """Raise ValueError when `precision` is unknown, or int8-qk / fp8 on a CUDA device without int8 / e4m3 tensor
    cores."""
    from ..sparseflow.fp8 import fp8_device_reason
    from ..sparseflow.quantize import int8_device_reason

    if precision not in PRECISIONS:
        raise ValueError(f"SparseFlow: precision must be one of {', '.join(PRECISION_CHOICES)}; got '{precision}'")
    if precision == INT8_QK and (why := int8_device_reason()):
        raise ValueError(f"SparseFlow: {why}")
    if precision == FP8 and (why := fp8_device_reason()):
        raise ValueError(f"SparseFlow: input 'precision': {why}")


def resolve_routing(routing: RoutingMap | None, overrides: str | Mapping[str, str], info: WanInfo) -> RoutingMap:
    """The map to apply: the given one (or the default preset, DEFAULT_ROUTING) plus overrides, shape-checked."""
    rmap = routing if routing is not None else routing_preset(DEFAULT_ROUTING, info.layers, info.heads, info.family)
    if (rmap.layers, rmap.heads) != (info.layers, info.heads):
        raise ValueError(f"SparseFlow: the routing map is {rmap.layers}x{rmap.heads} (layers x heads) but the "
                         f"model ({info.model_type}, {info.family}) has {info.layers}x{info.heads}; set layers="
                         f"{info.layers} and heads={info.heads} on SparseFlow Routing or load a map made for "
                         "this model")
    if rmap.family not in (info.family, "generic"):
        log.warning("SparseFlow: routing map family '%s' applied to a '%s' model", rmap.family, info.family)
    parsed = parse_overrides(overrides) if isinstance(overrides, str) else dict(overrides)
    return with_overrides(rmap, parsed)


def apply_sparseflow(model, *, schedule: Schedule | None = None, routing: RoutingMap | None = None,
                     sparsity: float = 0.5, window: int = -1, anchors: tuple[int, ...] = (0,),
                     linear_kind: str = "pooled", backend: str = "auto", block: int = 128,
                     overrides: str | Mapping[str, str] = "{}", node_id: str | None = None,
                     fuse_qk_norm_rope: bool = True, fuse_block_norms: bool = True, precision: str = AUTO,
                     ffn_in_pieces: bool = True, ffn_piece_hidden: float | None = None):
    """A clone of `model` whose Wan self-attention runs SparseFlow; `model` itself is left untouched.

    Installs, under the key "sparseflow": the frozen config in transformer_options, the attention override (chained
    onto any existing one), OUTER_SAMPLE (per-run state) and DIFFUSION_MODEL (per-call context) wrappers, per-block
    replace patches (block index, fused block body) and an ON_PREPARE_STATE callback. Patching a patched model
    replaces the earlier SparseFlow patch. With `fuse_qk_norm_rope`, each block's self_attn.forward is an object patch
    running the fused QK-norm + RoPE prologue (nodes/prologue.py); with `fuse_block_norms`, the block patches run
    each block's residual adds + LayerNorms fused (nodes/fused_block.py). Both follow the ComfyUI forward a behaviour
    check matches at the first model call (nodes/forwards/); where none matches, ComfyUI's own code runs and the log
    and the run summary say why. `precision` "int8-qk" runs Q·K of sparse, linear and mixed calls in int8, "fp8" also
    their exact keys' P·V in e4m3 (spec §8); "auto" takes the one measured faster on the sampling device
    (`resolve_precision`). `ffn_in_pieces` (API only; default on) lets the fused block body run a large FFN in
    token pieces, which lowers peak memory (nodes/fused_block.py feed_forward); `ffn_piece_hidden` (API only) is
    the largest piece's hidden tensor in streams (default sparseflow.ffn.PIECE_HIDDEN_PER_STREAM).
    """
    import comfy.patcher_extension as pe

    info = wan_info(model)
    check_backend(backend)
    choice = resolve_precision(precision, getattr(model, "load_device", None))
    check_precision(choice.precision)  # an unknown value passes resolve_precision as it is and is refused here
    if precision == AUTO:
        log.info("SparseFlow: precision auto -> %s (%s)", choice.precision, choice.reason)
    if linear_kind not in LINEAR_KINDS:
        raise ValueError(f"SparseFlow: linear_kind must be one of {', '.join(LINEAR_KINDS)}; got '{linear_kind}'")
    if block not in BLOCKS:
        raise ValueError(f"SparseFlow: block must be one of {BLOCKS}; got {block!r}")
    if not isinstance(window, int) or window < -1:
        raise ValueError(f"SparseFlow: window must be -1 (the schedule's) or >= 0 latent frames; got {window!r}")
    sched = scaled(schedule if schedule is not None else schedule_preset(DEFAULT_SCHEDULE), sparsity)
    rmap = resolve_routing(routing, overrides, info)
    sigma_max = float(getattr(model.get_model_object("model_sampling"), "sigma_max", 1.0))
    config = PatchConfig(sched, rmap, info.layers, info.heads, info.head_dim, info.family, info.model_type,
                         tuple(anchors), linear_kind, backend, block, window, sigma_max, node_id,
                         bool(fuse_qk_norm_rope), bool(fuse_block_norms), choice.precision, precision == AUTO,
                         bool(ffn_in_pieces), check_piece_hidden(ffn_piece_hidden))

    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    to[SPARSEFLOW_KEY] = config
    to[OVERRIDE_KEY] = SparseFlowOverride(unwrap_previous(to.get(OVERRIDE_KEY)))
    dit = to.get("patches_replace", {}).get("dit", {})
    for i in range(info.layers):
        m.set_model_patch_replace(make_block_patch(i, unwrap_previous(dit.get(("double_block", i)))),
                                  "dit", "double_block", i)
    for kind, fn in ((pe.WrappersMP.OUTER_SAMPLE, outer_sample_wrapper),
                     (pe.WrappersMP.DIFFUSION_MODEL, diffusion_model_wrapper)):
        m.remove_wrappers_with_key(kind, SPARSEFLOW_KEY)
        m.add_wrapper_with_key(kind, SPARSEFLOW_KEY, fn)
    for call_type in (pe.CallbacksMP.ON_PREPARE_STATE, pe.CallbacksMP.ON_CLEANUP):
        m.remove_callbacks_with_key(call_type, SPARSEFLOW_KEY)
    m.add_callback_with_key(pe.CallbacksMP.ON_PREPARE_STATE, SPARSEFLOW_KEY, on_prepare_state)
    _set_forward_patches(m, bool(fuse_qk_norm_rope))
    log.info("SparseFlow: patched %s (%s, %dx%d heads), schedule %s, %s, backend %s", info.config_name,
             info.family, info.layers, info.heads, sched.name, summary(rmap), backend)
    return m


def _set_forward_patches(m, fuse_qk: bool) -> None:
    """Install (or, patching again with the option off, remove) the fused QK-norm + RoPE object patches
    (self_attn.forward of every block)."""
    for key in [k for k, v in m.object_patches.items() if getattr(v, "_sparseflow", False)]:
        del m.object_patches[key]
    if not fuse_qk:
        return
    patches, why = fused_forward_patches(m.get_model_object("diffusion_model"))
    if why is not None:
        log.warning("SparseFlow: QK-norm + RoPE stay ComfyUI's own: %s", why)
    for key, fn in patches.items():
        m.add_object_patch(key, fn)


def patch_text(model) -> str:
    """The Patch node's UI line: model, schedule over 10 steps, routing."""
    cfg: PatchConfig = model.model_options["transformer_options"][SPARSEFLOW_KEY]
    steps = describe(cfg.schedule, 10)
    windows = " ".join("D" if s.dense else str(cfg.window_at(s)) for s in steps)
    return (f"{cfg.model_type} {cfg.family} {cfg.layers}x{cfg.heads}; window per step (10 steps, D = dense): "
            f"{windows}; {summary(cfg.routing)}; backend {cfg.backend}"
            + ("" if cfg.precision == FP16 and not cfg.precision_auto else
               f"; Q·K {cfg.precision}{' (auto)' if cfg.precision_auto else ''}"))


_TIP_SPARSITY = ("Overall sparsity. 0.5 keeps the schedule as it is; higher shrinks every temporal window "
                 "(1.0 = window 0 and no dense steps), lower widens it (0.0 = +4 latent frames). Heads whose "
                 "routing map fixes a window (the default preset's first and last layers: 2) keep it.")
_TIP_PRECISION = ("Q·K precision of SparseFlow's attention. 'auto': int8-qk on RTX 30 / 40 / 50 and A100-class "
                  "cards (faster there at the same measured quality), fp16 on H100 / H200 / B200 and where int8 "
                  "cannot run; the node's text says which. 'fp16': the model's fp16/bf16 throughout. "
                  "'int8-qk': "
                  "q and k quantized to int8 per block of tokens (k first smoothed by its mean, SageAttention's "
                  "idea) and Q·K on int8 tensor cores; P·V stays fp16/bf16. Needs an RTX 30 / A100 or newer "
                  "(sm_80+). 'fp8': int8-qk's Q·K plus P·V in FP8 e4m3 (V scaled per channel, SageAttention 2's "
                  "scheme); needs an RTX 40 / L40 / H100 / RTX 50 or newer (sm_89+). Measured error and speed: "
                  "docs/fidelity.md, docs/performance.md.")
_TIP_WINDOW = ("Temporal window in latent frames (1 latent frame = 4 video frames) each sparse head attends to "
               "on each side of its own frames. -1 takes the schedule's per-step window. Heads whose routing map "
               "fixes a window (the default preset's first and last layers: 2) keep it.")


class SparseFlowPatch(io.ComfyNode):
    """MODEL -> MODEL with SparseFlow self-attention."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="SparseFlowPatch",
            display_name="SparseFlow Patch",
            search_aliases=["sparse attention", "wan speed up", "block sparse"],
            description=("Speeds up Wan 2.1 / 2.2 video sampling: routes each self-attention head to block-sparse "
                         "temporal, linear or dense attention. Put it between the model loader and the sampler. "
                         "Cross-attention and everything else stays ComfyUI's own."),
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 / 2.2 model (t2v, i2v, vace, ti2v-5b; for Wan 2.2 14B "
                               "patch both the high-noise and the low-noise model)."),
                ScheduleType.Input("schedule", optional=True,
                                   tooltip="Per-step sparsity from SparseFlow Schedule; default: the 'balanced' "
                                           "preset (window 0 early, 1 mid, 2 late)."),
                RoutingType.Input("routing", optional=True,
                                  tooltip="Per-head routes from SparseFlow Routing or SparseFlow Calibrate; "
                                          f"default: the {DEFAULT_ROUTING} preset for this model's layers x "
                                          "heads."),
                io.Float.Input("sparsity", default=0.5, min=0.0, max=1.0, step=0.05, tooltip=_TIP_SPARSITY),
                io.Int.Input("window", default=-1, min=-1, max=64, step=1, tooltip=_TIP_WINDOW),
                io.Int.Input("anchor_frames", default=1, min=0, max=8, step=1,
                             tooltip="The first N latent frames every sparse head also attends to (1 = frame 0, "
                                     "which holds the layout; 0 = none)."),
                io.Combo.Input("linear_kind", options=list(LINEAR_KINDS), default="pooled",
                               tooltip="Linear heads: 'pooled' attends to block means of the own frame (close to "
                                       "softmax), 'feature' is elu+1 linear attention (cheaper, needs training "
                                       "to match)."),
                io.Combo.Input("backend", options=list(BACKEND_CHOICES), default="auto",
                               tooltip="'auto' runs the fused Triton kernel on CUDA with fp16/bf16 and the PyTorch "
                                       "reference otherwise; 'triton' fails at patch time when it cannot run; "
                                       "'reference' is slow and exact (for checks)."),
                io.Combo.Input("block_size", options=["128", "64"], default="128",
                               tooltip="Tokens per attention block (128 for video sizes of 480p and up; 64 for "
                                       "small videos).", **advanced(io.Combo.Input)),
                io.String.Input("routing_overrides", default="{}", multiline=False,
                                tooltip='Per-head routes set in the grid, JSON {"layer.head": "dense"|"sparse"|'
                                        '"linear"}, applied on top of the routing input.'),
                io.Boolean.Input("fuse_qk_norm_rope", default=True, optional=True,  # old API prompts lack it
                                 tooltip="Run Wan's QK RMSNorm + RoPE as one fused kernel before attention (same "
                                         "result up to one rounding, faster). Off: ComfyUI's own code.",
                                 **advanced(io.Boolean.Input)),
                io.Boolean.Input("fuse_block_norms", default=True, optional=True,  # old API prompts lack it
                                 tooltip="Run each Wan block's residual adds + LayerNorms + modulation as fused "
                                         "kernels, and the FFN's GELU inside its first matmul (ComfyUI's "
                                         "roundings up to one, faster, less memory). Off: ComfyUI's own code.",
                                 **advanced(io.Boolean.Input)),
                io.Combo.Input("precision", options=list(PRECISION_CHOICES), default=AUTO, optional=True,  # old prompts
                               tooltip=_TIP_PRECISION, **advanced(io.Combo.Input)),
            ],
            outputs=[io.Model.Output(tooltip="The patched model (a clone; the input model is unchanged).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, *, model: io.Model.Type, sparsity: float, window: int, anchor_frames: int, linear_kind: str,
                backend: str, block_size: str, routing_overrides: str, schedule: Schedule | None = None,
                routing: RoutingMap | None = None, fuse_qk_norm_rope: bool = True,
                fuse_block_norms: bool = True, precision: str = AUTO) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        patched = apply_sparseflow(model, schedule=schedule, routing=routing, sparsity=sparsity, window=window,
                                   anchors=tuple(range(anchor_frames)), linear_kind=linear_kind, backend=backend,
                                   block=int(block_size), overrides=routing_overrides,
                                   node_id=None if node_id is None else str(node_id),
                                   fuse_qk_norm_rope=fuse_qk_norm_rope, fuse_block_norms=fuse_block_norms,
                                   precision=precision)
        rmap = patched.model_options["transformer_options"][SPARSEFLOW_KEY].routing
        base = resolve_routing(routing, "{}", wan_info(model))
        return io.NodeOutput(patched, ui={"sparseflow_routing": [routing_to_json(rmap, base)],
                                          "text": [patch_text(patched)]})
