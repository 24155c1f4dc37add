"""Command line: `python -m sparseflow demo | inspect FILE | bench`.

`demo` is the main job on an embedded default: a Wan-shaped attention call with structured synthetic heads
(temporally local, spatially smooth, global), calibrated, then run dense vs SparseFlow on the best backend.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

from .calibrate import DEFAULT_CANDIDATES, Candidate, choose_routes, head_errors
from .geometry import Geometry
from .masks import density
from .plan import DENSE, LINEAR, ROUTE_NAMES, AttentionPlan
from .render import routing_png
from .synthetic import HEAD_KINDS, structured_qkv

__all__ = ["main"]

SIZES = {"wan13b": Geometry(21, 30, 52), "small": Geometry(21, 15, 26), "tiny": Geometry(5, 6, 10)}


def _timed(fn, device: torch.device, repeat: int) -> tuple[torch.Tensor, float]:
    out = fn()  # warm-up (compiles the kernel on first use)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) / repeat * 1e3


def _demo(args: argparse.Namespace) -> int:
    from .ops import attention, available_backends
    from .routing import RoutingMap
    from .routing_file import save_routing

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size if args.size != "auto" else ("wan13b" if device.type == "cuda" else "small")
    g, block = SIZES[size], args.block
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kinds = [HEAD_KINDS[h % 3] for h in range(args.heads)]
    backends = available_backends()
    backend = args.backend
    if backend == "auto":
        backend = "triton" if backends.get("triton") is None and device.type == "cuda" else "reference"
    refused = {k: v for k, v in backends.items() if v}
    print(f"SparseFlow demo: geometry {g.describe()} (L={g.length}, '{size}'), {args.heads} heads x {args.layers} "
          f"layers, block {block}, {dtype}, device {device}, backend {backend}"
          + (f" (refused: {refused})" if refused else ""))

    def op(q, k, v, plan):
        return attention(q, k, v, plan, backend=backend)

    cands = DEFAULT_CANDIDATES
    errors = []
    feature_err = []
    t0 = time.perf_counter()
    for layer in range(args.layers):
        q, k, v = structured_qkv(g, kinds, seed=args.seed + layer, dtype=dtype, device=device)
        e, costs = head_errors(q, k, v, g, cands, block=block, compensation=True, attention=op)
        errors.append(e)
        fe, _ = head_errors(q, k, v, g, (Candidate(LINEAR), Candidate(DENSE)), block=block,
                            linear_kind="feature", attention=op)
        feature_err.append(fe[:, 0])
    calib_s = time.perf_counter() - t0
    err = torch.stack(errors)
    result = choose_routes(err, costs, cands, args.budget)
    print(f"\ncalibration on {args.layers} captured calls took {calib_s:.1f} s; "
          "relative error vs dense, mean over layers, by head kind:")
    names = [c.name for c in cands] + ["linear(feature)"]
    print(f"  {'kind':7s} " + " ".join(f"{n:>16s}" for n in names))
    feat = torch.stack(feature_err)
    for kind in HEAD_KINDS:
        hs = [h for h, kk in enumerate(kinds) if kk == kind]
        if hs:
            row = [float(err[:, hs, c].mean()) for c in range(len(cands))] + [float(feat[:, hs].mean())]
            print(f"  {kind:7s} " + " ".join(f"{x:16.4f}" for x in row))
    print("  cost    " + " ".join(f"{float(c):16.3f}" for c in costs) + f" {'':>16s}")
    print("\n" + result.report())

    rmap = RoutingMap(routes=result.routes(), window=result.windows(), topk=result.topks(), error=result.error,
                      family="generic", made_by="calibration:demo",
                      notes=f"synthetic structured heads {kinds}, budget {args.budget}")
    out = Path(args.out)
    out.write_bytes(routing_png(rmap.routes))
    save_routing(rmap, out.with_suffix(".safetensors"), overwrite=True)

    q, k, v = structured_qkv(g, kinds, seed=args.seed, dtype=dtype, device=device)
    plan = AttentionPlan(g, tuple(int(r) for r in rmap.routes[0]), tuple(max(0, int(w)) for w in rmap.window[0]),
                         (0,) * args.heads, compensation=True, block=block)
    dense_plan = plan.with_routes((DENSE,) * args.heads)
    ref, dense_ms = _timed(lambda: op(q, k, v, dense_plan), device, args.repeat)
    got, sparse_ms = _timed(lambda: op(q, k, v, plan), device, args.repeat)
    print(f"\nlayer 0 plan: routes {[ROUTE_NAMES[r] for r in plan.routes]}, density {density(plan):.3f}")
    for r in sorted(set(plan.routes)):
        hs = [h for h in range(args.heads) if plan.routes[h] == r]
        e = float((got[:, hs].double() - ref[:, hs].double()).norm() / ref[:, hs].double().norm())
        print(f"  {ROUTE_NAMES[r]:7s} heads {hs}: relative error {e:.4f}")
    print(f"time per call ({backend}): dense {dense_ms:.1f} ms, SparseFlow {sparse_ms:.1f} ms "
          f"({dense_ms / max(sparse_ms, 1e-9):.2f}x)")
    print(f"wrote {out} and {out.with_suffix('.safetensors')}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .routing import summary
    from .routing_file import RoutingFileError, load_routing

    try:
        rmap = load_routing(args.file)
    except (RoutingFileError, FileNotFoundError) as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    print(summary(rmap))
    return 0


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    script = Path(__file__).resolve().parent.parent / "bench" / "bench_attention.py"
    if not script.exists():
        print(f"bench: {script} is not in this checkout (the bench ships with the git repository)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *rest])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparseflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="calibrate structured synthetic heads, then time dense vs SparseFlow")
    d.add_argument("--size", choices=["auto", *SIZES], default="auto",
                   help="geometry: wan13b = Wan 2.1 1.3B 480p x 81f; auto = wan13b on CUDA, small on CPU")
    d.add_argument("--heads", type=int, default=6)
    d.add_argument("--layers", type=int, default=2)
    d.add_argument("--block", type=int, choices=[64, 128], default=128)
    d.add_argument("--budget", type=float, default=0.1, help="calibration error budget (relative error)")
    d.add_argument("--backend", choices=["auto", "triton", "reference"], default="auto")
    d.add_argument("--device", default="auto")
    d.add_argument("--repeat", type=int, default=3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="sparseflow_demo.png", help="routing map PNG (a .safetensors is written beside)")
    i = sub.add_parser("inspect", help="validate and summarise a routing file")
    i.add_argument("file")
    sub.add_parser("bench", help="run bench/bench_attention.py (GPU); extra arguments are passed on")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "demo":
        return _demo(args)
    if args.cmd == "inspect":
        return _inspect(args)
    return _bench(args, rest)
