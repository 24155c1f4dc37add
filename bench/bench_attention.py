"""GPU benchmark of SparseFlow attention against SDPA and the block-sparse peers on Wan shapes.

One setup factory (`make_inputs`), one providers table, JSON rows that carry the environment (Liger's
bench columns, Triton 06 `perf_report`). Every row: ms p20/p50/p80 (triton.testing.do_bench quantiles),
TFLOP/s on the computed blocks, FLOPs = 4 * B * D * block^2 * (computed (query block, key block) pairs
summed over heads) (dense: 4 * B * H * L^2 * D), % of the bf16 matmul peak measured in the same run
(8192^3 torch.matmul), and speed-up vs SDPA default. Inputs are >= 100 MB per tensor (more than L2), so
repeated calls over one buffer do not run from cache.

Rows per shape:
- dense: SDPA default (ComfyUI's), the dense peers, SparseFlow all-dense routing;
- random block masks at 5/10/20 % (peers.random_block_mask, the same mask for every block-sparse peer):
  SparseFlow runs its kernel in LUT-only mode (`fused_attention(..., _lut_only=True)`: sparse heads walk
  exactly the mask's blocks, given as a top-k LUT; no structural blocks), plus sol_attn at that ratio;
- the default schedule's real masks (window 0/1/2 + anchor frame 0, all heads sparse): SparseFlow whole
  op (`sparseflow.ops.attention`, pre-pass included) and kernel alone, flex/SLA/VSA given the same
  structural block mask;
- all-linear routing (SparseFlow), to compare a linear head with a dense head.

`--precision fp16,int8-qk,fp8` runs every SparseFlow row once per precision (spec §8; provider suffix
`[int8-qk]`, `[fp8]`), and `--tiers` once per launch tier, so one command times fp16 against int8-qk and fp8 with the
device's configs and the 99 KiB consumer set. FLOPs and % peak stay those of the bf16 formula (the int8 matmul peak,
torch._int_mm 8192^3, and the e4m3 one, torch._scaled_mm 8192^3, are printed and kept in the JSON as
`int8_peak_tops` and `fp8_peak_tflops`).

    python bench/bench_attention.py --shapes wan13b_480p,wan13b_480p_b2 --out $OUT/bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from bench_setup import BLOCK, SHAPES, D, bench, environment, fp8_peak, int8_peak, make_inputs, matmul_peak
from comfyui_sparseflow.kernels import configs, fused_attention
from comfyui_sparseflow.kernels.fused import _kernel as fused_kernel
from comfyui_sparseflow.sparseflow import ops
from comfyui_sparseflow.sparseflow.masks import pair_counts, structural_block_mask
from comfyui_sparseflow.sparseflow.plan import DENSE, FP8, FP16, LINEAR, PRECISIONS, SPARSE, AttentionPlan, uniform_plan

DENSITIES = (0.05, 0.10, 0.20)
WINDOWS = (0, 1, 2)


def block_mask_lut(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) bool with equal row counts -> (B, H, N, K) int32 ascending block indices."""
    k = int(mask[0, 0, 0].sum())
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[..., :k]
    return torch.sort(order, dim=-1).values.to(torch.int32).contiguous()


def load_peers():
    try:
        import peers
        return peers, peers.available(), None
    except Exception as e:  # noqa: BLE001 - the bench runs without peers and says why
        return None, {}, f"{type(e).__name__}: {e}"


