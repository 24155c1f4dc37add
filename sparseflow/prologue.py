"""The Wan self-attention prologue, fused: RMSNorm of q and k (over all heads), affine weight, RoPE.

ComfyUI's `WanSelfAttention.forward` runs `norm_q(q(x))`, `apply_rope1` (an fp32 upcast, two multiplies and
an add over a (…, D/2, 2, 2) table, then a cast back), and the same for k: about 8 % of a Wan 2.1 1.3B step
on an H100 (docs/performance.md). `norm_rope_qk` does both in one pass (kernels/norm_rope.py) behind the
`sparseflow::norm_rope_qk` custom op (a fake implementation, so torch.compile traces through it).

Semantics (the reference below): y = x * rsqrt(mean(x², over C) + eps) * w, computed in fp32, then for
every head and pair i: (y[2i], y[2i+1]) <- F[i] @ (y[2i], y[2i+1]) with F = freqs[b, l, 0, i] (2 x 2), cast to
x's dtype once at the end. ComfyUI rounds to x's dtype after the norm and again after the weight; this keeps
fp32 until the end, so the two differ by about one rounding of the input dtype (tests/test_prologue.py).
"""

from __future__ import annotations

import logging

import torch

from .inputs import triton_input_reason

__all__ = ["MAX_ELEMENTS", "PROLOGUE_BACKENDS", "inplace_reason", "layout_reason", "norm_rope_qk",
           "norm_rope_reference", "prologue_reason", "run_norm_rope", "triton_reason"]

log = logging.getLogger("sparseflow.prologue")

PROLOGUE_BACKENDS = ("triton", "reference")
MAX_ELEMENTS = 2**31  # the kernel's row offsets are 32-bit: B * L * C must stay below this
_triton_import: dict = {}


