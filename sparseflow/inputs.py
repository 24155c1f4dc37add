"""Validation and layout handling of the operator's q, k, v (docs/spec.md §1 and §7), and why a kernel cannot run.

Shared by the reference and the Triton launchers so both reject the same inputs with the same messages.
"""

from __future__ import annotations

import torch

from .plan import AttentionPlan

__all__ = ["HEAD_DIMS", "KernelLaunchError", "check_qkv", "device_reason", "from_bhld", "to_bhld",
           "triton_input_reason"]

HEAD_DIMS = (64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class KernelLaunchError(RuntimeError):
    """A Triton kernel cannot launch on this device (e.g. every config needs more shared memory than it allows);
    the message says what was asked and what the device allows. Callers fall back, saying so."""


def device_reason(capability: tuple[int, int], dtype: torch.dtype) -> str | None:
    """Why the pack's Triton kernels cannot take `dtype` on a GPU of this compute capability (None if they can):
    Triton's matrix instructions start at sm_75 (Turing), its bfloat16 ones at sm_80 (Ampere)."""
    cc = f"{capability[0]}.{capability[1]}"
    if capability < (7, 5):
        return f"compute capability {cc}: the Triton kernels need 7.5 or newer (RTX 20 series and up)"
    if dtype == torch.bfloat16 and capability < (8, 0):
        return f"bfloat16 on compute capability {cc}: needs 8.0 or newer (load the model in float16)"
    return None


def triton_input_reason(x: torch.Tensor | None = None) -> str | None:
    """None when a CUDA device is here and x (when given) is a CUDA float16/bfloat16 tensor on a GPU the kernels
    serve, what every Triton kernel of the pack takes; else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if x is not None:
        if x.device.type != "cuda":
            return f"input on {x.device}"
        if x.dtype not in (torch.float16, torch.bfloat16):
            return f"dtype {x.dtype} (the kernel takes float16/bfloat16)"
        return device_reason(torch.cuda.get_device_capability(x.device), x.dtype)
    return None


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
              heads: int | None = None, op: str = "sparseflow") -> tuple[int, int, int, int]:
    """Validate inputs in either layout; return (B, H, L, D). Raises ValueError naming the argument."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{op}: {name} must have rank 4 (B, H, L, D) or rank 3 (B, L, H*D), "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{op}: {name} dtype must be float16, bfloat16, float32 or float64, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{op}: {name} shape {tuple(t.shape)} must equal q shape {tuple(q.shape)} "
                             "(self-attention only)")
        if t.dtype != q.dtype:
            raise ValueError(f"{op}: {name} dtype {t.dtype} must equal q dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    if q.dim() == 3:
        if heads is None or heads < 1:
            raise ValueError(f"{op}: heads must be given (>= 1) for the (B, L, H*D) layout, got {heads!r}")
        if q.shape[2] % heads:
            raise ValueError(f"{op}: last dim {q.shape[2]} of q is not divisible by heads={heads}")
        b, length, hd = q.shape
        h, d = heads, hd // heads
    else:
        b, h, length, d = q.shape
        if heads is not None and heads != h:
            raise ValueError(f"{op}: heads={heads} but q has {h} heads in dim 1")
    if d not in HEAD_DIMS:
        raise ValueError(f"{op}: head dim must be one of {HEAD_DIMS}, got {d}")
    if h != plan.heads:
        raise ValueError(f"{op}: q has {h} heads but the plan routes {plan.heads}")
    if b < 1:
        raise ValueError(f"{op}: batch must be >= 1, got {b}")
    plan.geometry.check_length(length)
    return b, h, length, d


def to_bhld(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D) view (no copy); rank-4 input is returned as is."""
    if x.dim() == 4:
        return x
    b, length, hd = x.shape
    return x.view(b, length, heads, hd // heads).transpose(1, 2)


def from_bhld(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Back to the layout of `like`: (B, H, L, D) -> (B, L, H*D) when `like` is rank 3."""
    if like.dim() == 4:
        return out
    b, h, length, d = out.shape
    return out.transpose(1, 2).reshape(b, length, h * d)