def run_shape(name: str, peak: float, peers, reasons: dict, providers: set | None, rows: list, env: dict,
              tiers: list[str | None], precisions: tuple[str, ...] = (FP16,)) -> None:
    batch, heads, g = SHAPES[name]
    length, n = g.length, math.ceil(g.length / BLOCK)
    comfy, bhld = make_inputs(batch, heads, g)
    dense_flops = 4 * batch * heads * length * length * D
    base = {}

    def want(p: str) -> bool:
        return providers is None or p in providers

    current, variants = {"precision": FP16}, {}

    def at(plan: AttentionPlan) -> AttentionPlan:
        """`plan` at the precision being timed (made once per plan and precision: no host cost in the timing)."""
        key = (id(plan), current["precision"])
        if key not in variants:
            variants[key] = (plan, plan.with_precision(current["precision"]))  # keeps plan alive: ids stay unique
        return variants[key][1]

    def sf_record(provider: str, case: str, fn, flops: float, density: float, note: str = "") -> None:
        """A SparseFlow row once per precision and launch tier ($SPARSEFLOW_LAUNCH_TIER; None: the device's own);
        fn builds its plans through `at`."""
        for precision in precisions:
            current["precision"] = precision
            name = provider if precision == FP16 else f"{provider}[{precision}]"
            for tier in tiers:
                if tier is None:
                    os.environ.pop(configs.TIER_ENV, None)
                    record(name, case, fn, flops, density, note)
                else:
                    os.environ[configs.TIER_ENV] = tier
                    record(f"{name}[{tier}]", case, fn, flops, density, note)
        os.environ.pop(configs.TIER_ENV, None)
        current["precision"] = FP16

    def record(provider: str, case: str, fn, flops: float, density: float, note: str = "", lazy: bool = False) -> None:
        """Time fn (or, with lazy, the closure fn() makes: peers fail at setup too) into one row."""
        row = {"shape": name, "B": batch, "H": heads, "L": length, "D": D, "case": case, "provider": provider,
               "density": round(density, 4), **env, "peak_tflops": round(peak, 1), "note": note}
        try:
            if lazy:
                fn = fn()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            row["first_call_s"] = round(time.perf_counter() - t0, 2)
            p20, p50, p80 = bench(fn)
            tflops = flops / p50 / 1e9
            row.update(ms_p20=round(p20, 4), ms_p50=round(p50, 4), ms_p80=round(p80, 4), tflops=round(tflops, 1),
                       pct_peak=round(100 * tflops / peak, 1))
            if provider == "sdpa_default" and case == "dense":
                base["sdpa"] = p50
            if "sdpa" in base:
                row["speedup_vs_sdpa"] = round(base["sdpa"] / p50, 2)
            if provider.startswith("sparseflow"):
                row["precision"] = current["precision"]
                row["config"] = str(getattr(fused_kernel(), "best_config", "fixed"))
                row["tier"] = os.environ.get(configs.TIER_ENV, "device")
        except Exception as e:  # noqa: BLE001 - a failing provider is a row with its reason
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()

    # -- dense
    if peers is not None and reasons.get("sdpa_default") is None:
        record("sdpa_default", "dense", lambda: peers.PROVIDERS["sdpa_default"](*bhld), dense_flops, 1.0, lazy=True)
    else:
        sd = torch.nn.functional.scaled_dot_product_attention
        record("sdpa_default", "dense", lambda: sd(*bhld), dense_flops, 1.0, note="torch SDPA (peers.py missing)")
    for p in ("sdpa_cudnn", "sdpa_flash", "sage"):
        if peers is not None and want(p):
            if reasons.get(p) is None:
                record(p, "dense", lambda: peers.PROVIDERS[p](*bhld), dense_flops, 1.0, lazy=True)
            else:
                rows.append({"shape": name, "case": "dense", "provider": p, "error": f"unavailable: {reasons[p]}"})
    all_dense = uniform_plan(g, heads, route=DENSE, block=BLOCK)
    sf_record("sparseflow-triton", "dense", lambda: ops.attention(*comfy, at(all_dense), heads=heads, backend="triton"),
           dense_flops, 1.0, note="all heads routed dense, whole op")

    # -- random block masks, the same for every block-sparse peer
    for density in DENSITIES:
        mask = peers.random_block_mask(batch, heads, n, n, density, seed=1, device="cuda") if peers else None
        if mask is None:
            break
        pairs = int(mask.sum())
        flops = 4 * D * BLOCK * BLOCK * pairs
        case = f"random{int(density * 100)}"
        real = pairs / (batch * heads * n * n)
        lut = block_mask_lut(mask)
        plan = AttentionPlan(g, (SPARSE,) * heads, (0,) * heads, (lut.shape[-1],) * heads, anchors=(), block=BLOCK)
        sf_record("sparseflow-kernel", case,
                  lambda: fused_attention(*comfy, at(plan), heads=heads, lut=lut, _lut_only=True),
               flops, real, note="LUT-only mode: exactly the mask's blocks")
        for p in ("flex", "sla_triton", "vsa_triton"):
            if want(p):
                if reasons.get(p) is None:
                    record(p, case, lambda: peers.PROVIDERS[p](*bhld, mask), flops, real, lazy=True)
                else:
                    rows.append({"shape": name, "case": case, "provider": p, "error": f"unavailable: {reasons[p]}"})
        if want("sol_attn_topk") and reasons.get("sol_attn_topk") is None:
            record("sol_attn_topk", case, lambda: peers.PROVIDERS["sol_attn_topk"](*bhld, mask), flops, real,
                   note="chooses its own blocks at this ratio (selection included)", lazy=True)

    # -- the default schedule's real masks: window w + anchor frame 0, every head sparse
    for w in WINDOWS:
        plan = uniform_plan(g, heads, route=SPARSE, window=w, anchors=(0,), block=BLOCK)
        per_head, _ = pair_counts(plan)
        pairs = batch * sum(per_head)
        flops = 4 * D * BLOCK * BLOCK * pairs
        real = sum(per_head) / (heads * n * n)
        case = f"window{w}+anchor0"
        sf_record("sparseflow-triton", case, lambda: ops.attention(*comfy, at(plan), heads=heads, backend="triton"),
                  flops, real, note="whole op")
        sf_record("sparseflow-kernel", case, lambda: fused_attention(*comfy, at(plan), heads=heads), flops, real)
        if peers is not None:
            mask = structural_block_mask(g, BLOCK, w, (0,), "cuda").expand(batch, heads, n, n).contiguous()
            for p in ("flex", "sla_triton", "vsa_triton"):
                if want(p) and reasons.get(p) is None:
                    record(p, case, lambda: peers.PROVIDERS[p](*bhld, mask), flops, real, note="same structural mask",
                           lazy=True)

    # -- all-linear routing
    lin = uniform_plan(g, heads, route=LINEAR, block=BLOCK)
    per_head, _ = pair_counts(lin)
    sf_record("sparseflow-triton", "all-linear", lambda: ops.attention(*comfy, at(lin), heads=heads, backend="triton"),
           4 * D * BLOCK * BLOCK * batch * sum(per_head), sum(per_head) / (heads * n * n), note="whole op")


