"""Partial attention results with their log-sum-exp, and the merge that combines key ranges into the whole.

An attention output over a key set S is `out = sum_{j in S} exp(l_j - lse) v_j` with `lse = log sum_{j in S}
exp(l_j)`. Two results over disjoint key sets merge exactly into the result over their union (the online-softmax
rescaling of FlashAttention, as ring attention merges its steps: zhuzilin/ring-flash-attention `update_out_and_lse`).
A row with no key has lse = -inf and contributes nothing. For a linear head of `linear_kind="feature"` the weights
are phi(q).phi(k) instead of exp(l), and lse is the log of their sum: the same merge rule holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PartialAttention", "merge_partials"]


@dataclass(frozen=True)
class PartialAttention:
    """One attention result: `out` (B, H, L, D) and `lse` (B, H, L). The reference gives both in its compute dtype
    (fp32 or fp64); the fused kernel gives `out` in q's dtype (fp16/bf16) and `lse` in fp32. Merges compute in fp32
    or wider."""

    out: torch.Tensor
    lse: torch.Tensor

    def __post_init__(self) -> None:
        if self.out.dim() != 4 or tuple(self.lse.shape) != tuple(self.out.shape[:3]):
            raise ValueError(f"partial attention: out must be (B, H, L, D) and lse (B, H, L); got out "
                             f"{tuple(self.out.shape)}, lse {tuple(self.lse.shape)}")


def merge_partials(*parts: PartialAttention) -> PartialAttention:
    """The result over the union of the parts' (disjoint) key sets. Computes in fp32 or wider."""
    if not parts:
        raise ValueError("merge_partials: give at least one partial result")
    shape = tuple(parts[0].out.shape)
    for i, p in enumerate(parts):
        if tuple(p.out.shape) != shape:
            raise ValueError(f"merge_partials: part {i} has out {tuple(p.out.shape)}, part 0 has {shape}; "
                             "allowed: equal shapes")
    cdt = torch.promote_types(parts[0].out.dtype, torch.float32)
    lses = torch.stack([p.lse.to(cdt) for p in parts])  # (P, B, H, L)
    lse = torch.logsumexp(lses, dim=0)
    # rows empty in every part: lse stays -inf, the weights would be nan; they get weight 0 and out 0
    safe = torch.where(torch.isinf(lse) & (lse < 0), torch.zeros_like(lse), lse)
    w = torch.exp(lses - safe)[..., None]  # (P, B, H, L, 1), 0 for an empty part (whose out may be nan)
    out = sum(torch.where(w[i] > 0, w[i] * p.out.to(cdt), 0.0) for i, p in enumerate(parts))
    return PartialAttention(out, lse)
