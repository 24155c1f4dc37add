"""Per-step timing and the step-time breakdown of ComfyUI's WanModel, with CUDA events.

`StepTimer` is the `callback` of `comfy.sample.sample` (called once per sampler step, after the model
call): it records one event per step, so step i's time is the gap between events i-1 and i (step 0
counts from just before sampling, so it holds model loading, compilation and autotuning).

`Breakdown` puts an event pair around module forwards of `WanModel` (`comfy/ldm/wan/model.py`):
the whole forward, each block's `self_attn` (projections, QK RMSNorm, RoPE, attention, output
projection), the `q/k/v/o` Linear layers of self- and cross-attention, `cross_attn` and `ffn` (and
SparseFlow's fused-block `ffn_forward`, which runs the FFN without always calling the `ffn` module), plus the
attention call itself (the module-level `optimized_attention` name that WanSelfAttention and
WanT2VCrossAttention call, wrapped here for the bench only and restored on exit; self vs cross by
`q.shape[1] == k.shape[1]`, peeking into newest ComfyUI's `AttentionTensorContainer`s). Derived:
QK-norm + RoPE = self_attn - its projections - self-attention; rest = forward - self_attn - cross_attn - ffn
(modulation, LayerNorms, residuals, embeddings, head).
Eager only: the hooks would break a torch.compile graph.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

__all__ = ["Breakdown", "StepTimer", "sync"]



def sync(cuda: bool) -> None:
    """Wait for the GPU when timing on CUDA (no-op on the CPU)."""
    if cuda:
        torch.cuda.synchronize()

class StepTimer:
    """Events at sampling start and after every step; `step_seconds()` after a synchronize."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list = []

    def _mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self) -> None:
        self.marks = [self._mark()]

    def __call__(self, step, x0, x, total_steps) -> None:
        self.marks.append(self._mark())

    def step_seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _tokens(t) -> int:
    """Sequence length of an attention input: a tensor, or newest ComfyUI's AttentionTensorContainer (peeked, not
    taken: the backend takes it)."""
    return (t.peek() if hasattr(t, "peek") else t).shape[1]


class _Pair:
    __slots__ = ("start", "end")

    def __init__(self, cuda: bool) -> None:
        if cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start, self.end = time.perf_counter(), None

    def stop(self, cuda: bool) -> None:
        if cuda:
            self.end.record()
        else:
            self.end = time.perf_counter()

    def seconds(self, cuda: bool) -> float:
        return self.start.elapsed_time(self.end) / 1e3 if cuda else self.end - self.start


class Breakdown:
    """Context manager timing the parts of every WanModel forward; `per_call()` gives seconds per part."""

    PARTS = ("self_attention", "qk_norm_rope", "projections", "cross_attention", "cross_other", "ffn", "rest")

    def __init__(self, diffusion_model: torch.nn.Module, wan_module, cuda: bool, fused_block_module=None) -> None:
        self.model, self.wan, self.cuda = diffusion_model, wan_module, cuda
        self.fused = fused_block_module  # SparseFlow's nodes.fused_block: its ffn_forward is timed as the FFN too
        self.calls: list[dict[str, list[_Pair]]] = []
        self._handles: list = []
        self._orig_attention = None
        self._orig_ffn = None

    # -- hooks -------------------------------------------------------------------------------------------
    def _open(self, name: str) -> None:
        self.calls[-1][name].append(_Pair(self.cuda))

    def _close(self, name: str) -> None:
        self.calls[-1][name][-1].stop(self.cuda)

    def _hook(self, module: torch.nn.Module, name: str) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda m, a: self._open(name)))
        self._handles.append(module.register_forward_hook(lambda m, a, o: self._close(name)))

    def __enter__(self) -> "Breakdown":
        def start_call(m, a):
            self.calls.append(defaultdict(list))
            self._open("forward")

        self._handles.append(self.model.register_forward_pre_hook(start_call))
        self._handles.append(self.model.register_forward_hook(lambda m, a, o: self._close("forward")))
        for block in self.model.blocks:
            self._hook(block.self_attn, "self_total")
            self._hook(block.cross_attn, "cross_total")
            self._hook(block.ffn, "ffn")
            for p in ("q", "k", "v", "o"):
                self._hook(getattr(block.self_attn, p), "self_proj")
                self._hook(getattr(block.cross_attn, p), "cross_proj")
        orig = self._orig_attention = self.wan.optimized_attention

        def timed_attention(q, k, v, *args, **kwargs):
            name = "self_attention" if _tokens(q) == _tokens(k) else "cross_attention"
            if not self.calls:
                return orig(q, k, v, *args, **kwargs)
            self._open(name)
            try:
                return orig(q, k, v, *args, **kwargs)
            finally:
                self._close(name)

        self.wan.optimized_attention = timed_attention
        if self.fused is not None:  # the fused block forward calls ffn_forward, not always the ffn module
            orig_ffn = self._orig_ffn = self.fused.ffn_forward

            def timed_ffn(*args, **kwargs):
                if not self.calls:
                    return orig_ffn(*args, **kwargs)
                self._open("ffn_fused")
                try:
                    return orig_ffn(*args, **kwargs)
                finally:
                    self._close("ffn_fused")

            self.fused.ffn_forward = timed_ffn
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.wan.optimized_attention = self._orig_attention
        if self.fused is not None:
            self.fused.ffn_forward = self._orig_ffn

    # -- results -------------------------------------------------------------------------------------------
    def per_call(self) -> list[dict[str, float]]:
        """Seconds per part for every forward call, in call order."""
        if self.cuda:
            torch.cuda.synchronize()
        out = []
        for call in self.calls:
            s = {k: sum(p.seconds(self.cuda) for p in v) for k, v in call.items()}
            g = lambda k: s.get(k, 0.0)  # noqa: E731
            out.append({
                "forward": g("forward"),
                "self_attention": g("self_attention"),
                "qk_norm_rope": g("self_total") - g("self_proj") - g("self_attention"),
                "projections": g("self_proj") + g("cross_proj"),
                "cross_attention": g("cross_attention"),
                "cross_other": g("cross_total") - g("cross_proj") - g("cross_attention"),
                # ffn_forward (fused blocks) wraps the module call when it falls back: count the outer one
                "ffn": max(g("ffn"), g("ffn_fused")),
                "rest": g("forward") - g("self_total") - g("cross_total") - max(g("ffn"), g("ffn_fused")),
            })
        return out
