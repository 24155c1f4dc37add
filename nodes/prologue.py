"""The fused QK-norm + RoPE prologue behind the SparseFlow patch: a per-model `self_attn.forward` object patch.

ComfyUI's `WanSelfAttention.forward` normalises q and k (RMSNorm over all heads) and applies RoPE in fp32 in
several passes before calling attention (about 8 % of a Wan 1.3B step on an H100). With the patch option
`fuse_qk_norm_rope`, each block's `self_attn.forward` is replaced, through ComfyUI's own object patches
(`ModelPatcher.add_object_patch`, undone when the model is unpatched), by `fused_forward` below: the same
four projections and the same `optimized_attention` call of Wan's module (so every override, SparseFlow's
included, still applies), with q and k made by `sparseflow.prologue.norm_rope_qk` in one launch.

It replaces only a forward it knows: the source-token fingerprint of `type(module).forward` must be one in
`KNOWN_FORWARDS` (the code this replacement mirrors); any other ComfyUI version keeps its own forward, said
once in the log. Per call, inputs the prologue does not take (CPU with the triton backend, fp32, casting
weights with LoRA functions, another RoPE layout) run ComfyUI's own forward, counted in the run telemetry
and said once in the log.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import sys
import textwrap
import tokenize

import torch

from ..sparseflow import prologue
from .state import SPARSEFLOW_KEY, SparseFlowState, log_once

__all__ = ["KNOWN_FORWARDS", "forward_fingerprint", "fused_forward_patches", "make_fused_forward", "norm_params",
           "unknown_forward_reason"]

log = logging.getLogger("sparseflow.nodes")

# source-token fingerprints (forward_fingerprint) of the WanSelfAttention.forward bodies `fused_forward` mirrors
KNOWN_FORWARDS = {
    "58d6bc43a772d1fd": "ComfyUI 0.3.64 (a125cd84): q/k norm, apply_rope1, optimized_attention(q, k, v, heads, "
                        "transformer_options)",
}
FUSED = "fused"
_fingerprints: dict[type, str] = {}


def forward_fingerprint(cls: type) -> str:
    """16-hex fingerprint of `cls.forward`'s source tokens, or 'unreadable'.

    Comments, blank lines and indentation do not change it, and it does not depend on the Python version
    (an `ast.dump` does: 3.12 adds fields), so one value per ComfyUI forward holds everywhere.
    """
    if cls not in _fingerprints:
        try:
            src = textwrap.dedent(inspect.getsource(cls.forward))
            skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                    tokenize.ENCODING, tokenize.ENDMARKER}
            toks = [t.string for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type not in skip]
            _fingerprints[cls] = hashlib.sha256("\x1f".join(toks).encode()).hexdigest()[:16]
        except (OSError, TypeError, SyntaxError, tokenize.TokenError):
            _fingerprints[cls] = "unreadable"
    return _fingerprints[cls]


def unknown_forward_reason(cls: type, known: dict[str, str], what: str) -> str | None:
    """None when `cls.forward` is one of `known` (fingerprint -> description), else the log's reason, which
    names the class, its fingerprint and the known ones; `what` ends the sentence "is not one SparseFlow's ..."."""
    fp = forward_fingerprint(cls)
    if fp in known:
        return None
    return (f"{cls.__module__}.{cls.__qualname__}.forward of this ComfyUI (fingerprint {fp}) is not one SparseFlow's "
            f"{what} (known: {', '.join(known.values())})")


def call_state(transformer_options, kwargs: dict) -> tuple[SparseFlowState | None, str | None]:
    """A patched forward's call: (its SparseFlow state, None), or (state or None, why the call goes to ComfyUI's
    own forward instead) when it has arguments the fused forward does not take or no SparseFlow state."""
    to = transformer_options
    state = to.get(SPARSEFLOW_KEY) if isinstance(to, dict) else None
    if kwargs:
        return state, f"unexpected arguments {sorted(kwargs)}"
    if not isinstance(state, SparseFlowState):
        return state, "no SparseFlow state in transformer_options"
    return state, None


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


def _prologue_backend(state: SparseFlowState, x: torch.Tensor) -> tuple[str | None, str | None]:
    """(backend, None) for the prologue on this input, or (None, why ComfyUI's own path runs)."""
    if state.config.backend == "reference":
        return "reference", None
    reason = prologue.triton_reason(x)
    if reason is not None:
        return None, f"fused prologue cannot run: {reason}"
    return "triton", None


def make_fused_forward(module: torch.nn.Module):
    """A replacement for `module.forward` (a WanSelfAttention of a known forward) with the fused prologue."""
    original = type(module).forward.__get__(module)
    wan = sys.modules[type(module).__module__]

    def fused_forward(x, freqs, transformer_options={}, **kwargs):  # noqa: B006 - ComfyUI's signature
        to = transformer_options
        state, why = call_state(to, kwargs)
        if why is None:
            backend, why = _prologue_backend(state, x)
        if why is None:
            wq, why = _norm_weight(module.norm_q, x)
        if why is None:
            wk, why = _norm_weight(module.norm_k, x)
        if why is None:  # asked before projecting, so a fallback never computes q(x) and k(x) twice
            qk_shape = (x.shape[0], x.shape[1], module.dim)  # q(x), k(x): fresh contiguous (B, L, dim)
            why = (prologue.layout_reason(qk_shape, x.device, wq, freqs, module.head_dim)
                   or prologue.layout_reason(qk_shape, x.device, wk, freqs, module.head_dim))
        eager = not torch.compiler.is_compiling()  # no counter writes or log calls inside torch.compile's trace
        if why is not None:
            if eager and isinstance(state, SparseFlowState):
                state.telemetry.note_prologue(why)
            if eager:
                log_once(("prologue", why), "SparseFlow: QK-norm + RoPE stay ComfyUI's own here: %s", why)
            return original(x, freqs, transformer_options=transformer_options, **kwargs)
        q, k = module.q(x), module.k(x)
        q, k = prologue.run_norm_rope(q, k, wq.to(q.dtype), wk.to(q.dtype), freqs, _eps(module.norm_q, q),
                                      module.head_dim, backend)
        if eager:
            state.telemetry.note_prologue(FUSED)
        out = wan.optimized_attention(q, k, module.v(x), heads=module.num_heads, transformer_options=to)
        return module.o(out)

    fused_forward._sparseflow = True
    return fused_forward


def fused_forward_patches(dm: torch.nn.Module) -> tuple[dict[str, object], str | None]:
    """Object patches {"diffusion_model.<blocks|vace_blocks>.i.self_attn.forward": fused forward} for every
    block, or ({}, why not) when a block's self-attention forward is not one SparseFlow mirrors."""
    if not len(getattr(dm, "blocks", None) or ()):
        return {}, "the diffusion model has no blocks"
    patches: dict[str, object] = {}
    for group in ("blocks", "vace_blocks"):
        for i, block in enumerate(getattr(dm, group, None) or ()):
            attn = getattr(block, "self_attn", None)
            if attn is None:
                return {}, f"{group}[{i}] has no self_attn"
            if why := unknown_forward_reason(type(attn), KNOWN_FORWARDS, "fused prologue mirrors"):
                return {}, why
            patches[f"diffusion_model.{group}.{i}.self_attn.forward"] = make_fused_forward(attn)
    return patches, None
