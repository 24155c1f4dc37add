"""A Wan FFN's first Linear + tanh-GELU as one GEMM with a GELU epilogue (cuBLASLt), on CUDA.

ComfyUI's Wan FFN is `Linear -> GELU(approximate='tanh') -> Linear`; the GELU is a separate pass over the
(B, L, ffn_dim) hidden tensor (2 x 1.2 GB per layer on Wan 1.3B, 2 x 4.2 GB on 14B). `torch._addmm_activation(
bias, x, W^T, use_gelu=True)` asks cuBLASLt for the GEMM with its GELU (tanh approximation) + bias epilogue, so the
hidden tensor is written once, already activated. On CUDA it is the same function as ComfyUI's up to rounding: the
epilogue applies GELU to the fp32 accumulator and rounds once, where ComfyUI rounds the Linear's output first.
(On the CPU, `_addmm_activation` applies the exact erf GELU, so it is used on CUDA only.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "CHUNK_MIN_BYTES", "PIECE_HIDDEN_PER_STREAM", "TokenChunk", "linear_gelu", "linear_gelu_reason", "token_chunks",
]

# An FFN whose whole hidden tensor is smaller runs in one piece: the pieces cost about 1 % of a Wan 1.3B 480p step on
# an H200 (6 pieces of 10920 tokens for a 1.09 GiB hidden tensor: 0.490 against 0.484 s/step in one run,
# bench/e2e/results/e2e_wan21_1.3b_newest_4b8876c.json), where that model's peak is already 16 % under ComfyUI's.
# Wan 2.2 5B 720p (1.46 GiB) and 14B 720p (3.9 GiB) run in pieces at no measured cost.
CHUNK_MIN_BYTES = 5 * 2**28  # 1.25 GiB
# How large one piece's hidden tensor may be, in streams (B, L, dim) of the block. 1.5: Wan 2.2 5B 720p runs 4 pieces
# of 13640 tokens (1.0 gave 6 of 9094: 1 % slower, its GEMMs' last waves part-empty; H200, 1.99x against 1.97x the
# default in one run, e2e_wan22_5b_newest_f3db494.json), 14B 720p 2 pieces (one per CFG batch element). The FFN
# phase then holds at most the stream, norm2's output, 1.5 streams of hidden tensor and its output piece, under the
# 5 streams the self-attention holds (the stream, q, k, v, its output).
PIECE_HIDDEN_PER_STREAM = 1.5


@dataclass(frozen=True)
class TokenChunk:
    """Tokens start..stop of batch element `batch`: one piece of an FFN run piece by piece."""

    batch: int
    start: int
    stop: int


def token_chunks(batch: int, length: int, dim: int, ffn_dim: int, itemsize: int,
                 min_bytes: int | None = None,
                 hidden_per_stream: float = PIECE_HIDDEN_PER_STREAM) -> list[TokenChunk]:
    """The pieces in which to run a Wan FFN (Linear dim -> ffn_dim, GELU, Linear back) over a (batch, length, dim)
    stream so that no piece's (rows, ffn_dim) hidden tensor is larger than `hidden_per_stream` times the stream; []
    for one piece (a hidden tensor under `min_bytes`, default CHUNK_MIN_BYTES). Pieces are equal token ranges within
    one batch element, so each is a contiguous row block of a contiguous stream and its GEMMs keep thousands of rows
    (at the default, with CFG: Wan 14B 720p 2 x 75600, 5B 720p 4 x 13640; 1.3B 480p's 1.09 GiB runs whole).

    Why: the FFN's hidden tensor is ffn_dim / dim = 2.7 (14B) to 5.8 (1.3B) times the stream, the largest thing a
    Wan block holds; whole, it sets the model's peak memory."""
    rows = batch * length
    if rows == 0 or rows * ffn_dim * itemsize < (CHUNK_MIN_BYTES if min_bytes is None else min_bytes):
        return []
    if not hidden_per_stream > 0:
        raise ValueError(f"token_chunks: hidden_per_stream must be > 0, got {hidden_per_stream!r}")
    pieces = max(1, math.ceil(ffn_dim / (dim * hidden_per_stream)))
    per_batch = math.ceil(length / math.ceil(rows / pieces))
    step = math.ceil(length / per_batch)
    return [TokenChunk(b, t, min(t + step, length)) for b in range(batch) for t in range(0, length, step)]


def linear_gelu_reason(linear: torch.nn.Module, act: torch.nn.Module, x: torch.Tensor) -> str | None:
    """None when `act(linear(x))` may run as `linear_gelu(x, linear.weight, linear.bias)`, else why not."""
    if not isinstance(act, torch.nn.GELU) or act.approximate != "tanh":
        return f"the FFN activation is {act!r}, not GELU(approximate='tanh')"
    if not isinstance(linear, torch.nn.Linear):
        return f"the FFN's first layer is {type(linear).__name__}, not a Linear"
    if getattr(linear, "comfy_cast_weights", False) or getattr(linear, "weight_function", None) \
            or getattr(linear, "bias_function", None):
        return "the FFN's first Linear casts its weights or has patch functions (LoRA / offloading)"
    w, b = linear.weight, linear.bias
    if not isinstance(w, torch.Tensor) or type(w) not in (torch.Tensor, torch.nn.Parameter):
        return f"the FFN weight is a {type(w).__name__} (quantised or wrapped)"
    if b is None:
        return "the FFN's first Linear has no bias"
    if x.device.type != "cuda":
        return f"input on {x.device} (the GELU epilogue is cuBLASLt's)"
    if not (w.dtype == b.dtype == x.dtype) or x.dtype not in (torch.float16, torch.bfloat16):
        return f"dtypes x {x.dtype}, weight {w.dtype}, bias {b.dtype} (the epilogue takes one of float16/bfloat16)"
    if w.device != x.device or b.device != x.device:
        return "the FFN weight is on another device"
    if not x.is_contiguous():
        return "the FFN input is not contiguous"
    return None


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight^T + bias) for a contiguous (..., K) x, as one GEMM; callers ask `linear_gelu_reason`."""
    k = x.shape[-1]
    out = torch._addmm_activation(bias, x.reshape(-1, k), weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])
