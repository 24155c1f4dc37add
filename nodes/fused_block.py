"""Fused residual adds + LayerNorms of Wan blocks: the block body SparseFlow's `("dit", "double_block", i)` patch runs.

Between its modules, ComfyUI's `WanAttentionBlock.forward` runs LayerNorm + modulation before self-attention and the
FFN, LayerNorm before cross-attention and a (gated) residual add after each module: seven elementwise passes over the
residual stream (newest ComfyUI runs the two LayerNorm + modulation passes as comfy_kitchen's `adaln` on large CUDA
inputs, still one pass each, the adds separate). With the patch option `fuse_block_norms`, SparseFlow's block patch
(nodes/hook.py) runs the block body of the ComfyUI version the behaviour check matched (nodes/forwards/) with these
`BlockOps`: each add and the norm after it in one `sparseflow.residual_norm` pass (four launches per block), the
FFN's first Linear + GELU as one cuBLASLt GEMM with a GELU epilogue where that Linear is a plain fp16/bf16 one
(`sparseflow.ffn`), and the block's own modules called as ComfyUI calls them (attention overrides, the fused QK
prologue and LoRA-patched Linears all still apply). Per call, inputs the kernel does not take (CPU with the triton
backend, fp32, LoRA functions on a norm) run ComfyUI's own block, and a module output it does not take runs ComfyUI's
ops for that one add; both are counted in the run telemetry. Under torch.compile ComfyUI's own block runs, since
inductor fuses these passes itself.
"""

from __future__ import annotations

import sys

import torch

from ..sparseflow import ffn, residual_norm
from ..sparseflow.telemetry import FUSED, REFERENCE
from .prologue import hand_over, norm_params
from .report import log_once

__all__ = ["BlockOps", "block_ops", "ffn_forward", "modulation_rows", "run_block"]


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


