"""The public SparseFlow attention op: a backend registry (reference, triton) and the `sparseflow::attention` custom op.

Backends say why they cannot run (comfy-kitchen `registry.py`): `available_backends()` maps each name
to None or a reason; "auto" takes triton on CUDA with fp16/bf16 input when triton imports, else the
reference, and logs the refusals once. An explicit backend that cannot run raises ValueError with its
reasons. `sparseflow::attention` (torch.library) carries the plan as one small tensor (`encode_plan`), with a
fake implementation, so torch.compile traces a model patched by SparseFlow without a graph break.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .fp8 import fp8_device_reason
from .geometry import Geometry
from .inputs import check_qkv, triton_input_reason
from .plan import DENSE, FP8, INT8_QK, LINEAR_KINDS, PRECISIONS, AttentionPlan
from .quantize import int8_device_reason
from .reference import reference_attention

__all__ = ["BACKENDS", "attention", "attention_encoded", "available_backends", "backend_for", "current_backend",
           "decode_plan", "encode_plan", "use_backend"]

log = logging.getLogger("sparseflow.ops")

BACKENDS = ("triton", "reference")
_state = {"backend": "auto"}
_logged: set = set()
_triton_import: dict = {}


def _triton_fn() -> Callable | None:
    """kernels.fused_attention, or None with the import error recorded."""
    if "fn" not in _triton_import:
        try:
            from ..kernels import fused_attention
            _triton_import["fn"], _triton_import["error"] = fused_attention, None
        except Exception as e:  # noqa: BLE001 - any import failure is a reason, not a crash
            _triton_import["fn"], _triton_import["error"] = None, f"{type(e).__name__}: {e}"
    return _triton_import["fn"]


def _triton_reason(q: torch.Tensor | None = None, plan: AttentionPlan | None = None) -> str | None:
    if not torch.cuda.is_available():
        return "triton: no CUDA device"
    if _triton_fn() is None:
        return f"triton: cannot import kernels ({_triton_import['error']})"
    if q is not None and (why := triton_input_reason(q)):
        return f"triton: {why}"
    if plan is not None and len(plan.live_anchors) > 4:
        return f"triton: {len(plan.live_anchors)} anchor frames (the kernel takes at most 4)"
    if plan is not None and plan.precision == INT8_QK and (why := int8_device_reason(q)):
        return f"triton: {why}"
    if plan is not None and plan.precision == FP8 and (why := fp8_device_reason(q)):
        return f"triton: {why}"
    return None


def available_backends(q: torch.Tensor | None = None, plan: AttentionPlan | None = None) -> dict[str, str | None]:
    """Each backend name -> None if it can run (for these inputs, when given), else the reason it cannot."""
    return {"triton": _triton_reason(q, plan), "reference": None}


def use_backend(name: str) -> None:
    """Select "auto", "triton" or "reference" for later calls; an explicit backend must be able to run now."""
    if name not in ("auto", *BACKENDS):
        raise ValueError(f"sparseflow.ops: backend must be 'auto', 'triton' or 'reference', got {name!r}")
    if name != "auto":
        reason = available_backends()[name]
        if reason is not None:
            raise ValueError(f"sparseflow.ops: backend {name!r} cannot run: {reason}")
    _state["backend"] = name


def current_backend() -> str:
    return _state["backend"]


def backend_for(q: torch.Tensor, plan: AttentionPlan, backend: str | None = None) -> str:
    """The backend a call runs on. "auto" logs each refused backend's reason once; explicit raises ValueError."""
    name = backend or _state["backend"]
    reasons = available_backends(q, plan)
    if name == "auto":
        for cand in BACKENDS:
            if reasons[cand] is None:
                refused = {k: r for k, r in reasons.items() if r is not None}
                key = (cand, tuple(sorted(refused.items())))
                if key not in _logged:
                    _logged.add(key)
                    log.info("sparseflow attention runs on %s%s", cand,
                             "".join(f"; {k} refused: {r}" for k, r in refused.items()))
                return cand
    if name not in BACKENDS:
        raise ValueError(f"sparseflow.ops: backend must be 'auto', 'triton' or 'reference', got {name!r}")
    if reasons[name] is not None:
        raise ValueError(f"sparseflow.ops: backend {name!r} cannot run: {reasons[name]}")
    return name


