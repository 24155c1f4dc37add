"""Fused residual adds + LayerNorms of Wan blocks behind the SparseFlow patch: a per-model `block.forward` patch.

Between its modules, ComfyUI's `WanAttentionBlock.forward` runs LayerNorm + modulation before self-attention
and the FFN, LayerNorm before cross-attention and a (gated) residual add after each module: seven elementwise
passes over the residual stream, running well below memory speed (docs/performance.md, "block adds + norms").
With the patch option `fuse_block_norms`, each block's `forward` is replaced, through ComfyUI's own object
patches (`ModelPatcher.add_object_patch`, undone when the model is unpatched), by `fused_block_forward`
below: the same modules called the same way (so attention overrides, the fused prologue and LoRA-patched
Linear layers all still apply), with each add and the norm after it done by `sparseflow.residual_norm`'s
kernel in one pass (four launches per block instead of about ten kernels), and the FFN's first Linear + GELU as
one cuBLASLt GEMM with a GELU epilogue where that Linear is a plain fp16/bf16 one (`sparseflow.ffn`).

It replaces only a forward it knows: the source-token fingerprint of `type(block).forward` must be one in
`KNOWN_BLOCK_FORWARDS`; other ComfyUI versions and block kinds keep their own forward, said once in the log.
Per call, inputs the kernel does not take (CPU with the triton backend, fp32, LoRA functions on a norm)
run ComfyUI's own forward, and a module output the kernel does not take runs ComfyUI's ops for that one
add; both are counted in the run telemetry. Under torch.compile (TorchCompileModel) ComfyUI's own forward
runs, since inductor fuses these passes itself.
"""

from __future__ import annotations

import logging
import sys

import torch

from ..sparseflow import ffn, residual_norm
from .prologue import call_state, norm_params, unknown_forward_reason
from .state import SparseFlowState, log_once

__all__ = ["KNOWN_BLOCK_FORWARDS", "ffn_forward", "fused_block_patches", "make_fused_block_forward"]

log = logging.getLogger("sparseflow.nodes")

# source-token fingerprints (nodes.prologue.forward_fingerprint) of the WanAttentionBlock.forward bodies mirrored
KNOWN_BLOCK_FORWARDS = {
    "93fc5b715007c426": "ComfyUI 0.3.64 (a125cd84): modulation + e (chunk / unbind), norm1 -> self_attn, addcmul, "
                        "norm3 -> cross_attn, add, norm2 -> ffn, addcmul",
}
FUSED = "fused"


def _layer_norm(norm: torch.nn.Module, x: torch.Tensor) -> tuple[tuple | None, str | None]:
    """((weight, bias, eps), None) of a LayerNorm over x's last dim (weight/bias None when not affine), or
    (None, why the kernel cannot stand in for it)."""
    if not isinstance(norm, torch.nn.LayerNorm) or tuple(norm.normalized_shape) != (x.shape[-1],):
        return None, f"{type(norm).__name__} is not a LayerNorm over the model dim"
    params, why = norm_params(norm, x, "block norm weight")
    if why:
        return None, why
    w, b = params
    if w is None and b is None:
        return (None, None, float(norm.eps)), None
    if w is None or b is None:
        return None, "a block norm has a weight but no bias (or the reverse)"
    return (w.to(x.dtype).contiguous(), b.to(x.dtype).contiguous(), float(norm.eps)), None


def _backend(state: SparseFlowState, x: torch.Tensor) -> tuple[str | None, str | None]:
    if state.config.backend == "reference":
        return "reference", None
    why = residual_norm.triton_reason(x)
    return (None, f"fused block norms cannot run: {why}") if why else ("triton", None)


