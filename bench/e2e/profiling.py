"""`--profile` of bench/e2e_comfy.py: one sampler step of a configuration under torch.profiler."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["profile"]


def profile(bench, name: str, out: Path, rows: int = 45) -> None:
    """One sampler step (one CFG-batched model call) of `name` under torch.profiler: the top kernels by their
    own time, to <out>/profile_<model>_<name>.txt. Run after `run(name)`, so compile/autotune is done."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    a = bench.args
    m, _ = bench._patched(name)
    noise = bench.comfy.sample.prepare_noise(bench.latent, a.seed)
    if bench.cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    with torch_profile(activities=acts) as prof:
        bench._sample(m, noise, 1)
        if bench.cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if bench.cuda else "self_cpu_time_total"
    events = prof.key_averages()
    total_ms = sum(getattr(e, key, 0) for e in events) / 1e3
    text = (f"# one model call of {name} ({bench.bench.name}), sorted by {key}; sum {total_ms:.1f} ms\n"
            + events.table(sort_by=key, row_limit=rows, max_name_column_width=90))
    (out / f"profile_{bench.bench.name}_{name}.txt").write_text(text)
    print(text[:8000])
    del m
