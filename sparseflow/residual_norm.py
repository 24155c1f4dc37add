"""Residual add + LayerNorm + modulation of a Wan block, fused: the passes between the block's modules.

Between its self-attention, cross-attention and FFN, ComfyUI's `WanAttentionBlock.forward` runs a LayerNorm
and a modulation before each module and a (gated) residual add after it, each a separate pass over the
(B, L, C) residual stream; with a mix of layouts (the stream starts channel-major after the patch embedding,
the modules return token-major rows) these run far below memory speed: about 29 % of a SparseFlow Wan 1.3B
step on an H100 (docs/performance.md). `add_norm` does an add and the next norm in one pass
(kernels/residual_norm.py).

Semantics (the reference below is ComfyUI's op sequence):
    s = x + y * gate           (`torch.addcmul`; x + y without a gate; x itself without y)
    n = layer_norm(s, weight, bias, eps)
    n = shift + n * (1 + scale)                 (`torch.addcmul(shift, n, 1 + scale)`, with a modulation)
in the stream's dtype; gate, shift and scale are (B or 1, L or 1, C) rows (one per batch or one per token).
x may have any strides (Wan's stream is channel-major in the first block); s and n are new contiguous tensors.
The Triton kernel rounds where these ops round, so the two differ only in the order of fp32 sums
(tests/test_residual_norm.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .inputs import triton_input_reason

__all__ = ["ADD_NORM_BACKENDS", "MAX_ELEMENTS", "add_into", "add_norm", "add_norm_reason", "add_norm_reference",
           "output_reason", "rows_reason", "run_add_norm", "stream_reason", "triton_reason"]

ADD_NORM_BACKENDS = ("triton", "reference")
MAX_ELEMENTS = 2**31  # the kernel's row offsets are 32-bit: b * L * C must stay below this
_triton_import: dict = {}


def add_norm_reference(x: torch.Tensor, y: torch.Tensor | None = None, gate: torch.Tensor | None = None, *,
                       norm: bool = True, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                       shift: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                       eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(s, n) computed with ComfyUI's own ops (see the module docstring); n is None without `norm`."""
    s = x if y is None else (x + y if gate is None else torch.addcmul(x, y, gate))
    if not norm:
        return s, None
    n = F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
    if shift is not None:
        n = torch.addcmul(shift, n, 1 + scale)
    return s, n


def rows_reason(name: str, t: object, x: torch.Tensor) -> str | None:
    """None when `t` is a gate / shift / scale the kernel takes for the (B, L, C) stream x, else why not."""
    b, length, c = x.shape
    if not isinstance(t, torch.Tensor):
        return f"{name} is not a tensor"
    if t.dim() != 3 or t.shape[2] != c or t.shape[0] not in (1, b) or t.shape[1] not in (1, length):
        return f"{name} shape {tuple(t.shape)} is not (1 or B, 1 or L, C) for the stream's {tuple(x.shape)}"
    if t.stride(2) != 1:
        return f"{name} last dim is not contiguous"
    if t.dtype != x.dtype or t.device != x.device:
        return f"{name} is {t.dtype} on {t.device}, the stream {x.dtype} on {x.device}"
    return None


