"""`--memory-peak` of bench/e2e_comfy.py: what one sampler step of a configuration holds at its peak, by the code that
allocated it.

The step runs under `torch.cuda.memory._record_memory_history` (Python stacks); the trace's allocations and frees
are replayed to the moment the allocated bytes are highest, and what is alive then (allocated during the step) is
summed per allocation site: the innermost frames outside torch, e.g. `fused_block.py:107 ffn_forward <
fused_block.py:110 feed_forward`. Memory held before the step (weights, the latent, caches) is the baseline.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

__all__ = ["memory_peak", "peak_sites"]


def _site(frames: list[dict], depth: int = 3) -> str:
    """The innermost `depth` frames outside torch and this file, as `file.py:line name < ...`."""
    own = [f for f in frames if "/torch/" not in f.get("filename", "") and "memory_peak" not in f.get("filename", "")
           and f.get("filename", "").endswith(".py")]
    return " < ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in own[:depth]) or "(no frame)"


def peak_sites(trace: list[dict]) -> tuple[int, list[tuple[str, int, int]]]:
    """(bytes allocated at the peak over the trace's own allocations, [(site, bytes, blocks), ...] alive then, largest
    first). Counts `alloc` and `free_completed` events, the allocator's allocated-bytes accounting."""
    cur = best = best_at = 0
    for i, ev in enumerate(trace):
        if ev["action"] == "alloc":
            cur += ev["size"]
            if cur > best:
                best, best_at = cur, i
        elif ev["action"] == "free_completed":
            cur -= ev["size"]
    live: dict[int, dict] = {}
    for ev in trace[:best_at + 1]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
        elif ev["action"] == "free_completed":
            live.pop(ev["addr"], None)
    sites: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ev in live.values():
        s = sites[_site(ev.get("frames", []))]
        s[0] += ev["size"]
        s[1] += 1
    return best, sorted(((k, v[0], v[1]) for k, v in sites.items()), key=lambda t: -t[1])


def memory_peak(bench, name: str, out: Path, tag: str = "", rows: int = 14) -> dict | None:
    """One sampler step (one CFG-batched model call) of `name` with the allocation history on: the sites alive at
    the peak to <out>/memory_<model><tag>_<name>.txt, and a summary (GiB) into that configuration's result row. Run
    after `run(name)`. None on the CPU."""
    if not bench.cuda:
        print(f"memory-peak {name}: no CUDA device, skipped")
        return None
    m, _ = bench._patched(name)
    noise = bench.comfy.sample.prepare_noise(bench.latent, bench.args.seed)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, context="alloc", stacks="python")
    try:
        bench._sample(m, noise, 1)
        torch.cuda.synchronize()
        snap = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    peak = torch.cuda.max_memory_allocated()
    trace = snap["device_traces"][torch.cuda.current_device()]
    step_peak, sites = peak_sites(trace)
    gib = 2.0**30
    summary = {"baseline_gib": round(base / gib, 3), "peak_gib": round(peak / gib, 3),
               "step_peak_gib": round(step_peak / gib, 3), "trace_events": len(trace),
               "sites": [[s, round(b / gib, 3), n] for s, b, n in sites[:rows]]}
    lines = [f"# {name} ({bench.bench.name}): one sampler step; held before it {summary['baseline_gib']} GiB, "
             f"peak {summary['peak_gib']} GiB (max_memory_allocated), allocated during the step at its peak "
             f"{summary['step_peak_gib']} GiB; alive then, by allocation site:"]
    lines += [f"{b / gib:8.3f} GiB {n:4d} x  {s}" for s, b, n in sites[:rows]]
    text = "\n".join(lines) + "\n"
    (out / f"memory_{bench.bench.name}{tag}_{name}.txt").write_text(text)
    print(text)
    for row in bench.results:
        if row.get("config") == name:
            row["memory_at_peak"] = summary
    del m
    return summary