class BlockOps:
    """The fused passes of one block call on `backend` ("triton" or "reference" = ComfyUI's ops); a part the kernel
    refuses runs ComfyUI's ops and its reason goes to `fallbacks`."""

    def __init__(self, backend: str, eps1: float, eps2: float, norm3: tuple | None, ffn_in_pieces: bool = True,
                 ffn_piece_hidden: float = ffn.PIECE_HIDDEN_PER_STREAM) -> None:
        self.backend, self.eps1, self.eps2, self.norm3 = backend, eps1, eps2, norm3
        self.ffn_in_pieces, self.ffn_piece_hidden = ffn_in_pieces, ffn_piece_hidden
        self.pieces = 0  # the FFN's token pieces in this block call (0: whole)
        self.fallbacks: list[str] = []

    def _add_norm(self, s, y, gate, norm, weight=None, bias=None, shift=None, scale=None, eps=1e-6):
        use = self.backend  # the stream, rows and norm weights were checked by run_block; the module outputs are new
        if use == "triton" and y is not None and (bad := residual_norm.output_reason(s, y)) is not None:
            self.fallbacks.append(f"one add: {bad}")
            use = "reference"
        return residual_norm.run_add_norm(s, y, gate, norm, weight, bias, shift, scale, eps, use)

    def norm1(self, x, shift, scale):
        """LayerNorm(x) * (1 + scale) + shift (norm1, before self-attention)."""
        return self._add_norm(x, None, None, True, shift=shift, scale=scale, eps=self.eps1)[1]

    def norm2(self, x, shift, scale):
        """LayerNorm(x) * (1 + scale) + shift (norm2, before the FFN)."""
        return self._add_norm(x, None, None, True, shift=shift, scale=scale, eps=self.eps2)[1]

    def add(self, x, y, gate=None):
        """x + y * gate (x + y without a gate)."""
        return self._add_norm(x, y, gate, False)[0]

    def add_norm2(self, x, y, shift, scale):
        """(x + y, norm2 of it, modulated)."""
        return self._add_norm(x, y, None, True, shift=shift, scale=scale, eps=self.eps2)

    def attentions(self, block, x, ee, freqs, context, context_img_len, to):
        """norm1 -> self_attn -> gated add + norm3 -> cross_attn: (the stream, cross-attention's output). Each
        module's input and output are dropped as soon as used, as ComfyUI's forward drops its temporaries."""
        # norm1's output goes to the self-attention with no reference kept here (hand_over): SparseFlow's fused
        # forward frees it after the v projection, before the attention runs
        y = block.self_attn(hand_over(block.self_attn, self.norm1(x, ee[0], ee[1])), freqs, transformer_options=to)
        if self.norm3 is None:  # norm3 is Identity (cross_attn_norm off)
            x = h = self.add(x, y, ee[2])
        else:
            x, h = self._add_norm(x, y, ee[2], True, self.norm3[0], self.norm3[1], eps=self.norm3[2])
        del y
        return x, block.cross_attn(h, context, context_img_len=context_img_len, transformer_options=to)

    def feed_forward(self, block, x, h, gate, own_stream: bool):
        """x + FFN(h) * gate. Where the FFN's hidden tensor is large (`sparseflow.ffn.token_chunks`: 1.25 GiB or
        more) the FFN runs piece by piece, each piece's result added into x in place when x is this block's own
        tensor (`own_stream`), else into a new tensor: the whole (B, L, ffn_dim) hidden tensor, 2.7 to 5.8 times
        the stream, never exists. The adds are the fused kernel's gated add (on "triton"; bit for bit ComfyUI's
        `torch.addcmul` in fp16 / bf16, tests/test_residual_norm.py) or `torch.addcmul` itself."""
        ffn_dim = getattr(block, "ffn_dim", None)
        takes = isinstance(ffn_dim, int) and h.dim() == 3 and h.is_contiguous() and x.shape == h.shape
        pieces = (ffn.token_chunks(*h.shape, ffn_dim, h.element_size(), hidden_per_stream=self.ffn_piece_hidden)
                  if self.ffn_in_pieces and takes else [])
        if not pieces:
            return self._ffn_whole(block, x, h, gate)
        out = None
        notes: list[str] = []
        for p in pieces:
            rows = slice(p.start, p.stop)
            y = ffn_forward(block.ffn, h[p.batch, rows], self.backend, notes)
            xs = x[p.batch, rows]
            if (bad := residual_norm.output_reason(xs, y)) is not None and out is None:
                # an FFN output of another dtype (or layout) than the stream: ComfyUI's add would promote the whole
                # stream, which a piece cannot; the FFN runs whole, its add as ComfyUI's (nothing written yet)
                self.fallbacks.append(f"FFN whole: {bad}")
                del y
                return self._ffn_whole(block, x, h, gate)
            if out is None:
                out = x if own_stream else torch.empty_like(x, memory_format=torch.contiguous_format)
            dst = out[p.batch, rows]
            g = None if gate is None else gate[p.batch if gate.shape[0] > 1 else 0,
                                               rows if gate.shape[1] > 1 else slice(None)]
            if bad is not None:  # a later piece unlike the first (no module does this): cast into the stream
                notes.append(f"FFN piece cast to the stream's dtype: {bad}")
                dst.copy_(xs + y if g is None else torch.addcmul(xs, y, g))
            else:  # (tokens, C) pieces as (1, tokens, C) streams; y's rows are contiguous (output_reason), the
                # kernel writes contiguous rows only (a channel-major stream keeps torch's add)
                use = self.backend if dst.stride(-1) == 1 else "reference"
                residual_norm.add_into(dst[None], xs[None], y[None], None if g is None else g[None], use)
            del y
        self.pieces = len(pieces)
        self.fallbacks.extend(dict.fromkeys(notes))  # a reason once per block call, as unchunked
        return out

    def _ffn_whole(self, block, x, h, gate):
        """x + FFN(h) * gate with the FFN in one piece, the add through `add` (the kernel or ComfyUI's op)."""
        y = ffn_forward(block.ffn, h, self.backend, self.fallbacks)
        del h
        return self.add(x, y, gate)


