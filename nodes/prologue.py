"""The fused QK-norm + RoPE prologue behind the SparseFlow patch: a per-model `self_attn.forward` object patch.

ComfyUI's `WanSelfAttention.forward` normalises q and k (RMSNorm over all heads) and applies RoPE before calling
attention: several fp32 passes in 0.3.64 (about 8 % of a Wan 1.3B step on an H100); newest ComfyUI runs the RoPE as
comfy_kitchen's `apply_rope1` on CUDA, still two passes per tensor. With the patch option `fuse_qk_norm_rope`, each
block's `self_attn.forward` is replaced, through ComfyUI's own object patches (`ModelPatcher.add_object_patch`, undone
when the model is unpatched), by `fused_forward` below: q and k from `sparseflow.prologue.norm_rope_qk` in one launch,
then the rest of the forward (v, the attention call, any attn1_patch, o) as the ComfyUI version the behaviour check
matched does it (nodes/forwards/), so every attention override, SparseFlow's included, still applies.

Which ComfyUI forward runs is decided by what it does (nodes/forwards/probe.py), never by its source text; a forward
no supported version matches keeps ComfyUI's code, said once in the log and counted in the run summary. Per call,
inputs the prologue does not take (CPU with the triton backend, fp32, casting weights with LoRA functions, another
RoPE layout) run ComfyUI's own forward, counted in the run telemetry and said once in the log.
"""

from __future__ import annotations

import logging
import sys

import torch

from ..sparseflow import prologue
from ..sparseflow.telemetry import FUSED, REFERENCE
from .context import CONTEXT_KEY, PROBE_KEY, CallContext
from .report import log_once
from .run import RUN_KEY, RunState

__all__ = ["Handoff", "Projections", "call_reason", "fused_forward_patches", "hand_over", "make_fused_forward",
           "norm_params", "qk_maker"]

log = logging.getLogger("sparseflow.nodes")


def call_reason(to: object, kwargs: dict) -> tuple[RunState | None, CallContext | None, str | None]:
    """A patched forward's call: (its run state, its model call's context, None), or (run, ctx, why the call goes
    to ComfyUI's own forward) when it has arguments the fused forward does not take or is outside a sampling run."""
    run = to.get(RUN_KEY) if isinstance(to, dict) else None
    ctx = to.get(CONTEXT_KEY) if isinstance(to, dict) else None
    if kwargs:
        return run, ctx, f"unexpected arguments {sorted(kwargs)}"
    if not isinstance(run, RunState):
        return None, None, "no SparseFlow run state in transformer_options (not inside a sampling run)"
    if not isinstance(ctx, CallContext):
        return run, None, "no SparseFlow model-call context (the diffusion-model wrapper did not run)"
    return run, ctx, None


def norm_params(norm: torch.nn.Module, x: torch.Tensor, what: str) -> tuple[tuple | None, str | None]:
    """((weight, bias), None): a norm module's parameters on x's device (None where it has none), as ComfyUI's
    `cast_bias_weight` gives them when the module has no patch functions; or (None, why a fused kernel cannot
    use them)."""
    if getattr(norm, "weight_function", None) or getattr(norm, "bias_function", None):
        return None, f"{what} has patch functions (LoRA on the norm)"
    params = (getattr(norm, "weight", None), getattr(norm, "bias", None))
    elsewhere = [t.device for t in params if isinstance(t, torch.Tensor) and t.device != x.device]
    if elsewhere:
        if not getattr(norm, "comfy_cast_weights", False):
            return None, f"{what} on {elsewhere[0]}, input on {x.device}"
        params = tuple(t.to(device=x.device, non_blocking=True) if isinstance(t, torch.Tensor) else t
                       for t in params)
    return params, None