def norm_rope_reference(x: torch.Tensor, weight: torch.Tensor, freqs: torch.Tensor, eps: float,
                        head_dim: int) -> torch.Tensor:
    """RMSNorm over the last dim with `weight`, then RoPE with ComfyUI's (Bf, L, 1, D/2, 2, 2) table.

    Computed in fp32 (fp64 for fp64 input), rounded to x's dtype once.
    """
    b, length, c = x.shape
    wide = torch.promote_types(x.dtype, torch.float32)  # fp32 for half inputs, fp64 stays fp64
    xf = x.to(wide)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(wide)
    y = y.view(b, length, c // head_dim, head_dim // 2, 1, 2)
    f = freqs.to(wide)
    out = f[..., 0] * y[..., 0] + f[..., 1] * y[..., 1]
    return out.reshape(b, length, c).to(x.dtype)


def layout_reason(shape: tuple[int, int, int], device: torch.device, weight: object, freqs: object,
                  head_dim: int) -> str | None:
    """None when a contiguous (B, L, C) q or k of `shape` on `device`, this norm weight and this RoPE table are
    inputs the fused prologue takes, else why not. Needs no q/k tensor, so a caller can ask before projecting."""
    b, length, c = shape
    if head_dim % 2 or c % head_dim:
        return f"head_dim {head_dim} does not divide the model dim {c} into even heads"
    if b * length * c >= MAX_ELEMENTS:
        return f"q/k have {b * length * c} elements, over the kernel's 32-bit offsets ({MAX_ELEMENTS})"
    if not isinstance(weight, torch.Tensor) or weight.shape != (c,) or weight.device != device:
        return "norm weight missing, of another shape or on another device"
    if weight.stride() != (1,):
        return "norm weight is not contiguous"
    if not isinstance(freqs, torch.Tensor) or freqs.dtype != torch.float32:
        return "RoPE table is not a float32 tensor"
    if freqs.dim() != 6 or tuple(freqs.shape[1:]) != (length, 1, head_dim // 2, 2, 2) or freqs.shape[0] not in (1, b):
        return f"RoPE table shape {tuple(freqs.shape)} is not (1 or B, L, 1, D/2, 2, 2)"
    if freqs.device != device:
        return "RoPE table on another device"
    if freqs.stride()[3:] != (4, 2, 1):
        return "RoPE table's (D/2, 2, 2) block is not contiguous"
    return None


def prologue_reason(x: torch.Tensor, weight: object, freqs: object, head_dim: int) -> str | None:
    """None when the fused prologue takes these inputs, else why not (the caller keeps ComfyUI's own path)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        return "q/k are not (B, L, C)"
    b, length, c = x.shape
    if head_dim % 2 or c % head_dim:  # before the stride: the same order of reasons as always
        return f"head_dim {head_dim} does not divide the model dim {c} into even heads"
    if x.stride(-1) != 1:
        return "q/k last dim is not contiguous"
    return layout_reason((b, length, c), x.device, weight, freqs, head_dim)


def _triton_fn():
    if "fn" not in _triton_import:
        try:
            from ..kernels.norm_rope import norm_rope_qk as fn
            _triton_import["fn"], _triton_import["error"] = fn, None
        except Exception as e:  # noqa: BLE001 - recorded as the reason
            _triton_import["fn"], _triton_import["error"] = None, f"{type(e).__name__}: {e}"
    return _triton_import["fn"]


def triton_reason(x: torch.Tensor | None = None) -> str | None:
    """None when the Triton prologue can run (for x, when given), else why not. The first call imports the
    kernel (on any machine), so a caller can do that once outside torch.compile's trace."""
    if _triton_fn() is None:
        return f"cannot import kernels.norm_rope ({_triton_import['error']})"
    return triton_input_reason(x)


@torch.library.custom_op("sparseflow::norm_rope_qk", mutates_args=())
def _norm_rope_op(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, freqs: torch.Tensor,
                  eps: float, head_dim: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        return _triton_fn()(q, k, wq, wk, freqs, eps, head_dim)
    return (norm_rope_reference(q, wq, freqs, eps, head_dim), norm_rope_reference(k, wk, freqs, eps, head_dim))


@_norm_rope_op.register_fake
def _norm_rope_fake(q, k, wq, wk, freqs, eps, head_dim, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        torch.empty_like(k, memory_format=torch.contiguous_format)


def norm_rope_qk(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, freqs: torch.Tensor,
                 eps: float, head_dim: int, backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
    """(RoPE(RMSNorm(q) * wq), RoPE(RMSNorm(k) * wk)) as new (B, L, C) tensors in q's dtype.

    backend "triton" (one launch for both) or "reference" (PyTorch, any device). Raises ValueError naming
    the input when the layout is not one the prologue takes (`prologue_reason`).
    """
    if backend not in PROLOGUE_BACKENDS:
        raise ValueError(f"sparseflow.prologue: backend must be one of {PROLOGUE_BACKENDS}; got {backend!r}")
    for name, x, w in (("q", q, wq), ("k", k, wk)):
        reason = prologue_reason(x, w, freqs, head_dim)
        if reason is not None:
            raise ValueError(f"sparseflow.prologue: {name}: {reason}")
    if q.shape != k.shape or q.dtype != k.dtype:
        raise ValueError(f"sparseflow.prologue: q {tuple(q.shape)} {q.dtype} and k {tuple(k.shape)} {k.dtype} differ")
    if backend == "triton":
        reason = triton_reason(q)
        if reason is not None:
            raise ValueError(f"sparseflow.prologue: backend 'triton' cannot run: {reason}")
    return run_norm_rope(q, k, wq, wk, freqs, eps, head_dim, backend)


@torch.library.custom_op("sparseflow::norm_rope_qk_", mutates_args=("q", "k"))
def _norm_rope_inplace_op(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, freqs: torch.Tensor,
                          eps: float, head_dim: int, backend: str) -> None:
    if backend == "triton":
        _triton_fn()(q, k, wq, wk, freqs, eps, head_dim, inplace=True)
        return
    q.copy_(norm_rope_reference(q, wq, freqs, eps, head_dim))
    k.copy_(norm_rope_reference(k, wk, freqs, eps, head_dim))


@_norm_rope_inplace_op.register_fake
def _norm_rope_inplace_fake(q, k, wq, wk, freqs, eps, head_dim, backend):
    return None


def inplace_reason(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """None when `run_norm_rope(..., inplace=True)` may overwrite q and k, else why not."""
    if not (q.is_contiguous() and k.is_contiguous()):
        return "q or k is not contiguous"
    if q.shape != k.shape or q.dtype != k.dtype:
        return "q and k differ in shape or dtype"
    return None


def run_norm_rope(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, freqs: torch.Tensor,
                  eps: float, head_dim: int, backend: str, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm_rope_qk` without its checks, for a caller that has already asked `layout_reason` and
    `triton_reason` (SparseFlow's fused Wan forward, once per layer call). With `inplace` (a caller that owns q and k
    and has asked `inplace_reason`) the results overwrite q and k: the call then needs no memory of its own, where
    new outputs would hold q and k twice (on Wan 14B at 720p with CFG, 2 x 1.4 GiB more at the self-attention)."""
    if inplace:
        _norm_rope_inplace_op(q, k, wq, wk, freqs, float(eps), int(head_dim), backend)
        return q, k
    return _norm_rope_op(q, k, wq, wk, freqs, float(eps), int(head_dim), backend)