def table(rows: list) -> str:
    head = "| shape | case | provider | density | ms p20 / p50 / p80 | TFLOP/s | % peak | vs SDPA | note |"
    out = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['shape']} | {r['case']} | {r['provider']} | | | | | | {r['error'][:90]} |")
            continue
        out.append(f"| {r['shape']} | {r['case']} | {r['provider']} | {r['density']:.3f} | "
                   f"{r['ms_p20']:.3f} / {r['ms_p50']:.3f} / {r['ms_p80']:.3f} | {r['tflops']:.0f} | "
                   f"{r['pct_peak']:.0f} | {r.get('speedup_vs_sdpa', '')} | {r.get('note', '')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--providers", default="", help="comma-separated peer names to time (default: all)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out") + "/bench")
    ap.add_argument("--precision", default=FP16, help=f"comma-separated Q·K precisions of the SparseFlow rows, of "
                    f"{', '.join(PRECISIONS)} (default {FP16})")
    ap.add_argument("--sweep", action="store_true", help="time every tier's configs side by side instead")
    ap.add_argument("--cases", default="", help="--sweep: comma-separated cases (dense, window0+anchor0, random10)")
    ap.add_argument("--extra-configs", default="", help="--sweep: candidates timed beside the tiers' own configs, "
                    "tier:BM/BN/warps/stages,... (e.g. consumer:128/32/8/3)")
    ap.add_argument("--tiers", default="", help="comma-separated launch tiers (kernels/configs.py): --sweep times "
                    "their configs; the bench runs each SparseFlow row once per tier (default: the device's own)")
    a = ap.parse_args()
    precisions = tuple(a.precision.split(","))
    if any(p not in PRECISIONS for p in precisions):
        ap.error(f"--precision takes {', '.join(PRECISIONS)}; got {a.precision!r}")
    env = environment()
    if a.sweep:
        from bench_sweep import parse_extra, sweep, sweep_table

        if len(precisions) != 1:
            ap.error("--sweep times one --precision")
        peak = matmul_peak()
        print(f"sweep: bf16 matmul 8192^3 peak {peak:.1f} TFLOP/s on {env['gpu']}; {env}", flush=True)
        rows = sweep(a.shapes.split(","), peak, env, a.tiers.split(",") if a.tiers else ["hopper", "a100", "consumer"],
                     set(a.cases.split(",")) if a.cases else None, parse_extra(a.extra_configs), precisions[0])
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out + "_sweep.json").write_text(json.dumps({"env": env, "peak_tflops": peak, "rows": rows}, indent=1))
        md = sweep_table(rows)
        Path(a.out + "_sweep.md").write_text(md + "\n")
        print(f"\nbf16 matmul peak {peak:.1f} TFLOP/s\n{md}")
        return
    peers, reasons, peer_error = load_peers()
    if peer_error:
        print(f"bench: peers unavailable ({peer_error}); timing SparseFlow and torch SDPA only", flush=True)
    else:
        print("bench: peer availability " + json.dumps(reasons), flush=True)
    peak = matmul_peak()
    print(f"bench: bf16 matmul 8192^3 peak {peak:.1f} TFLOP/s on {env['gpu']}", flush=True)
    ipeak = int8_peak() if precisions != (FP16,) else 0.0
    if ipeak:
        print(f"bench: int8 matmul 8192^3 peak {ipeak:.1f} TOP/s (torch._int_mm)", flush=True)
    fpeak = fp8_peak() if FP8 in precisions else 0.0
    if fpeak:
        print(f"bench: e4m3 matmul 8192^3 peak {fpeak:.1f} TFLOP/s (torch._scaled_mm)", flush=True)
    rows: list = []
    providers = set(a.providers.split(",")) if a.providers else None
    tiers = a.tiers.split(",") if a.tiers else [None]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for name in a.shapes.split(","):
        run_shape(name, peak, peers, reasons, providers, rows, env, tiers, precisions)
        # after every shape: a run cut by its time limit keeps the shapes it finished
        Path(a.out + ".json").write_text(json.dumps({"env": env, "peak_tflops": peak,
                                                     "int8_peak_tops": round(ipeak, 1),
                                                     "fp8_peak_tflops": round(fpeak, 1), "rows": rows}, indent=1))
    md = table(rows)
    Path(a.out + ".md").write_text(md + "\n")
    print(f"\nbf16 matmul peak {peak:.1f} TFLOP/s; {env}\n{md}")


if __name__ == "__main__":
    main()