def _norm_weight(norm: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """The RMSNorm weight on x's device, or (None, why the prologue cannot use it)."""
    if not isinstance(getattr(norm, "weight", None), torch.Tensor):
        return None, "QK norm has no weight (qk_norm off)"
    params, why = norm_params(norm, x, "QK norm weight")
    return (None, why) if why else (params[0], None)


def _eps(norm: torch.nn.Module, x: torch.Tensor) -> float:
    eps = getattr(norm, "eps", None)
    return float(eps) if eps is not None else float(torch.finfo(x.dtype).eps)  # torch.nn.RMSNorm's default


def _prologue_backend(run: RunState, x: torch.Tensor) -> tuple[str | None, str | None]:
    """(backend, None) for the prologue on this input, or (None, why ComfyUI's own path runs)."""
    if run.config.backend == "reference":
        return "reference", None
    reason = prologue.triton_reason(x)
    if reason is not None:
        return None, f"fused prologue cannot run: {reason}"
    return "triton", None


def qk_weights(module: torch.nn.Module, x: torch.Tensor, freqs: object) -> tuple[tuple | None, str | None]:
    """((wq, wk), None): the QK norm weights the prologue takes for this call, or (None, why not)."""
    wq, why = _norm_weight(module.norm_q, x)
    if why is None:
        wk, why = _norm_weight(module.norm_k, x)
    if why is None:  # asked before projecting, so a fallback never computes q(x) and k(x) twice
        qk_shape = (x.shape[0], x.shape[1], module.dim)  # q(x), k(x): fresh contiguous (B, L, dim)
        why = (prologue.layout_reason(qk_shape, x.device, wq, freqs, module.head_dim)
               or prologue.layout_reason(qk_shape, x.device, wk, freqs, module.head_dim))
    return (None, why) if why else ((wq, wk), None)


class Handoff:
    """A tensor handed to a callee together with the only reference to it: the block body hands its norm1 output to
    SparseFlow's fused self-attention this way, so the memory is free once the last projection (v) has read it,
    before the attention runs (one (B, L, C) stream less at the self-attention's peak)."""

    __slots__ = ("_tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor

    def take(self) -> torch.Tensor:
        t, self._tensor = self._tensor, None
        return t


def hand_over(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | Handoff:
    """x wrapped in a `Handoff` when `module` (a Wan self-attention) runs SparseFlow's fused forward with no module
    hooks that would see its arguments; else x itself."""
    fused = getattr(getattr(module, "forward", None), "_sparseflow", False)
    hooks = torch.nn.modules.module
    if fused and not (module._forward_pre_hooks or module._forward_hooks or hooks._global_forward_pre_hooks
                      or hooks._global_forward_hooks):
        return Handoff(x)
    return x


class Projections:
    """q and k (by `make_qk(x)`) and v of one self-attention call, from its input x, which this object holds until
    `v()`, the last projection, has read it; a version's `attend` asks for them where ComfyUI computes them."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, make_qk) -> None:
        self.module, self._x, self._make_qk, self.shape = module, x, make_qk, x.shape

    def qk(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._make_qk(self._x)

    def v(self) -> torch.Tensor:
        x, self._x = self._x, None
        return self.module.v(x)


def qk_maker(module: torch.nn.Module, freqs: torch.Tensor, weights: tuple, backend: str):
    """A function x -> (q, k) of this self-attention call with the fused prologue, which overwrites the fresh
    projections in place (`sparseflow.prologue.inplace_reason`), so it needs no memory of its own."""
    def make(x):
        q, k = module.q(x), module.k(x)
        return prologue.run_norm_rope(q, k, weights[0].to(q.dtype), weights[1].to(q.dtype), freqs,
                                      _eps(module.norm_q, q), module.head_dim, backend,
                                      inplace=prologue.inplace_reason(q, k) is None)

    return make


def make_fused_forward(module: torch.nn.Module):
    """A replacement for `module.forward` (a Wan self-attention) with the fused prologue."""
    original = type(module).forward.__get__(module)
    wan = sys.modules[type(module).__module__]

    def fused_forward(x, freqs, transformer_options={}, **kwargs):  # noqa: B006 - ComfyUI's signature
        if isinstance(x, Handoff):  # from SparseFlow's block body: this frame now holds the only reference
            x = x.take()
        to = transformer_options
        if isinstance(to, dict) and to.get(PROBE_KEY):  # the behaviour check runs ComfyUI's own code
            return original(x, freqs, transformer_options=to, **kwargs)
        run, ctx, why = call_reason(to, kwargs)
        version = weights = backend = None
        if why is None:
            version = ctx.forwards.attn if ctx.forwards is not None else None
            if version is None:
                why = ctx.forwards.attn_reason if ctx.forwards is not None else "no behaviour check ran"
        if why is None:
            backend, why = _prologue_backend(run, x)
        if why is None:
            weights, why = qk_weights(module, x, freqs)
        eager = not torch.compiler.is_compiling()  # no counter writes or log calls inside torch.compile's trace
        if why is not None:
            if eager and run is not None:
                run.telemetry.note_prologue(why)
            if eager:
                log_once(("prologue", why), "SparseFlow: QK-norm + RoPE stay ComfyUI's own here: %s", why)
            return original(x, freqs, transformer_options=to, **kwargs)
        if eager:
            run.telemetry.note_prologue(FUSED if backend == "triton" else REFERENCE)
        proj = Projections(module, x, qk_maker(module, freqs, weights, backend))
        del x  # the projections hold the input now, and let it go after v
        return version.attend(wan, module, proj, to)

    fused_forward._sparseflow = True
    return fused_forward


def fused_forward_patches(dm: torch.nn.Module) -> tuple[dict[str, object], str | None]:
    """Object patches {"diffusion_model.<blocks|vace_blocks>.i.self_attn.forward": fused forward} for every block
    (which ComfyUI version's code they follow is decided per model call by the behaviour check), or ({}, why not)."""
    if not len(getattr(dm, "blocks", None) or ()):
        return {}, "the diffusion model has no blocks"
    patches: dict[str, object] = {}
    for group in ("blocks", "vace_blocks"):
        for i, block in enumerate(getattr(dm, group, None) or ()):
            attn = getattr(block, "self_attn", None)
            if attn is None:
                return {}, f"{group}[{i}] has no self_attn"
            patches[f"diffusion_model.{group}.{i}.self_attn.forward"] = make_fused_forward(attn)
    return patches, None
