"""Ulysses sequence parallelism with SparseFlow as the local attention equals the single-process result (CPU, gloo).

World sizes 2 and 4 in subprocesses (torch.multiprocessing spawn, tests/ulysses_worker.py); yunchang does the
all-to-all. Mixed routes clustered on the first heads, with contiguous and balanced head placement, pooled and
feature linear heads, and a dense local attention through the same path.
"""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
import ulysses_worker
from comfyui_sparseflow.sparseflow import geometry, plan
from comfyui_sparseflow.sparseflow.heads_placement import placement_for

pytest.importorskip("yunchang", reason="yunchang (the Ulysses all-to-all engine) is not installed: "
                                       "pip install -r requirements-dev.txt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", [2, 4])
def test_ulysses_sparseflow_equals_single_process(world, tmp_path):
    p = ulysses_worker.wan_like_plan(plan, geometry)
    assert not placement_for(p, world, True).is_identity, "the balanced case must exercise the permutation"
    mp.spawn(ulysses_worker.run, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(results) == {"pooled/balance=False", "pooled/balance=True", "feature/balance=False",
                                "feature/balance=True", "dense/local"}
        for key, r in results.items():
            length = p.geometry.length
            assert r["shape"] == [ulysses_worker.BATCH, length // world, ulysses_worker.HEADS * ulysses_worker.DIM]
            assert r["max_abs_diff"] <= 1e-12, f"rank {rank} {key}: differs by {r['max_abs_diff']:.3e} from the " \
                                               "single-process reference"
        assert not results["pooled/balance=True"]["identity"]


def test_ulysses_needs_an_even_sequence_split():
    pytest.importorskip("torch.distributed")
    import torch.distributed as dist
    from comfyui_sparseflow.sparseflow.ulysses import ulysses_attention

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        p = ulysses_worker.wan_like_plan(plan, geometry)
        q = torch.zeros(1, p.geometry.length - 1, 8 * 64)
        with pytest.raises(ValueError, match="the sequence split evenly"):
            ulysses_attention(q, q, q, p, heads=8)
        q = torch.zeros(1, p.geometry.length, 8 * 64)
        with pytest.raises(ValueError, match="heads=6 must equal the plan's 8 heads"):
            ulysses_attention(q, q, q, p, heads=6)
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, p.geometry.length, 8 * 64) for _ in range(3))
        from comfyui_sparseflow.sparseflow.reference import reference_attention

        one = ulysses_attention(q, k, v, p, heads=8, placement=placement_for(p, 1, True), backend="reference")
        assert torch.equal(one, reference_attention(q, k, v, p, heads=8)), "a world of one is the plain call"
    finally:
        dist.destroy_process_group()
