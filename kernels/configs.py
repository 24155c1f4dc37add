"""Launch configurations of the fused SparseFlow kernel: a pruned Hopper autotune list and one CI config.

After Triton's 06-fused-attention tutorial (`configs` + `keep()`): BLOCK_M 64/128 query rows, BLOCK_N 64/128
keys per tile, 4/8 warps, 2-4 pipeline stages. Both tile sizes must divide the spec block (64 or 128),
so a spec block is walked as whole kernel tiles. Under TRITON_INTERPRET=1 (CPU CI) one small fixed
config runs and nothing is tuned.
"""

from __future__ import annotations

import os

__all__ = ["AUTOTUNE_KEY", "INTERPRET", "autotune_configs", "interpret_config", "keep"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE_KEY = ["L", "HEADS", "BATCH", "HEAD_DIM", "BLOCK"]

_SPACE = [
    # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    (128, 128, 8, 2),
    (128, 128, 8, 3),
    (128, 64, 4, 3),
    (128, 64, 4, 4),
    (128, 64, 8, 3),
    (64, 64, 4, 3),
]


def autotune_configs() -> list:
    import triton

    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in _SPACE]


def keep(configs, named_args, **kwargs) -> list:
    """Drop configs whose tiles do not divide the spec block (BLOCK) or that cannot fit D=128 in smem."""
    args = {**named_args, **kwargs}
    block, d = args["BLOCK"], args["HEAD_DIM"]
    out = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if block % bm or block % bn:
            continue
        if d == 128 and bn == 128 and c.num_stages > 3:
            continue
        out.append(c)
    return out or configs[-1:]


def interpret_config() -> dict:
    """The one configuration used under TRITON_INTERPRET=1: small tiles keep the CPU emulation quick."""
    return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