def _sdpa_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int | None,
                scale: float | None = None) -> torch.Tensor:
    """Dense attention through torch SDPA with ComfyUI's backend priority (cuDNN, Flash, MemEfficient, Math)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if q.dim() == 3:
        b, length, hd = q.shape
        qb, kb, vb = (t.view(b, length, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
    else:
        qb, kb, vb = q, k, v
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, scale=scale)
    return out if q.dim() == 4 else out.transpose(1, 2).reshape(q.shape)


def _run(q, k, v, plan: AttentionPlan, heads: int | None, backend: str | None) -> torch.Tensor:
    name = backend_for(q, plan, backend)
    if name == "triton":
        if all(r == DENSE for r in plan.routes):
            # An all-dense call has nothing to skip: the fastest exact kernel there is does it (the fallback
            # costs nothing). Mixed calls keep the one fused launch.
            if ("sdpa-dense",) not in _logged:
                _logged.add(("sdpa-dense",))
                log.info("sparseflow attention: all-dense calls run on torch SDPA (cuDNN first)")
            return _sdpa_dense(q, k, v, heads, plan.scale)
        return _triton_fn()(q, k, v, plan, heads=heads)
    return reference_attention(q, k, v, plan, heads=heads)


# -- torch.library custom op: the plan travels as one small tensor ------------------------------------------
# `encode_plan` packs the plan into a float64 CPU tensor (every value is an integer below 2**53 or the scale, so
# float64 holds them exactly) and `decode_plan` rebuilds it inside the op. A caller that makes the tensor outside
# torch.compile's trace (SparseFlow's per-model-call context) gets one graph for every step: plans given as
# Python ints would be specialised on, a new graph per schedule window.

def _plan_from(geom: list[int], routes: list[int], window: list[int], topk: list[int],
               anchors: list[int], compensation: bool, linear_kind: int, own_block: bool, block: int,
               precision: int, scale: float) -> AttentionPlan:
    return AttentionPlan(Geometry(*geom), tuple(routes), tuple(window), tuple(topk), tuple(anchors), compensation,
                         LINEAR_KINDS[linear_kind], own_block, block, scale if scale > 0 else None,
                         PRECISIONS[precision])


_CODE_VERSION = 2
_decoded: dict = {}


def encode_plan(plan: AttentionPlan) -> torch.Tensor:
    """The plan as a 1-D float64 CPU tensor (`decode_plan` inverts it)."""
    g = plan.geometry
    vals = [_CODE_VERSION, g.frames, g.height, g.width, g.prefix, g.suffix, plan.heads, *plan.routes, *plan.window,
            *plan.topk, len(plan.anchors), *plan.anchors, int(plan.compensation),
            LINEAR_KINDS.index(plan.linear_kind), int(plan.linear_own_block), plan.block,
            PRECISIONS.index(plan.precision), float(plan.scale or 0.0)]
    return torch.tensor(vals, dtype=torch.float64)


def decode_plan(code: torch.Tensor) -> AttentionPlan:
    """The AttentionPlan of an `encode_plan` tensor (cached per distinct code)."""
    vals = tuple(code.tolist())
    plan = _decoded.get(vals)
    if plan is None:
        if not vals or int(vals[0]) != _CODE_VERSION:
            raise ValueError(f"sparseflow.ops: plan code version {vals[:1]} is not {_CODE_VERSION}")
        ints = [int(v) for v in vals[:-1]]
        h = ints[6]
        pos = 7
        routes, window, topk = ints[pos:pos + h], ints[pos + h:pos + 2 * h], ints[pos + 2 * h:pos + 3 * h]
        pos += 3 * h
        na = ints[pos]
        anchors = ints[pos + 1:pos + 1 + na]
        comp, lk, own, block, prec = ints[pos + 1 + na:pos + 6 + na]
        plan = _plan_from(ints[1:6], routes, window, topk, anchors, bool(comp), lk, bool(own), block, prec,
                          vals[-1])
        if len(_decoded) > 4096:
            _decoded.clear()
        _decoded[vals] = plan
    return plan


@torch.library.custom_op("sparseflow::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, code: torch.Tensor, heads: int,
                  backend: str) -> torch.Tensor:
    return _run(q, k, v, decode_plan(code), heads if heads > 0 else None, None if backend == "auto" else backend)


@_attention_op.register_fake
def _attention_fake(q, k, v, code, heads, backend):
    return torch.empty_like(q)


def attention_encoded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, code: torch.Tensor, *,
                      heads: int | None = None, backend: str = "auto") -> torch.Tensor:
    """`attention` with the plan given as `encode_plan(plan)`; the caller has checked q/k/v against the plan
    (SparseFlow's patch does, per model call) and picked the backend (`backend_for`)."""
    return _attention_op(q, k, v, code, heads or 0, backend)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, *, heads: int | None = None,
              backend: str = "auto") -> torch.Tensor:
    """SparseFlow attention (docs/spec.md) on the chosen backend, through the `sparseflow::attention` custom op.

    q, k, v: (B, H, L, D), or (B, L, H*D) with `heads`. Returns q's layout and dtype. Raises ValueError for
    bad inputs (spec §7) and for an explicit backend that cannot run.
    """
    check_qkv(q, k, v, plan, heads, op="sparseflow.attention")
    if backend != "auto":
        backend_for(q, plan, backend)  # raise now, with the reasons, rather than inside the op
    return _attention_op(q, k, v, encode_plan(plan), heads or 0, backend)