def make_fused_block_forward(block: torch.nn.Module):
    """A replacement for `block.forward` (a WanAttentionBlock of a known forward) with fused adds + norms."""
    original = type(block).forward.__get__(block)
    wan = sys.modules[type(block).__module__]

    def fused_block_forward(x, e, freqs, context, context_img_len=257, transformer_options={},  # noqa: B006
                            **kwargs):
        to = transformer_options
        if torch.compiler.is_compiling():  # inductor fuses ComfyUI's own passes; no host work inside the trace
            return original(x, e, freqs, context, context_img_len=context_img_len, transformer_options=to,
                            **kwargs)
        state, why = call_state(to, kwargs)
        backend = n1 = n2 = n3 = None
        if why is None:
            why = residual_norm.stream_reason(x)
        if why is None:
            backend, why = _backend(state, x)
        if why is None:
            n1, why = _layer_norm(block.norm1, x)
        if why is None:
            n2, why = _layer_norm(block.norm2, x)
        if why is None and not isinstance(block.norm3, torch.nn.Identity):
            n3, why = _layer_norm(block.norm3, x)
        if why is None and (n1[0] is not None or n2[0] is not None):
            why = "norm1 / norm2 have an affine weight (Wan's have none)"
        if why is None:
            mod = wan.comfy.model_management.cast_to(block.modulation, dtype=x.dtype, device=x.device)
            ee = (mod + e).chunk(6, dim=1) if e.ndim < 4 else (mod.unsqueeze(0) + e).unbind(2)
            ee = [wan.repeat_e(t, x) for t in ee]
            why = next((r for i, t in enumerate(ee) if (r := residual_norm.rows_reason(f"e[{i}]", t, x))), None)
        if why is not None:
            if isinstance(state, SparseFlowState):
                state.telemetry.note_block_norms(why)
            log_once(("block_norms", why), "SparseFlow: block adds + norms stay ComfyUI's own here: %s", why)
            return original(x, e, freqs, context, context_img_len=context_img_len, transformer_options=to,
                            **kwargs)

        fallbacks = []  # telemetry kinds of the parts that ran ComfyUI's ops in this call

        def add_norm(s, y, gate, norm, weight=None, bias=None, shift=None, scale=None, eps=1e-6):
            # the stream, rows and norm weights are checked above; only the module outputs are new here
            use = backend
            if use == "triton" and y is not None and (bad := residual_norm.output_reason(s, y)) is not None:
                fallbacks.append(f"one add: {bad}")  # ComfyUI's ops for this one add
                use = "reference"
            return residual_norm.run_add_norm(s, y, gate, norm, weight, bias, shift, scale, eps, use)

        # each module's input and output are dropped as soon as they are used, as ComfyUI's forward drops its
        # temporaries: the same tensors are alive at each point, so the peak memory is ComfyUI's
        _, h = add_norm(x, None, None, True, shift=ee[0], scale=ee[1], eps=n1[2])
        y = block.self_attn(h, freqs, transformer_options=to)
        del h
        if n3 is None:  # norm3 is Identity (cross_attn_norm off)
            x, _ = add_norm(x, y, ee[2], False)
            h = x
        else:
            x, h = add_norm(x, y, ee[2], True, n3[0], n3[1], eps=n3[2])
        del y
        y = block.cross_attn(h, context, context_img_len=context_img_len, transformer_options=to)
        del h
        x, h = add_norm(x, y, None, True, shift=ee[3], scale=ee[4], eps=n2[2])
        del y
        y = ffn_forward(block.ffn, h, backend, fallbacks)
        del h
        x, _ = add_norm(x, y, ee[5], False)
        for kind in fallbacks:
            state.telemetry.note_block_norms(kind)
            log_once(("block_norms", kind), "SparseFlow: part of a block ran ComfyUI's ops: %s", kind)
        state.telemetry.note_block_norms(FUSED)
        return x

    fused_block_forward._sparseflow = True
    return fused_block_forward


def ffn_forward(seq: torch.nn.Module, h: torch.Tensor, backend: str, fallbacks: list[str]) -> torch.Tensor:
    """Wan's FFN (Linear -> GELU(tanh) -> Linear) on h, the first two as one GEMM with a GELU epilogue where
    `sparseflow.ffn` allows it (triton backend); otherwise the module itself, with the reason added to
    `fallbacks`. Module level, so bench/e2e/timing.py can time it as the FFN."""
    why_not = None if isinstance(seq, torch.nn.Sequential) and len(seq) == 3 else "the FFN is not Linear, GELU, Linear"
    if why_not is None and backend == "triton":
        why_not = ffn.linear_gelu_reason(seq[0], seq[1], h)
        if why_not is None:
            return seq[2](ffn.linear_gelu(h, seq[0].weight, seq[0].bias))
    if why_not is not None:
        fallbacks.append(f"FFN GELU unfused: {why_not}")
    return seq(h)


def fused_block_patches(dm: torch.nn.Module) -> tuple[dict[str, object], str | None]:
    """Object patches {"diffusion_model.blocks.i.forward": fused forward} for every main block, or ({}, why not)
    when a block's forward is not one SparseFlow mirrors. VACE blocks keep their own forward (theirs adds the
    hint projections around the same body and calls it through the class, not the instance)."""
    blocks = getattr(dm, "blocks", None) or ()
    if not len(blocks):
        return {}, "the diffusion model has no blocks"
    patches: dict[str, object] = {}
    for i, block in enumerate(blocks):
        if why := unknown_forward_reason(type(block), KNOWN_BLOCK_FORWARDS, "fused block norms mirror"):
            return {}, why
        patches[f"diffusion_model.blocks.{i}.forward"] = make_fused_block_forward(block)
    return patches, None
