"""Sequence-parallel bench: SparseFlow inside Ulysses (yunchang's all-to-all) at degree P, one torchrun per P.

Times the self-attention of one denoising step of a Wan model: every layer's call through
`sparseflow.ulysses.ulysses_attention` (all-to-all of q/k/v, the rank's heads, reverse all-to-all), on this rank's
sequence shard, for three modes:
- `dense`: all heads dense (SDPA through `ops.attention`, ComfyUI's priority), the default ComfyUI attention;
- `sparseflow`: the default schedule (`balanced`) and a routing (`heuristic` preset, or `mixed`: the first H/5
  heads of every layer dense, as a calibrated map can cluster them), contiguous head placement (yunchang's);
- `sparseflow_balanced`: the same with routing-aware head placement (`heads_placement.placement_for`).
"planned max/mean" is the step's attention cost (spec §6 pairs, `heads_placement.head_costs`) on the busiest
rank over the mean rank, summed over the step's calls: what balancing lowers. A step's time is the sum over layers
of the median call time (wall clock between barriers, the slowest rank's), averaged over the
schedule's steps (each distinct (layer plan, step parameters) is timed once and weighted by its count). Only
the attention is timed, not the whole DiT (the projections, FFN and norms split over ranks without
communication). Peak memory is `torch.cuda.max_memory_allocated` per rank. One JSON file per (model, P):

    torchrun --standalone --nproc-per-node 4 bench/bench_ulysses.py --model wan14b_720p --out $OUT/ulysses
    python3 bench/bench_ulysses.py --summarize $OUT/ulysses     # scaling table over every P found
    python3 bench/bench_ulysses.py --planned                    # CPU: planned rank-cost balance, no timing

`bash bench/run_ulysses_gpu.sh` runs P = 1, 2, 4, 8 (as many as there are GPUs) for both models, then the
summary. `--tiny` runs a small shape on CPU with gloo and the reference backend (tests/test_bench_ulysses.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO / "tests")]  # the pack loader, as tests load it
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.heads_placement import head_costs, placement_for, rank_costs  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, AttentionPlan  # noqa: E402
from comfyui_sparseflow.sparseflow.routing import routing_preset  # noqa: E402
from comfyui_sparseflow.sparseflow.schedule import DEFAULT_SCHEDULE, describe, schedule_preset  # noqa: E402
from comfyui_sparseflow.sparseflow.ulysses import ulysses_attention  # noqa: E402

MODELS = {  # name: (layers, heads, geometry); D = 128. Geometries as bench_attention.py's SHAPES
    "wan14b_720p": (40, 40, Geometry(21, 45, 80)),  # Wan 2.1 14B, 1280x720, 81 frames
    "wan22_5b_720p": (30, 24, Geometry(31, 22, 40)),  # Wan 2.2 5B, 1280x704, 121 frames
    "tiny": (3, 8, Geometry(4, 8, 8)),  # CPU smoke test (D = 64, block 64: one block per frame)
}
MODES = ("dense", "sparseflow", "sparseflow_balanced")
ROUTINGS = ("heuristic", "mixed")


def layer_routes(name: str, layers: int, heads: int) -> list[tuple[int, ...]]:
    """Per layer, the head routes of routing `name` (window/topk from the schedule, as the preset leaves them)."""
    routes = routing_preset("heuristic", layers, heads).routes.clone()
    if name == "mixed":
        routes[:, : max(1, heads // 5)] = DENSE
    return [tuple(int(r) for r in row) for row in routes.tolist()]


def step_plans(model: str, routing: str, steps: int, block: int) -> dict[AttentionPlan, float]:
    """Each distinct plan of a run -> how many calls of it one step makes on average."""
    layers, heads, geom = MODELS[model]
    weights: dict[AttentionPlan, float] = {}
    for params in describe(schedule_preset(DEFAULT_SCHEDULE), steps):
        for routes in layer_routes(routing, layers, heads):
            if params.dense:
                routes = (DENSE,) * heads
            plan = AttentionPlan(geom, routes, (params.window,) * heads, (params.topk,) * heads, anchors=(0,),
                                 compensation=params.compensation, block=block)
            weights[plan] = weights.get(plan, 0.0) + 1.0 / steps
    return weights


def dense_plan(model: str, block: int) -> AttentionPlan:
    _, heads, geom = MODELS[model]
    return AttentionPlan(geom, (DENSE,) * heads, (0,) * heads, (0,) * heads, block=block)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


def time_call(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds of fn() over `reps`, each between barriers; the largest over ranks (the step waits for it)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = torch.tensor([statistics.median(times)], dtype=torch.float64)
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    return float(med)


def _env(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    try:
        import yunchang
        yc = yunchang.__version__
    except ImportError:
        yc = None
    return {"gpu": gpu, "torch": torch.__version__, "yunchang": yc, "commit": commit,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run(args: argparse.Namespace) -> None:
    tiny = args.model == "tiny"
    backend = "gloo" if tiny or not torch.cuda.is_available() else "nccl"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu") if backend == "gloo" else torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group, so NCCL binds this rank to its GPU
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    layers, heads, geom = MODELS[args.model]
    d, block = (64, 64) if tiny else (128, 128)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    op_backend = "reference" if device.type == "cpu" else "auto"
    shard = geom.length // world
    gen = torch.Generator(device=device).manual_seed(1000 + rank)
    q, k, v = (torch.randn(1, shard, heads * d, generator=gen, device=device, dtype=dtype) for _ in range(3))
    rows, env = [], _env(device)
    for routing in args.routing.split(","):
        for mode in args.modes.split(","):
            if mode == "dense" and routing != args.routing.split(",")[0]:
                continue  # dense ignores the routing: one row
            weights = {dense_plan(args.model, block): float(layers)} if mode == "dense" else \
                step_plans(args.model, routing, args.steps, block)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            step_s, planned_max, planned_mean = 0.0, 0.0, 0.0
            for plan, calls in weights.items():
                placement = placement_for(plan, world, mode == "sparseflow_balanced")
                loads = rank_costs(placement, head_costs(plan))
                planned_max += calls * max(loads)
                planned_mean += calls * sum(loads) / world
                step_s += calls * time_call(
                    lambda: ulysses_attention(q, k, v, plan, heads=heads, placement=placement, backend=op_backend),
                    device, args.warmup, args.reps)
            peak = torch.tensor([torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0],
                                dtype=torch.float64, device=device if backend == "nccl" else None)
            peaks = [torch.zeros_like(peak) for _ in range(world)]
            dist.all_gather(peaks, peak)
            rows.append({"model": args.model, "degree": world, "mode": mode,
                         "routing": "-" if mode == "dense" else routing, "attention_s_per_step": step_s,
                         "distinct_plans": len(weights), "planned_cost_max_over_mean": planned_max / planned_mean,
                         "peak_mem_gib_per_rank": [float(p) / 2**30 for p in peaks], "steps": args.steps,
                         "layers": layers, "heads": heads, "tokens": geom.length, "dtype": str(dtype), **env})
            if rank == 0:
                r = rows[-1]
                print(f"{args.model} P={world} {mode:20s} {r['routing']:9s} attention {step_s:.4f} s/step, planned "
                      f"max/mean {r['planned_cost_max_over_mean']:.3f}, peak {max(r['peak_mem_gib_per_rank']):.2f} GiB",
                      flush=True)
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"ulysses_{args.model}_p{world}.json").write_text(json.dumps(rows, indent=1))
    dist.barrier()  # no rank tears its connections down while another is still in a collective or writing
    dist.destroy_process_group()


def summarize(folder: Path) -> list[dict]:
    """Scaling rows from every ulysses_*_p*.json in `folder`, printed as a markdown table."""
    rows = [r for f in sorted(folder.glob("ulysses_*_p*.json")) for r in json.loads(f.read_text())]
    base = {(r["model"], r["mode"], r["routing"]): r["attention_s_per_step"] for r in rows if r["degree"] == 1}
    dense1 = {r["model"]: r["attention_s_per_step"] for r in rows if r["degree"] == 1 and r["mode"] == "dense"}
    table = []
    print("| model | P | mode | routing | attention s/step | scaling eff. vs P=1 same mode | x single-GPU dense | "
          "planned max/mean | peak GiB/GPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["model"], r["routing"], r["mode"], r["degree"])):
        t, p = r["attention_s_per_step"], r["degree"]
        one = base.get((r["model"], r["mode"], r["routing"]))
        if one is None and r["mode"] == "sparseflow_balanced":  # at P=1 balancing is the identity
            one = base.get((r["model"], "sparseflow", r["routing"]))
        eff = one / (p * t) if one else None
        vs_dense = dense1[r["model"]] / t if r["model"] in dense1 else None
        table.append({**r, "scaling_efficiency": eff, "speedup_vs_single_gpu_dense": vs_dense})
        fmt = lambda x, f: "n/a" if x is None else format(x, f)  # noqa: E731
        print(f"| {r['model']} | {p} | {r['mode']} | {r['routing']} | {t:.4f} | {fmt(eff, '.0%')} | "
              f"{fmt(vs_dense, '.2f')} | {r['planned_cost_max_over_mean']:.3f} | "
              f"{max(r['peak_mem_gib_per_rank']):.2f} |")
    (folder / "summary.json").write_text(json.dumps(table, indent=1))
    return table


def planned(steps: int) -> list[dict]:
    """CPU only, no timing: the planned max/mean rank cost of both Wan models at P = 2, 4, 8, contiguous vs
    balanced placement, printed as a markdown table (docs/multi_gpu.md quotes it)."""
    rows = []
    print("| model | routing | P | contiguous max/mean | balanced max/mean |")
    print("|---|---|---|---|---|")
    for model in ("wan14b_720p", "wan22_5b_720p"):
        for routing in ROUTINGS:
            weights = step_plans(model, routing, steps, 128)
            for p in (2, 4, 8):
                ratio = {}
                for balance in (False, True):
                    hi = mean = 0.0
                    for plan, calls in weights.items():
                        loads = rank_costs(placement_for(plan, p, balance), head_costs(plan))
                        hi, mean = hi + calls * max(loads), mean + calls * sum(loads) / p
                    ratio[balance] = hi / mean
                rows.append({"model": model, "routing": routing, "degree": p, "contiguous": ratio[False],
                             "balanced": ratio[True]})
                print(f"| {model} | {routing} | {p} | {ratio[False]:.3f} | {ratio[True]:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="wan14b_720p")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny model, gloo, reference backend")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--routing", default=",".join(ROUTINGS), help=f"comma list of {ROUTINGS}")
    ap.add_argument("--steps", type=int, default=30, help="sampling steps the schedule is spread over")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="bench_out/ulysses")
    ap.add_argument("--summarize", metavar="DIR", help="print the scaling table of the JSON files in DIR and exit")
    ap.add_argument("--planned", action="store_true", help="print the planned rank-cost balance table (CPU) and exit")
    args = ap.parse_args(argv)
    if args.summarize:
        summarize(Path(args.summarize))
        return
    if args.planned:
        planned(args.steps)
        return
    if args.tiny:
        args.model, args.steps, args.warmup, args.reps = "tiny", 3, 0, 1
    for name, allowed in ((args.modes, MODES), (args.routing, ROUTINGS)):
        bad = [x for x in name.split(",") if x not in allowed]
        if bad:
            ap.error(f"{bad} not in {allowed}")
    run(args)


if __name__ == "__main__":
    main()
