"""Side-by-side sweep of every launch tier's configs of the fused kernel (docs/performance.md, "GPUs users own").

Run through `bench/bench_attention.py --sweep`; the setup (shapes, timing, inputs) is bench/bench_setup.py's.
"""

from __future__ import annotations

import json
import math
import time

import torch
from bench_setup import BLOCK, SHAPES, D, bench, make_inputs
from comfyui_sparseflow.kernels import configs, fused_attention
from comfyui_sparseflow.sparseflow import ops
from comfyui_sparseflow.sparseflow.masks import pair_counts
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan, uniform_plan

__all__ = ["sweep", "sweep_entries", "sweep_table"]

def parse_extra(text: str) -> dict[str, list[tuple[int, int, int, int]]]:
    """`--extra-configs` "consumer:128/32/8/3,a100:128/64/8/4" -> {tier: [(BLOCK_M, BLOCK_N, warps, stages)]}:
    candidates timed beside a tier's own configs (the sweep forces each; nothing here changes kernels/configs.py)."""
    out: dict[str, list] = {}
    for item in filter(None, text.split(",")):
        tier, _, cfg = item.partition(":")
        if tier not in configs.TIER_NAMES or len(cfg.split("/")) != 4:
            raise ValueError(f"--extra-configs items are tier:BM/BN/warps/stages with a tier of {configs.TIER_NAMES}, "
                             f"got {item!r}")
        out.setdefault(tier, []).append(tuple(int(x) for x in cfg.split("/")))
    return out


def sweep_entries(tiers: list[str], extra: dict | None = None) -> list[tuple[str, tuple[int, int, int, int], bool]]:
    """(tier, config, descriptors) for each block-128 config of each tier with the tier's K/V load path, and a
    tier that takes descriptors once more without them (what the copy engine adds, apart from the tile sizes);
    `extra` candidates (`parse_extra`) follow their tier's own configs, named "<tier>+"."""
    out = []
    for name in tiers:
        tier = configs.TIERS[configs.TIER_NAMES.index(name)]
        for tma in (True, False) if tier.descriptors else (False,):
            label = name if tma == tier.descriptors else f"{name}-pointers"
            own = [(c.block_m, c.block_n, c.warps, c.stages) for c in tier.block128]
            out += [(label, cfg, tma) for cfg in own]
            if tma == tier.descriptors:
                out += [(f"{name}+", cfg, tma) for cfg in (extra or {}).get(name, []) if cfg not in own]
    return out


def sweep(shapes: list[str], peak: float, env: dict, tiers: list[str], only: set | None = None,
          extra: dict | None = None, precision: str = "fp16") -> list:
    """Every (tier, config) of `sweep_entries` on: all-dense kernel (1.3B only), window 0 + anchor 0 (compensation
    and a third of heads linear, as the default schedule's first steps), the same with every head sparse
    ("window0-sparse": the kernel bench's window0+anchor0 case, the one issue 16's targets name, without pooled
    compensation; "+comp": with it, as the default schedule runs), random 10 % LUT-only; at `precision` (plans' Q·K
    precision, spec §8).

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
        w0s = uniform_plan(g, heads, route=SPARSE, window=0, anchors=(0,), block=BLOCK)
        w0c = uniform_plan(g, heads, route=SPARSE, window=0, anchors=(0,), compensation=True, block=BLOCK)
        cases = [("window0+anchor0", w0, None, 4 * D * BLOCK * BLOCK * batch * sum(pair_counts(w0)[0])),
                 ("window0-sparse", w0s, None, 4 * D * BLOCK * BLOCK * batch * sum(pair_counts(w0s)[0])),
                 ("window0-sparse+comp", w0c, None, 4 * D * BLOCK * BLOCK * batch * sum(pair_counts(w0c)[0])),
                 ("random10", rplan, lut, 4 * D * BLOCK * BLOCK * int(lut.numel()))]
        if g.length < 50000:
            cases.insert(0, ("dense", all_dense, None, dense_flops))
        cases = [(c, p.with_precision(precision), lu, f) for c, p, lu, f in cases if only is None or c in only]
        firsts: dict = {}
        for case, plan, lut_c, flops in cases:
            for tier, cfg, tma in sweep_entries(tiers, extra):
                row = {"shape": name, "case": case, "tier": tier, "config": "/".join(map(str, cfg)), "tma": tma,
                       "precision": precision}

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
        tier = r["tier"] + (f"[{r['precision']}]" if r.get("precision", "fp16") != "fp16" else "")
        if "error" in r:
            out.append(f"| {r['shape']} | {r['case']} | {tier} | {r['config']} | {r['error'][:80]} | | | | |")
        else:
            rel = f"{r['rel_vs_base']:.1e}" if "rel_vs_base" in r else ""
            out.append(f"| {r['shape']} | {r['case']} | {tier} | {r['config']} | {r['ms']:.3f} | "
                       f"{r['tflops']:.0f} | {r['pct_peak']:.0f} | {r['vs_sdpa']} | {rel} |")
    return "\n".join(out)
