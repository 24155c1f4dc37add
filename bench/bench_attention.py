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

    python bench/bench_attention.py --shapes wan13b_480p,wan13b_480p_b2 --out $OUT/bench
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import triton
import triton.testing

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO / "tests"), str(_REPO / "bench")]  # the pack loader (as tests load it), peers.py
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.kernels import configs, fused_attention  # noqa: E402
from comfyui_sparseflow.kernels.fused import _kernel as fused_kernel  # noqa: E402
from comfyui_sparseflow.sparseflow import ops  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.masks import pair_counts, structural_block_mask  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan, uniform_plan  # noqa: E402

SHAPES = {  # name: (batch, heads, geometry); D = 128
    "wan13b_480p": (1, 12, Geometry(21, 30, 52)),
    "wan13b_480p_b2": (2, 12, Geometry(21, 30, 52)),
    "wan14b_720p": (1, 40, Geometry(21, 45, 80)),
    "wan22_5b_720p": (1, 24, Geometry(31, 22, 40)),
}
DENSITIES = (0.05, 0.10, 0.20)
WINDOWS = (0, 1, 2)
BLOCK = 128
D = 128


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--verify", "-q", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "uncommitted"
    except Exception:  # noqa: BLE001
        commit = "unknown"
    # the device tool's copy of the tree can carry a stale .git: $SPARSEFLOW_COMMIT, when set, wins
    commit = os.environ.get("SPARSEFLOW_COMMIT") or commit
    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit, "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def bench(fn, rep_ms: float = 300.0) -> tuple[float, float, float]:
    p20, p50, p80 = triton.testing.do_bench(fn, warmup=50, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    return p20, p50, p80


def matmul_peak() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = triton.testing.do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return 2 * 8192 ** 3 / ms / 1e9


def make_inputs(batch: int, heads: int, geometry: Geometry, seed: int = 0):
    """(B, L, H*D) bf16 q, k, v (ComfyUI's layout, for SparseFlow) and (B, H, L, D) contiguous copies (peers)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    comfy = [torch.randn(batch, geometry.length, heads * D, device="cuda", generator=g, dtype=torch.bfloat16)
             for _ in range(3)]
    bhld = [x.view(batch, geometry.length, heads, D).transpose(1, 2).contiguous() for x in comfy]
    return comfy, bhld


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
              tiers: list[str | None]) -> None:
    batch, heads, g = SHAPES[name]
    length, n = g.length, math.ceil(g.length / BLOCK)
    comfy, bhld = make_inputs(batch, heads, g)
    dense_flops = 4 * batch * heads * length * length * D
    base = {}

    def want(p: str) -> bool:
        return providers is None or p in providers

    def sf_record(provider: str, case: str, fn, flops: float, density: float, note: str = "") -> None:
        """A SparseFlow row once per launch tier ($SPARSEFLOW_LAUNCH_TIER; None: the device's own tier)."""
        for tier in tiers:
            if tier is None:
                os.environ.pop(configs.TIER_ENV, None)
                record(provider, case, fn, flops, density, note)
            else:
                os.environ[configs.TIER_ENV] = tier
                record(f"{provider}[{tier}]", case, fn, flops, density, note)
        os.environ.pop(configs.TIER_ENV, None)

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
    sf_record("sparseflow-triton", "dense", lambda: ops.attention(*comfy, all_dense, heads=heads, backend="triton"),
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
                  lambda: fused_attention(*comfy, plan, heads=heads, lut=lut, _lut_only=True),
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
        sf_record("sparseflow-triton", case, lambda: ops.attention(*comfy, plan, heads=heads, backend="triton"),
                  flops, real, note="whole op")
        sf_record("sparseflow-kernel", case, lambda: fused_attention(*comfy, plan, heads=heads), flops, real)
        if peers is not None:
            mask = structural_block_mask(g, BLOCK, w, (0,), "cuda").expand(batch, heads, n, n).contiguous()
            for p in ("flex", "sla_triton", "vsa_triton"):
                if want(p) and reasons.get(p) is None:
                    record(p, case, lambda: peers.PROVIDERS[p](*bhld, mask), flops, real, note="same structural mask",
                           lazy=True)

    # -- all-linear routing
    lin = uniform_plan(g, heads, route=LINEAR, block=BLOCK)
    per_head, _ = pair_counts(lin)
    sf_record("sparseflow-triton", "all-linear", lambda: ops.attention(*comfy, lin, heads=heads, backend="triton"),
           4 * D * BLOCK * BLOCK * batch * sum(per_head), sum(per_head) / (heads * n * n), note="whole op")


# -- side-by-side sweep of every tier's launch configs (docs/performance.md, "GPUs users own") ------------------


def sweep_entries(tiers: list[str]) -> list[tuple[str, tuple[int, int, int, int], bool]]:
    """(tier, config, descriptors) for each block-128 config of each tier with the tier's K/V load path, and a
    tier that takes descriptors once more without them (what the copy engine adds, apart from the tile sizes)."""
    out = []
    for name in tiers:
        tier = configs.TIERS[configs.TIER_NAMES.index(name)]
        for tma in (True, False) if tier.descriptors else (False,):
            for c in tier.block128:
                out.append((name if tma == tier.descriptors else f"{name}-pointers",
                            (c.block_m, c.block_n, c.warps, c.stages), tma))
    return out


def sweep(shapes: list[str], peak: float, env: dict, tiers: list[str], only: set | None = None) -> list:
    """Every (tier, config) of `sweep_entries` on: all-dense kernel (1.3B only), window 0 + anchor 0 (compensation
    and a third of heads linear, as the default schedule's first steps), random 10 % LUT-only.

    Each output is compared with the first entry's output on the same case: rel. error must stay < 1e-2.
    Also times SDPA default and the op's all-dense dispatch (torch SDPA) on the same inputs.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for name in shapes:
        batch, heads, g = SHAPES[name]
        n = math.ceil(g.length / BLOCK)
        comfy, bhld = make_inputs(batch, heads, g)
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]

        def sdpa():
            with sdpa_kernel(order, set_priority=True):
                return torch.nn.functional.scaled_dot_product_attention(*bhld)

        dense_flops = 4 * batch * heads * g.length ** 2 * D
        all_dense = uniform_plan(g, heads, route=DENSE, block=BLOCK)
        base_ms = bench(sdpa, 200.0)[1]
        op_ms = bench(lambda: ops.attention(*comfy, all_dense, heads=heads, backend="triton"), 200.0)[1]
        for prov, ms in (("sdpa_default", base_ms), ("op all-dense (SDPA dispatch)", op_ms)):
            tf = dense_flops / ms / 1e9
            row = {"shape": name, "case": "dense", "tier": prov, "config": "", "ms": round(ms, 3),
                   "tflops": round(tf, 1), "pct_peak": round(100 * tf / peak, 1), "vs_sdpa": round(base_ms / ms, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        w0 = AttentionPlan(g, tuple(LINEAR if h % 3 == 2 else SPARSE for h in range(heads)), (0,) * heads,
                           (0,) * heads, anchors=(0,), compensation=True, block=BLOCK)
        pick = torch.rand(batch, heads, n, n, generator=torch.Generator().manual_seed(1)).argsort(-1)
        lut = torch.sort(pick[..., :round(0.1 * n)], -1).values.to(torch.int32).cuda()  # random 10 %, ascending
        rplan = AttentionPlan(g, (SPARSE,) * heads, (0,) * heads, (lut.shape[-1],) * heads, anchors=(), block=BLOCK)
        cases = [("window0+anchor0", w0, None, 4 * D * BLOCK * BLOCK * batch * sum(pair_counts(w0)[0])),
                 ("random10", rplan, lut, 4 * D * BLOCK * BLOCK * int(lut.numel()))]
        if g.length < 50000:
            cases.insert(0, ("dense", all_dense, None, dense_flops))
        cases = [c for c in cases if only is None or c[0] in only]
        firsts: dict = {}
        for case, plan, lut_c, flops in cases:
            for tier, cfg, tma in sweep_entries(tiers):
                row = {"shape": name, "case": case, "tier": tier, "config": "/".join(map(str, cfg)), "tma": tma}

                def fn(plan=plan, lut_c=lut_c, cfg=cfg, tma=tma):
                    return fused_attention(*comfy, plan, heads=heads, lut=lut_c, _lut_only=lut_c is not None,
                                           _descriptors=tma, _config=cfg)
                try:
                    t0 = time.perf_counter()
                    out = fn()
                    torch.cuda.synchronize()
                    row["first_call_s"] = round(time.perf_counter() - t0, 1)
                    ref = firsts.setdefault(case, out)
                    row["rel_vs_base"] = float((out.float() - ref.float()).norm() / ref.float().norm())
                    del out
                    ms = bench(fn, 150.0)[1]
                    tf = flops / ms / 1e9
                    row.update(ms=round(ms, 3), tflops=round(tf, 1), pct_peak=round(100 * tf / peak, 1),
                               vs_sdpa=round(base_ms / ms, 2))
                except Exception as e:  # noqa: BLE001 - a config that does not compile is a row with its reason
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
        firsts.clear()
        comfy = bhld = None  # free the inputs before the next shape
        torch.cuda.empty_cache()
    return rows


def sweep_table(rows: list) -> str:
    out = ["| shape | case | tier | config BM/BN/warps/stages | ms | TFLOP/s | % peak | vs SDPA | rel. vs base |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['shape']} | {r['case']} | {r['tier']} | {r['config']} | {r['error'][:80]} | | | | |")
        else:
            rel = f"{r['rel_vs_base']:.1e}" if "rel_vs_base" in r else ""
            out.append(f"| {r['shape']} | {r['case']} | {r['tier']} | {r['config']} | {r['ms']:.3f} | "
                       f"{r['tflops']:.0f} | {r['pct_peak']:.0f} | {r['vs_sdpa']} | {rel} |")
    return "\n".join(out)


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
    ap.add_argument("--sweep", action="store_true", help="time every tier's configs side by side instead")
    ap.add_argument("--cases", default="", help="--sweep: comma-separated cases (dense, window0+anchor0, random10)")
    ap.add_argument("--tiers", default="", help="comma-separated launch tiers (kernels/configs.py): --sweep times "
                    "their configs; the bench runs each SparseFlow row once per tier (default: the device's own)")
    a = ap.parse_args()
    env = environment()
    if a.sweep:
        peak = matmul_peak()
        print(f"sweep: bf16 matmul 8192^3 peak {peak:.1f} TFLOP/s on {env['gpu']}; {env}", flush=True)
        rows = sweep(a.shapes.split(","), peak, env, a.tiers.split(",") if a.tiers else ["hopper", "a100", "consumer"],
                     set(a.cases.split(",")) if a.cases else None)
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
    rows: list = []
    providers = set(a.providers.split(",")) if a.providers else None
    tiers = a.tiers.split(",") if a.tiers else [None]
    for name in a.shapes.split(","):
        run_shape(name, peak, peers, reasons, providers, rows, env, tiers)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps({"env": env, "peak_tflops": peak, "rows": rows}, indent=1))
    md = table(rows)
    Path(a.out + ".md").write_text(md + "\n")
    print(f"\nbf16 matmul peak {peak:.1f} TFLOP/s; {env}\n{md}")


if __name__ == "__main__":
    main()
