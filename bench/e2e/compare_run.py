"""The `compare` configuration of bench/e2e_comfy.py: the SparseFlow Compare node's sampling and report, timed."""

from __future__ import annotations

import logging
import time
import traceback

import torch

from .timing import sync

log = logging.getLogger("sparseflow.bench.e2e")

__all__ = ["run_compare"]


def run_compare(bench, row: dict) -> dict:
    """The Compare node's sampling and report (nodes/compare.py), timed as a whole and per part."""
    from comfyui_sparseflow.nodes import compare as sf_compare

    a = bench.args
    try:
        patched = bench.sf_patch.apply_sparseflow(bench.model.clone(), backend=bench.backend)
        latent = {"samples": bench.latent}

        def pair(steps: int):
            return sf_compare.sample_pair(patched, bench.positive, bench.negative, latent, seed=a.seed, steps=steps,
                                          cfg=a.cfg, sampler_name=a.sampler, scheduler=a.scheduler)

        if a.warmup_steps:
            sync(bench.cuda)
            tw = time.perf_counter()
            pair(a.warmup_steps)
            sync(bench.cuda)
            row["warmup_s"] = time.perf_counter() - tw
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats()
        sync(bench.cuda)
        t0 = time.perf_counter()
        result = pair(a.steps)
        t1 = time.perf_counter()
        comparison, _, report = sf_compare.compare_results(result.patched, result.dense, times=result.times,
                                                           run_summary=result.run_summary)
        total = time.perf_counter() - t0
        row.update(status="ok", total_s=total, sampling_s=t1 - t0, report_s=total - (t1 - t0),
                   patched_s=result.times.patched_s, dense_s=result.times.dense_s,
                   compare_speedup=result.times.speedup, psnr_latent=comparison.latent.psnr_overall,
                   ssim_latent=comparison.latent.ssim_overall, report_head=report.split("\n")[:4],
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if bench.cuda else None,
                   finite=bool(torch.isfinite(result.patched).all() and torch.isfinite(result.dense).all()))
        if bench.reference_latent is not None:  # the Compare node's dense run against the `default` run
            ref = bench.reference_latent
            row["dense_rel_err_vs_default"] = float((result.dense.float() - ref).norm() / ref.norm())
        done = {r["config"]: r for r in bench.results if r.get("status") == "ok"}
        if "default" in done and "sparseflow" in done:
            both = done["default"]["total_s"] + done["sparseflow"]["total_s"]
            row["vs_default_plus_sparseflow"] = total / both
            row["minus_sparseflow_vs_default"] = ((total - done["sparseflow"]["total_s"])
                                                  / done["default"]["total_s"])
        if bench.default_peak and row["peak_gib"] is not None:
            row["peak_vs_default_pct"] = 100.0 * (row["peak_gib"] / bench.default_peak - 1.0)
    except Exception as e:  # noqa: BLE001 - one failing configuration must not stop the others
        row.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        log.error("compare failed: %s", row["error"])
    bench.results.append(row)
    log.info("compare: %s", {k: v for k, v in row.items() if k not in ("traceback",)})
    return row
