"""Launch configurations and code variants of the fused SparseFlow kernel: the Hopper autotune list, one CI config.

After Triton's 06-fused-attention tutorial (`configs` + `keep()`): BLOCK_M 64/128 query rows, BLOCK_N 64/128
keys per tile, 4/8 warps, 2-4 pipeline stages. Both tile sizes must divide the spec block (64 or 128),
so a spec block is walked as whole kernel tiles. Under TRITON_INTERPRET=1 (CPU CI) one small fixed
config runs and nothing is tuned.

Code variants (constexpr flags of the kernel), chosen by $SPARSEFLOW_KERNEL_VARIANT or the bench's `_variant`,
so one GPU run can time them side by side (`bench_attention.py --sweep`); timings in docs/performance.md:
- "base": the first version: every key tile masked, logits scaled then masked;
- "fast": only the partial last key block's tiles are masked, qk_scale folded into the exp2 argument (one FMA);
- "tma": "fast" with K/V tiles through on-device tensor descriptors (Hopper copy engine);
- "tma_ws": "tma" with Triton's automatic warp specialization of the structural loop;
- "tma_lean": "tma" compiled per call kind: the top-k LUT, compensation and linear paths only when the call
  has them (constexpr HAS_LUT / HAS_COMP / HAS_LINEAR), so the main loop carries fewer live registers.
"""

from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl

__all__ = ["AUTOTUNE_KEY", "DEFAULT_VARIANT", "INTERPRET", "VARIANTS", "autotune_configs", "interpret_config",
           "kernel_flags", "keep", "variant_flags"]

log = logging.getLogger("sparseflow.kernels")
_logged: set = set()

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE_KEY = ["L", "HEADS", "BATCH", "HEAD_DIM", "BLOCK", "FAST", "TMA", "WS", "HAS_LUT", "HAS_COMP", "HAS_LINEAR"]
ENV_VARIANT = "SPARSEFLOW_KERNEL_VARIANT"

VARIANTS = {
    "base": {"FAST": False, "TMA": False, "WS": False, "LEAN": False},
    "fast": {"FAST": True, "TMA": False, "WS": False, "LEAN": False},
    "tma": {"FAST": True, "TMA": True, "WS": False, "LEAN": False},
    "tma_ws": {"FAST": True, "TMA": True, "WS": True, "LEAN": False},
    "tma_lean": {"FAST": True, "TMA": True, "WS": False, "LEAN": True},
}
DEFAULT_VARIANT = "tma_lean"

_SPACE = [
    # (BLOCK_M, BLOCK_N, num_warps, num_stages). The H100 sweep of 2026-11-25 (docs/performance.md): 128/128/8/3
    # fastest on every Wan row; 128/128/8/2 runs out of shared memory with descriptors (three pipelined loops);
    # BLOCK_M 128 on 4 warps is 30 % slower. 64/64 serves spec block 64.
    (128, 128, 8, 3),
    (128, 64, 8, 3),
    (64, 64, 4, 3),
    (64, 64, 4, 4),
]


def variant_flags(name: str | None = None) -> tuple[str, dict]:
    """(name, kernel constexpr flags) of a variant: `name`, else $SPARSEFLOW_KERNEL_VARIANT, else the default."""
    name = name or os.environ.get(ENV_VARIANT) or DEFAULT_VARIANT
    if name not in VARIANTS:
        raise ValueError(f"fused kernel variant must be one of {sorted(VARIANTS)}, got {name!r}")
    return name, dict(VARIANTS[name])


def autotune_configs() -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in _SPACE]


def keep(configs, named_args, **kwargs) -> list:
    """Drop configs whose tiles do not divide the spec block (BLOCK), that cannot fit D=128 in smem, or whose
    BLOCK_M is under the spec block (slower there, and each one is a compile on the first call)."""
    args = {**named_args, **kwargs}
    block, d = args["BLOCK"], args["HEAD_DIM"]
    out = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if block % bm or block % bn or bm < min(block, 128):
            continue
        if d == 128 and bn == 128 and c.num_stages > 3:
            continue
        out.append(c)
    return out or configs[-1:]


def interpret_config() -> dict:
    """The one configuration used under TRITON_INTERPRET=1: small tiles keep the CPU emulation quick."""
    return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}


def _tma_scratch(size: int, alignment: int, stream):
    """Global scratch for on-device tensor descriptors (triton.set_allocator)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _tma_refusal(*ts) -> str | None:
    """Why K/V cannot go through tensor descriptors here (None if they can): Hopper+, 16-byte rows and bases."""
    if INTERPRET:
        return "the CPU interpreter runs the pointer path"
    if torch.cuda.get_device_capability(ts[0].device)[0] < 9:
        return "tensor descriptors need compute capability 9.0+"
    if not hasattr(tl, "make_tensor_descriptor") or not hasattr(triton, "set_allocator"):
        return f"triton {triton.__version__} has no tl.make_tensor_descriptor"
    esize = ts[0].element_size()
    for t in ts:
        if t.data_ptr() % 16 or any((s * esize) % 16 for s in t.stride()[:3]):
            return "a K/V base or row stride is not a multiple of 16 bytes"
    return None


def kernel_flags(name: str | None, kb, vb) -> dict:
    """Kernel constexpr flags of the chosen variant; TMA falls back to pointer loads where it cannot run."""
    name, flags = variant_flags(name)
    why = _tma_refusal(kb, vb) if flags["TMA"] else None
    if why is not None:
        flags["TMA"] = flags["WS"] = False
    elif flags["TMA"] and "allocator" not in _logged:
        _logged.add("allocator")
        triton.set_allocator(_tma_scratch)
    key = (name, why)
    if key not in _logged:
        _logged.add(key)
        log.info("fused kernel variant %s%s", name, f" with pointer loads ({why})" if why else "")
    return flags