def stream_reason(x: object) -> str | None:
    """None when `x` is a residual stream the kernel takes (any strides), else why not."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        return "the residual stream is not (B, L, C)"
    if x.numel() >= MAX_ELEMENTS:
        return f"the residual stream has {x.numel()} elements, over the kernel's 32-bit offsets ({MAX_ELEMENTS})"
    return None


def output_reason(x: torch.Tensor, y: object) -> str | None:
    """None when `y` is a module output the kernel adds to the (B, L, C) stream x, else why not."""
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return f"the module output {tuple(getattr(y, 'shape', ()))} is not the stream's {tuple(x.shape)}"
    if y.stride(-1) != 1 or y.dtype != x.dtype or y.device != x.device:
        return "the module output is not a contiguous-row tensor of the stream's dtype and device"
    return None


def add_norm_reason(x: object, y: object = None, gate: object = None, *, norm: bool = True,
                    weight: object = None, bias: object = None, shift: object = None,
                    scale: object = None) -> str | None:
    """None when the fused add + norm takes these inputs, else why not (the caller keeps ComfyUI's own ops)."""
    if why := stream_reason(x):
        return why
    if y is not None:
        if why := output_reason(x, y):
            return why
    elif gate is not None:
        return "a gate without a module output"
    if gate is not None and (why := rows_reason("gate", gate, x)):
        return why
    if (shift is None) != (scale is None):
        return "shift and scale come together"
    if shift is not None:
        if not norm:
            return "a modulation without a norm"
        for name, t in (("shift", shift), ("scale", scale)):
            if why := rows_reason(name, t, x):
                return why
    if (weight is None) != (bias is None):
        return "a LayerNorm weight without a bias (or the reverse)"
    if weight is not None:
        if not norm:
            return "a LayerNorm weight without a norm"
        c = x.shape[-1]
        for name, t in (("norm weight", weight), ("norm bias", bias)):
            if not isinstance(t, torch.Tensor) or t.shape != (c,) or t.stride() != (1,) or t.device != x.device:
                return f"{name} is not a contiguous ({c},) tensor on the stream's device"
    return None


def _triton_fn():
    if "fn" not in _triton_import:
        try:
            from ..kernels.residual_norm import add_norm as fn
            _triton_import["fn"], _triton_import["error"] = fn, None
        except Exception as e:  # noqa: BLE001 - recorded as the reason
            _triton_import["fn"], _triton_import["error"] = None, f"{type(e).__name__}: {e}"
    return _triton_import["fn"]


def triton_reason(x: torch.Tensor | None = None) -> str | None:
    """None when the Triton kernel can run (for x, when given), else why not. The first call imports the kernel
    (on any machine), so a caller can do that once outside torch.compile's trace."""
    if _triton_fn() is None:
        return f"cannot import kernels.residual_norm ({_triton_import['error']})"
    return triton_input_reason(x)


def add_norm(x: torch.Tensor, y: torch.Tensor | None = None, gate: torch.Tensor | None = None, *, norm: bool = True,
             weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, shift: torch.Tensor | None = None,
             scale: torch.Tensor | None = None, eps: float = 1e-6,
             backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(s, n) of the module docstring: s = x + y * gate, n = [modulated] LayerNorm(s) (None without `norm`).

    backend "triton" (one launch) or "reference" (ComfyUI's ops, any device and dtype). Raises ValueError
    naming the input when it is not one the fused op takes (`add_norm_reason`).
    """
    if backend not in ADD_NORM_BACKENDS:
        raise ValueError(f"sparseflow.residual_norm: backend must be one of {ADD_NORM_BACKENDS}; got {backend!r}")
    why = add_norm_reason(x, y, gate, norm=norm, weight=weight, bias=bias, shift=shift, scale=scale)
    if why is not None:
        raise ValueError(f"sparseflow.residual_norm: {why}")
    if backend == "triton" and (why := triton_reason(x)) is not None:
        raise ValueError(f"sparseflow.residual_norm: backend 'triton' cannot run: {why}")
    return run_add_norm(x, y, gate, norm, weight, bias, shift, scale, eps, backend)


def add_into(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None,
             backend: str) -> torch.Tensor:
    """out = x + y * gate (x + y without a gate); `out` may be x itself. (B, L, C) tensors of one dtype, `y` and
    `out` with unit last stride, `gate` (B or 1, L or 1, C); the caller checks them (`add_norm_reason`). "triton":
    the fused kernel's add, one read of x and y and one write of out (torch's addcmul takes a slower broadcast path for
    a gate row shared by the tokens); "reference": torch.addcmul / torch.add, ComfyUI's op for this add."""
    if backend == "triton":
        _triton_fn()(x, y, gate, False, None, None, None, None, 0.0, out=out)
    elif gate is None:
        torch.add(x, y, out=out)
    else:
        torch.addcmul(x, y, gate, out=out)
    return out


def run_add_norm(x, y, gate, norm, weight, bias, shift, scale, eps, backend):
    """`add_norm` without its checks, for a caller that has asked `add_norm_reason` and `triton_reason`."""
    if backend == "triton":
        return _triton_fn()(x, y, gate, bool(norm), weight, bias, shift, scale, float(eps))
    return add_norm_reference(x, y, gate, norm=norm, weight=weight, bias=bias, shift=shift, scale=scale, eps=eps)
