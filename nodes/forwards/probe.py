"""The behaviour check: which supported ComfyUI version's Wan forwards does the running ComfyUI's code do?

Per model (once per block/module classes, device type and dtype in a process), at the first model call and
outside torch.compile's trace, ComfyUI's own `WanSelfAttention.forward` and `WanAttentionBlock.forward` run on a
tiny input (8 tokens, the model's own weights and RoPE table, random activations) with a recording attention
override and recording patches, and so does each version module's code (nodes/forwards/comfy_*.py) with ComfyUI's
own roundings (the prologue's and the block's PyTorch references). A version matches when it makes the same
attention calls (tensors or containers, shapes, extra keyword arguments), asks for the same patch points, calls
the same patches, and gives the same q, k and output up to one rounding. Nothing reads ComfyUI's source text.
A forward no version matches keeps ComfyUI's code for that pass; the reason goes to the log (once) and, per call,
to the run summary.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch

from ...sparseflow import prologue as core_prologue
from ..context import PROBE_KEY
from ..fused_block import block_ops
from ..prologue import Projections, qk_weights
from ..report import log_once
from . import VERSIONS

__all__ = ["ForwardMatch", "match_forwards"]

_TOKENS_THW = (2, 4, 4)  # latent frames x height x width of the check: 2 x 2 x 2 = 8 tokens at patch (1, 2, 2)
_cache: dict = {}


@dataclass(frozen=True)
class ForwardMatch:
    """The version module each fused pass follows (None: ComfyUI's own code runs, for the reason given)."""

    attn: object = None
    attn_reason: str = ""
    block: object = None
    block_reason: str = ""

    def describe(self) -> str:
        if self.attn is not None and self.block is self.attn:
            return f"Wan forward: {self.attn.NAME}"
        parts = [f"{what}: {m.NAME if m is not None else 'none'}"
                 for what, m in (("self-attention", self.attn), ("block", self.block))]
        return "Wan forwards " + ", ".join(parts)


class _Unchecked(Exception):
    """This model's inputs to the check are ones the fused passes refuse (not cached: another call may differ)."""


class _Record:
    """Transformer options of one run of the check: a recording attention override and recording patches."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.asked: set[str] = set()
        self.qk: list[tuple[torch.Tensor, torch.Tensor]] = []
        record = self

        class Patches(dict):
            def get(self, key, default=None):
                record.asked.add(key)
                return super().get(key, default)

            def __contains__(self, key):
                record.asked.add(key)
                return super().__contains__(key)

            def __getitem__(self, key):
                record.asked.add(key)
                return super().__getitem__(key)

        def patch(name):
            def fn(args):
                record.events.append((name, tuple(sorted(args))))
                return args["x"]
            return fn

        override = self._override()
        self.options = {"optimized_attention_override": override, PROBE_KEY: True,
                        "patches": Patches(attn1_patch=[patch("attn1_patch")], attn2_patch=[patch("attn2_patch")])}

    def _override(self):
        record = self

        def attend(kind, q, k, v, heads, kwargs):
            extra = tuple(sorted(set(kwargs) - {"transformer_options", "_inside_attn_wrapper"}))
            record.events.append(("attention", kind, tuple(q.shape), tuple(k.shape), extra))
            if q.shape == k.shape:
                record.qk.append((q, k))
            b, lq, c = q.shape
            q4, k4, v4 = (t.reshape(b, -1, heads, c // heads).transpose(1, 2).float() for t in (q, k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q4, k4, v4)
            return out.transpose(1, 2).reshape(b, lq, c).to(q.dtype)

        def override(func, q, k, v, heads=None, *args, **kwargs):
            return attend("tensors", q, k, v, heads, kwargs)

        def container_function(q, k, v, heads=None, *args, **kwargs):
            return attend("containers", q.take(), k.take(), v.take(), heads, kwargs)

        override.container_function = container_function
        return override


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 if a.dtype in (torch.float32, torch.float64) else 3e-2  # one rounding of fp16 / bf16, norm-wise
    if a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    return bool(((a - b).norm() <= tol * b.norm().clamp_min(1e-12)).item())


def _compare(what: str, run_original, run_version) -> tuple[object, str]:
    """(the first version module whose run does what ComfyUI's does, "") or (None, why none does)."""
    want = _Record()
    expected = run_original(want.options)
    reasons = []
    for version in VERSIONS:
        got = _Record()
        try:
            out = run_version(version, got.options)
        except _Unchecked:
            raise
        except Exception as e:  # noqa: BLE001 - a version whose code cannot run here is no match
            reasons.append(f"{version.NAME}: {type(e).__name__}: {e}")
            continue
        if got.events != want.events:
            reasons.append(f"{version.NAME}: calls {got.events}, ComfyUI's {want.events}")
        elif got.asked != want.asked:
            reasons.append(f"{version.NAME}: asks for patches {sorted(got.asked)}, ComfyUI's {sorted(want.asked)}")
        elif not all(_close(a, b) for pair in zip(got.qk, want.qk) for a, b in zip(*pair)):
            reasons.append(f"{version.NAME}: other q/k")
        elif not _close(out, expected):
            reasons.append(f"{version.NAME}: another result")
        else:
            return version, ""
    return None, f"ComfyUI's {what} does what no supported version does ({'; '.join(reasons)})"


def _inputs(dm, block, device, dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    freqs = dm.rope_encode(*_TOKENS_THW, device=device, dtype=dtype)
    tokens = int(freqs.shape[1])
    dim = int(block.self_attn.dim)

    def rand(*shape, scale=1.0):
        return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)

    i2v = hasattr(block.cross_attn, "k_img")
    context = rand(1, (4 if i2v else 0) + 6, dim)
    return rand(1, tokens, dim), freqs, rand(1, 1, 6, dim, scale=0.1), context, (4 if i2v else None)


def _check_attention(dm, block, x, freqs) -> tuple[object, str]:
    attn = block.self_attn
    wan = sys.modules[type(attn).__module__]
    weights, why = qk_weights(attn, x, freqs)
    if why is not None:
        raise _Unchecked(why)

    def make_qk(h):
        q, k = attn.q(h), attn.k(h)
        eps = float(attn.norm_q.eps) if getattr(attn.norm_q, "eps", None) is not None else 1e-6
        return (core_prologue.norm_rope_reference(q, weights[0].to(q.dtype), freqs, eps, attn.head_dim),
                core_prologue.norm_rope_reference(k, weights[1].to(k.dtype), freqs, eps, attn.head_dim))

    return _compare("self-attention forward", lambda to: type(attn).forward(attn, x, freqs, transformer_options=to),
                    lambda version, to: version.attend(wan, attn, Projections(attn, x, make_qk), to))


def _check_block(dm, block, x, freqs, e, context, img_len) -> tuple[object, str]:
    ops, ee, why = block_ops(block, x, e, "reference")
    if why is not None:
        raise _Unchecked(why)

    def run_version(version, to):
        ops.fallbacks.clear()
        return version.block_body(block, x, ee, freqs, context, img_len, to, ops)

    return _compare(
        "block forward",
        lambda to: type(block).forward(block, x, e, freqs, context, context_img_len=img_len, transformer_options=to),
        run_version)


def _check(dm, device, dtype) -> tuple[ForwardMatch, bool]:
    """(the match, whether it holds for every later call: False when this model's weights kept a check from running,
    e.g. LoRA patch functions on a norm, so the next run checks again)."""
    block = dm.blocks[0]
    x, freqs, e, context, img_len = _inputs(dm, block, device, dtype)
    found, lasting = [], True
    for check, args in ((_check_attention, (dm, block, x, freqs)),
                        (_check_block, (dm, block, x, freqs, e, context, img_len))):
        try:
            found.extend(check(*args))
        except _Unchecked as err:
            found.extend((None, f"the behaviour check cannot use this model's weights ({err})"))
            lasting = False
    return ForwardMatch(*found), lasting


def match_forwards(dm: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> ForwardMatch:
    """Which version module the fused passes of this diffusion model follow (cached per classes, device, dtype)."""
    blocks = getattr(dm, "blocks", None)
    if not blocks or getattr(blocks[0], "self_attn", None) is None:
        why = "the diffusion model has no Wan blocks"
        return ForwardMatch(None, why, None, why)
    block = blocks[0]
    key = (type(dm), type(block), type(block.self_attn), type(block.cross_attn), type(block.norm3),
           type(block.ffn), torch.device(device).type, dtype)
    if key in _cache:
        return _cache[key]
    try:
        with torch.no_grad():
            match, lasting = _check(dm, device, dtype)
    except Exception as e:  # noqa: BLE001 - the check itself failed: ComfyUI's own code runs, said once
        why = f"the behaviour check could not run ({type(e).__name__}: {e})"
        log_once(("forwards", why), "SparseFlow: the fused passes stay ComfyUI's own: %s", why,
                 level=logging.WARNING)
        return ForwardMatch(None, why, None, why)
    if lasting:
        _cache[key] = match
    for what, version, reason in (("QK-norm + RoPE", match.attn, match.attn_reason),
                                  ("block adds + norms", match.block, match.block_reason)):
        if version is None:
            log_once(("forwards", reason), "SparseFlow: %s stay ComfyUI's own: %s", what, reason,
                     level=logging.WARNING)
        else:
            log_once(("forwards", what, version.NAME), "SparseFlow: %s fused, following %s's Wan forward "
                     "(behaviour check)", what, version.NAME)
    return match
