"""`--profile` of bench/e2e_comfy.py: one sampler step of a configuration under torch.profiler."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DeviceTimeline", "device_timeline", "kernel_family", "profile"]

# Kernel name -> family, first match wins (lower-case substrings).
_FAMILIES = (
    ("sparseflow attention", ("_fused_fwd_kernel",)),
    ("sparseflow pre-pass / quantize", ("_pooled_mean", "_quantize", "_block_mean", "_prepass", "k_mean")),
    ("sparseflow block passes", ("_add_norm", "_norm_rope", "_residual")),
    ("GEMM", ("nvjet", "gemm", "cutlass", "xmma_gemm", "sm90_xmma", "cublas", "_mma")),
    ("SDPA (ComfyUI attention)", ("fmha", "flash", "sdpa", "cudnn_generated")),
    ("copies", ("memcpy", "memset", "copy_kernel", "catarray")),
)


def kernel_family(name: str) -> str:
    """The family a CUDA kernel's name belongs to ("other" when none matches)."""
    low = name.lower()
    for family, keys in _FAMILIES:
        if any(k in low for k in keys):
            return family
    return "other"


@dataclass(frozen=True)
class DeviceTimeline:
    """What the GPU did during one profiled interval: time with at least one kernel running (`busy_ms`), the span
    from the first kernel's start to the last one's end (`span_ms`), the kernel count, and own time per family."""

    busy_ms: float
    span_ms: float
    kernels: int
    by_family_ms: dict[str, float]

    @property
    def idle_ms(self) -> float:
        return self.span_ms - self.busy_ms


def device_timeline(events) -> DeviceTimeline:
    """Union of the device events' intervals (profiler FunctionEvents with device_type CUDA, times in us)."""
    spans = []
    fam: dict[str, float] = {}
    for e in events:
        if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        a, b = float(e.time_range.start), float(e.time_range.end)
        if b <= a:
            continue
        spans.append((a, b))
        f = kernel_family(e.name)
        fam[f] = fam.get(f, 0.0) + (b - a) / 1e3
    if not spans:
        return DeviceTimeline(0.0, 0.0, 0, {})
    spans.sort()
    busy, (cur_a, cur_b) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > cur_b:
            busy += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    busy += cur_b - cur_a
    span = spans[-1][1] - spans[0][0]
    return DeviceTimeline(busy / 1e3, span / 1e3, len(spans), dict(sorted(fam.items(), key=lambda kv: -kv[1])))


def profile(bench, name: str, out: Path, rows: int = 45) -> None:
    """One sampler step (one CFG-batched model call) of `name` under torch.profiler: the GPU's busy and idle time
    over the step, kernel time per family, and the top kernels by their own time, to
    <out>/profile_<model>_<name>.txt. Run after `run(name)`, so compile/autotune is done."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    a = bench.args
    m, _ = bench._patched(name)
    noise = bench.comfy.sample.prepare_noise(bench.latent, a.seed)
    if bench.cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    with torch_profile(activities=acts) as prof:
        t0 = time.perf_counter()
        bench._sample(m, noise, 1)
        if bench.cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3
    key = "self_device_time_total" if bench.cuda else "self_cpu_time_total"
    events = prof.key_averages()
    tl = device_timeline(prof.events())
    head = [f"# one model call of {name} ({bench.bench.name}), sorted by {key}",
            f"# wall {wall_ms:.1f} ms under the profiler; GPU: {tl.kernels} kernels, busy {tl.busy_ms:.1f} ms of a "
            f"{tl.span_ms:.1f} ms span (idle {tl.idle_ms:.1f} ms)"]
    head += [f"#   {fam}: {ms:.1f} ms" for fam, ms in tl.by_family_ms.items()]
    text = "\n".join(head) + "\n" + events.table(sort_by=key, row_limit=rows, max_name_column_width=90)
    (out / f"profile_{bench.bench.name}_{name}.txt").write_text(text)
    print(text[:8000])
    del m
