"""The fused kernel's compensation pre-pass: each (sparse head, query block) row of `compensation_bias` pools exactly
the key blocks outside the structural set of `sparseflow.masks` (spec §5.2), with log2 of each block's token count.

On CPU the Triton pre-pass runs under TRITON_INTERPRET=1 (set before triton is imported, only without CUDA).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from comfyui_sparseflow.kernels.prepass import compensation_bias, plan_tensors  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.masks import block_tables, num_blocks, structural_block_mask  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NEG = -1.0e30


def _expected(plan: AttentionPlan, h: int, lut_only: bool) -> torch.Tensor:
    g, block = plan.geometry, plan.block
    n = num_blocks(g.length, block)
    counts = torch.tensor([min(block, g.length - j * block) for j in range(n)], dtype=torch.float64)
    pooled = torch.ones(n, n, dtype=torch.bool)
    if not lut_only:
        pooled = ~structural_block_mask(g, block, plan.window[h], plan.live_anchors)
    return torch.where(pooled, torch.log2(counts)[None, :], torch.full((), NEG, dtype=torch.float64))


@pytest.mark.parametrize("lut_only", [False, True], ids=["structural", "lut-only"])
@pytest.mark.parametrize("geometry, block, anchors", [
    (Geometry(frames=8, height=4, width=12, prefix=7, suffix=9), 64, (0, 5)),  # extra tokens both sides
    (Geometry(frames=9, height=5, width=9, prefix=0, suffix=0), 64, (0,)),  # odd L: a partial last block
    (Geometry(frames=12, height=6, width=10, prefix=0, suffix=3), 128, (5,)),  # an anchor after the window
], ids=["extra", "odd", "block128"])
def test_bias_rows_pool_the_blocks_outside_the_structural_set(geometry, block, anchors, lut_only):
    plan = AttentionPlan(geometry, (SPARSE, DENSE, SPARSE, LINEAR), (0, 0, 2, 0), (0, 0, 0, 0), anchors=anchors,
                         compensation=True, block=block)
    sparse = [h for h, r in enumerate(plan.routes) if r == SPARSE]
    cb = compensation_bias(plan, plan_tensors(plan, torch.device(DEV)), sparse, torch.device(DEV), lut_only).cpu()
    n = num_blocks(geometry.length, block)
    assert cb.shape == (plan.heads, n, n)
    has_extra = block_tables(geometry, block).has_extra
    rows = [i for i in range(n) if not has_extra[i]]  # Rule E rows are never read
    assert rows, "the case must have query blocks without extra tokens"
    for h in sparse:
        want = _expected(plan, h, lut_only)[rows]
        got = cb[h, rows].double()
        got = torch.where(got <= NEG / 2, NEG, got)  # the fp32 -1e30, as the float64 NEG
        assert torch.equal(got == NEG, want == NEG), f"head {h}: pooled blocks differ from the structural mask"
        keep = want != NEG
        assert keep.any() and torch.allclose(got[keep], want[keep], atol=1e-6), f"head {h}: log2 counts differ"