def ffn_forward(seq: torch.nn.Module, h: torch.Tensor, backend: str, fallbacks: list[str]) -> torch.Tensor:
    """Wan's FFN (Linear -> GELU(tanh) -> Linear) on h, the first two as one GEMM with a GELU epilogue where
    `sparseflow.ffn` allows it (triton backend); otherwise the module itself (newest ComfyUI's `WanFeedForward`
    with its `linear_input_act`), with the reason added to `fallbacks`. Module level, so bench/e2e/timing.py can
    time it as the FFN."""
    why_not = None if isinstance(seq, torch.nn.Sequential) and len(seq) == 3 else "the FFN is not Linear, GELU, Linear"
    if why_not is None and backend == "triton":
        why_not = ffn.linear_gelu_reason(seq[0], seq[1], h)
        if why_not is None:
            return seq[2](ffn.linear_gelu(h, seq[0].weight, seq[0].bias))
    if why_not is not None:
        fallbacks.append(f"FFN GELU unfused: {why_not}")
    return seq(h)


def modulation_rows(block: torch.nn.Module, x: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
    """The block's six modulation rows (shift, scale, gate for self-attention; the same for the FFN), as both
    supported ComfyUI forwards make them (`modulation + e`, chunked or unbound, `repeat_e` to the stream)."""
    wan = sys.modules[type(block).__module__]
    mod = wan.comfy.model_management.cast_to(block.modulation, dtype=x.dtype, device=x.device)
    ee = (mod + e).chunk(6, dim=1) if e.ndim < 4 else (mod.unsqueeze(0) + e).unbind(2)
    return [wan.repeat_e(t, x) for t in ee]


def block_ops(block: torch.nn.Module, x: torch.Tensor, e: torch.Tensor, backend: str,
              ffn_in_pieces: bool = True, ffn_piece_hidden: float = ffn.PIECE_HIDDEN_PER_STREAM
              ) -> tuple[BlockOps | None, list | None, str | None]:
    """(ops, modulation rows, None) for one block call on `backend`, or (None, None, why ComfyUI's block runs)."""
    why = residual_norm.stream_reason(x)
    n1 = n2 = n3 = None
    if why is None:
        n1, why = _layer_norm(block.norm1, x)
    if why is None:
        n2, why = _layer_norm(block.norm2, x)
    if why is None and not isinstance(block.norm3, torch.nn.Identity):
        n3, why = _layer_norm(block.norm3, x)
    if why is None and (n1[0] is not None or n2[0] is not None):
        why = "norm1 / norm2 have an affine weight (Wan's have none)"
    if why is not None:
        return None, None, why
    ee = modulation_rows(block, x, e)
    why = next((r for i, t in enumerate(ee) if (r := residual_norm.rows_reason(f"e[{i}]", t, x))), None)
    if why:
        return None, None, why
    return BlockOps(backend, n1[2], n2[2], n3, ffn_in_pieces, ffn_piece_hidden), ee, None


def run_block(version, block, args: dict, context_img_len, run, original) -> dict:
    """One call of SparseFlow's block patch: the matched version's body with fused passes (or ComfyUI's block,
    `original(args)`, where an input is one the kernel does not take), noted in the run's telemetry."""
    x, to = args["img"], args["transformer_options"]
    backend, why = "reference", None
    if run.config.backend != "reference":
        backend = "triton"
        if (reason := residual_norm.triton_reason(x)) is not None:
            why = f"fused block norms cannot run: {reason}"
    ops = ee = None
    if why is None:
        ops, ee, why = block_ops(block, x, args["vec"], backend, run.config.ffn_in_pieces,
                                 run.config.ffn_piece_hidden)
    tel = run.telemetry
    if why is not None:
        tel.note_block_norms(why)
        log_once(("block_norms", why), "SparseFlow: block adds + norms stay ComfyUI's own here: %s", why)
        return original(args)
    out = version.block_body(block, x, ee, args["pe"], args["txt"], context_img_len, to, ops)
    tel.note_block_norms(FUSED if backend == "triton" else REFERENCE)
    if ops.pieces:
        tel.note_ffn_pieces(ops.pieces)
    for kind in ops.fallbacks:
        tel.note_block_norms(kind)
        log_once(("block_norms", kind), "SparseFlow: part of a block ran ComfyUI's ops: %s", kind)
    return {"img": out}
