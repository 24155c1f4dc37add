"""Ulysses sequence parallelism with SparseFlow as the local attention: yunchang's all-to-all, one plan slice per rank.

DeepSpeed-Ulysses (arXiv:2309.14509) as yunchang implements it (feifeibear/long-context-attention,
`yunchang/ulysses/attn_layer.py`; xDiT's USP builds on it): each rank holds L/P tokens of every head; one
all-to-all gives it all L tokens of H/P heads, it runs attention on those heads, and the reverse all-to-all
returns its L/P tokens of every head. The communication is yunchang's (`comm/all_to_all.py`: `SeqAllToAll5D`
for q, k, v packed into one collective, `SeqAllToAll4D` for the output) over torch.distributed (NCCL on GPUs,
gloo on CPUs); SparseFlow adds the head placement (`heads_placement.py`) and the per-rank plan. yunchang is an
optional dependency (`pip install yunchang`, or the pack's `multigpu` extra), imported when a call needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from .heads_placement import HeadPlacement, contiguous_placement, permute_heads, rank_plan
from .plan import AttentionPlan

__all__ = ["ENGINE", "LocalAttention", "engine_reason", "ulysses_attention"]

ENGINE = "yunchang"
_engine: dict = {}


class LocalAttention(Protocol):
    """The attention one rank runs on its heads: q, k, v (B, H/P, L, D) and the rank's plan -> (B, H/P, L, D)."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor: ...


def _yunchang() -> tuple[Callable, Callable] | None:
    """(SeqAllToAll5D.apply, SeqAllToAll4D.apply), or None with the import error recorded."""
    if "fns" not in _engine:
        try:
            from yunchang.comm.all_to_all import SeqAllToAll4D, SeqAllToAll5D
            _engine["fns"], _engine["error"] = (SeqAllToAll5D.apply, SeqAllToAll4D.apply), None
        except Exception as e:  # noqa: BLE001 - any import failure is a reason, not a crash
            _engine["fns"], _engine["error"] = None, f"{type(e).__name__}: {e}"
    return _engine["fns"]


def engine_reason() -> str | None:
    """None when the communication engine (yunchang) imports, else why not and how to install it."""
    if _yunchang() is None:
        return (f"sequence parallelism needs yunchang ({_engine['error']}); install it with `pip install yunchang` "
                "(pure Python; it uses the torch you have)")
    return None


def _sparseflow_local(backend: str) -> LocalAttention:
    from .ops import attention

    def local(q, k, v, plan):
        return attention(q, k, v, plan, backend=backend)

    return local


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, *, heads: int,
                      group: object = None, placement: HeadPlacement | None = None,
                      local: LocalAttention | None = None, backend: str = "auto") -> torch.Tensor:
    """SparseFlow self-attention of one call with the sequence split over the ranks of `group`.

    q, k, v: this rank's contiguous shard of the sequence, (B, L/P, H*D) as ComfyUI's attention gets it (rank r
    holds tokens [r*L/P, (r+1)*L/P)). `plan` is the whole call's plan: all H heads, the full geometry. `placement`
    says which heads each rank computes (default: contiguous, as yunchang does; `heads_placement.placement_for`
    balances them); `local` replaces the attention a rank runs (default `ops.attention` on `backend`).
    Returns this rank's shard of the output, (B, L/P, H*D), equal to the single-process result's rows.
    """
    import torch.distributed as dist

    if (why := engine_reason()) is not None:
        raise ValueError(f"ulysses: {why}")
    a2a_qkv, a2a_out = _yunchang()
    ranks, rank = dist.get_world_size(group), dist.get_rank(group)
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"ulysses: q, k, v must be (B, L/P, H*D) of one shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, shard, hd = q.shape
    if heads != plan.heads or hd % heads:
        raise ValueError(f"ulysses: heads={heads} must equal the plan's {plan.heads} heads and divide H*D={hd}")
    if shard * ranks != plan.geometry.length:
        raise ValueError(f"ulysses: {ranks} ranks x {shard} tokens per shard = {shard * ranks}, but the geometry "
                         f"{plan.geometry.describe()} has {plan.geometry.length} tokens; allowed: the sequence split "
                         "evenly over the ranks, without padding")
    placement = placement or contiguous_placement(heads, ranks)
    if placement.ranks != ranks or placement.heads != heads:
        raise ValueError(f"ulysses: placement is for {placement.heads} heads over {placement.ranks} ranks; this call "
                         f"has {heads} heads over {ranks} ranks")
    d = hd // heads
    qkv = torch.stack((q, k, v), dim=2).view(b, shard, 3, heads, d)
    if not placement.is_identity:
        qkv = permute_heads(qkv, placement.order, dim=3)
    qkv = a2a_qkv(group, qkv, 3, 1)  # (B, L, 3, H/P, D): all tokens of this rank's heads
    qr, kr, vr = qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # (B, H/P, L, D) each
    out = (local or _sparseflow_local(backend))(qr, kr, vr, rank_plan(plan, placement, rank))
    out = a2a_out(group, out.transpose(1, 2).contiguous(), 1, 2)  # (B, L/P, H, D): this rank's tokens
    if not placement.is_identity:
        out = permute_heads(out, placement.inverse, dim=2)
    return out.reshape(b, shard, hd)
