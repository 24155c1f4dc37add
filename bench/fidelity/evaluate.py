"""Sample held-out seeds dense and with every SparseFlow / sol_attn setting; write quality, speed and calibration.

    python -m bench.fidelity.evaluate --weights W.safetensors --out results.json [--time-budget 240]

Stages, in order (each logged with its time): dense baseline (+ q/k/v of one step for timing), calibration on
captured q/k/v of separate calibration seeds (maps at budgets 0.05 / 0.1 / 0.2, linear-kind errors), the
quality-target search on the calibration seeds (target.py: the settings Calibrate to Target picks), quality
of every setting (PSNR / SSIM / temporal vs dense, same noise), attention-op time per setting at the model's
shape and at the Wan 1.3B shape (CUDA only), and the full-size Wan 1.3B calibration time (CUDA only).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from comfyui_sparseflow.sparseflow.geometry import geometry_from_latent
from comfyui_sparseflow.sparseflow.masks import density
from comfyui_sparseflow.sparseflow.quality import finite_mean, psnr, ssim, temporal
from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.schedule import SCHEDULE_PRESETS, Keyframe, Schedule
from comfyui_sparseflow.sparseflow.synthetic import structured_qkv

from . import calib, target, timing
from .data import latent_to_rgb
from .hooks import FIXED, CaptureOverride, SolAttnOverride, SparseFlowOverride, op_attention, plan_for
from .model import load_checkpoint
from .sampler import held_out_noise, sample

log = logging.getLogger("sparseflow.bench.fidelity.evaluate")

EVAL_SEED = 10**9
CALIB_SEED = 2 * 10**9
BUDGETS = (0.05, 0.1, 0.2)
PRESET_ROUTINGS = ("all_sparse", "heuristic", "heuristic_sparse_edges", "alternating")
PRESET_SCHEDULES = ("fast", "balanced", "quality")
# two schedules between `quality` and dense, with the heuristic routing: points on the speed axis next to
# sol_attn's fastest settings (2.6-2.8x at the 1.3B shape), so PSNR is compared at about equal speed
EXTRA_SCHEDULES = {
    "quality_w2": Schedule((Keyframe(0.0, 2), Keyframe(0.85, 2, dense=True)), name="quality_w2"),
    "quality_dense70": Schedule((Keyframe(0.0, 1), Keyframe(0.7, 2, dense=True)), name="quality_dense70"),
}
# (method, tau, keep ratio, start percent): core node defaults start 0.2; start 0 = sol_attn on every step
SOL_SETTINGS = (("tau", 0.5, 0.0, 0.2), ("tau", 1.3, 0.0, 0.2), ("tau", 2.0, 0.0, 0.2), ("tau", 3.0, 0.0, 0.2),
                ("keep", 1.3, 0.05, 0.2), ("keep", 1.3, 0.1, 0.2), ("keep", 1.3, 0.2, 0.2), ("keep", 1.3, 0.3, 0.2),
                ("tau", 2.0, 0.0, 0.0), ("tau", 3.0, 0.0, 0.0), ("keep", 1.3, 0.05, 0.0))


@dataclass
class Setting:
    name: str
    family: str  # floor | preset | calibrated | target | sol_attn
    routing: str = ""
    schedule: str = ""
    budget: float | None = None
    tau: float | None = None
    topk_ratio: float | None = None
    start_percent: float | None = None
    sparsity: float | None = None  # target: the Patch sparsity slider the search chose
    precision: str = "fp16"  # Q·K precision of SparseFlow settings (spec §8)
    metrics: dict = field(default_factory=dict)


def _settings() -> list[Setting]:
    out = [Setting("sparseflow all_dense (kernel floor)", "floor", "all_dense", "dense")]
    out += [Setting(f"sparseflow {r} / {s}", "preset", r, s) for r in PRESET_ROUTINGS for s in PRESET_SCHEDULES]
    out += [Setting(f"sparseflow heuristic / {s}", "preset", "heuristic", s) for s in EXTRA_SCHEDULES]
    out += [Setting(f"sparseflow calibrated {b:g}", "calibrated", f"calibrated:{b:g}", "fixed", budget=b)
            for b in BUDGETS]
    # int8-qk (spec §8) next to the fp16 points it quantizes: the heuristic presets and the 0.1 map
    out += [Setting(f"sparseflow heuristic / {s} int8-qk", "preset", "heuristic", s, precision="int8-qk")
            for s in PRESET_SCHEDULES]
    out.append(Setting("sparseflow calibrated 0.1 int8-qk", "calibrated", "calibrated:0.1", "fixed", budget=0.1,
                       precision="int8-qk"))
    # fp8 (int8 Q·K + e4m3 P·V, spec §8): the default preset and the 0.1 map, beside their fp16 and int8-qk points
    out.append(Setting("sparseflow heuristic / balanced fp8", "preset", "heuristic", "balanced", precision="fp8"))
    out.append(Setting("sparseflow calibrated 0.1 fp8", "calibrated", "calibrated:0.1", "fixed", budget=0.1,
                       precision="fp8"))
    for kind, tau, ratio, start in SOL_SETTINGS:
        name = f"sol_attn tau={tau:g}" if kind == "tau" else f"sol_attn keep={ratio:g}"
        name += "" if start == 0.2 else f" start={start:g}"
        out.append(Setting(name, "sol_attn", tau=tau, topk_ratio=ratio, start_percent=start))
    return out


def _schedule(name: str) -> Schedule:
    return SCHEDULE_PRESETS[name] if name in SCHEDULE_PRESETS else EXTRA_SCHEDULES[name]


def _sparseflow_setup(s: Setting, maps: dict, layers: int, heads: int):
    """(routing map, schedule) of a SparseFlow setting."""
    if s.family == "calibrated":
        return maps[s.budget], FIXED
    if s.family == "target":
        return maps[s.budget], target.target_schedule(s.sparsity)
    return routing_preset(s.routing, layers, heads), _schedule(s.schedule)


def _target_settings(found: dict) -> list[Setting]:
    """One setting per quality target, as the search chose it."""
    return [Setting(f"sparseflow target >= {c['target_db']:g} dB", "target", f"calibrated:{c['budget']:g}",
                    f"{target.BASE_SCHEDULE}@{c['sparsity']:g}", budget=c["budget"], sparsity=c["sparsity"])
            for c in found["choices"].values()]


def _sol_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from bench.peers import available
        return available()["sol_attn_tau"]
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


STRIP = ("sparseflow heuristic / balanced", "sparseflow calibrated 0.1", "sparseflow all_sparse / fast",
         "sparseflow alternating / fast", "sol_attn tau=2")
_DENSITY: dict = {}


def _save_strip(videos: dict, path: str) -> None:
    """One row per setting: every other latent frame of video 0, decoded by data.latent_to_rgb, 4x upscaled."""
    from PIL import Image, ImageDraw

    rows = []
    for name, v in videos.items():  # (3, T, H, W)
        frames = v[:, ::2]
        row = torch.cat(list(frames.permute(1, 2, 3, 0)), dim=1)  # (H, T' * W, 3)
        img = Image.fromarray((row.clamp(0, 1).numpy() * 255).astype("uint8")).resize(
            (row.shape[1] * 4, row.shape[0] * 4), Image.NEAREST)
        canvas = Image.new("RGB", (img.width + 260, img.height), "white")
        canvas.paste(img, (260, 0))
        ImageDraw.Draw(canvas).text((6, img.height // 2 - 6), name.replace("sparseflow ", ""), fill="black")
        rows.append(canvas)
    out = Image.new("RGB", (rows[0].width, sum(r.height + 4 for r in rows)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + 4
    out.save(path)


def _density(plan) -> float:
    """masks.density, memoised by the plan's content (pair counting is Python and the 1.3B plans repeat)."""
    key = (plan.geometry, plan.routes, plan.window, plan.topk, plan.compensation, plan.anchors, plan.block)
    if key not in _DENSITY:
        _DENSITY[key] = density(plan)
    return _DENSITY[key]


def _quality(x: torch.Tensor, ref: torch.Tensor, cfg) -> dict:
    p = psnr(x, ref)
    rgb, rgb_ref = latent_to_rgb(cfg, x), latent_to_rgb(cfg, ref)
    return {"psnr": finite_mean(p), "psnr_min": float(p.min()), "ssim": float(ssim(x, ref).mean()),
            "rgb_psnr": finite_mean(psnr(rgb, rgb_ref)), **temporal(x, ref)}


def main() -> None:  # noqa: C901 - one linear script of stages
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--calib-batch", type=int, default=4)
    p.add_argument("--calib-steps", default="0,5,10,15,19")
    p.add_argument("--time-budget", type=float, default=1e9, help="seconds; later settings are skipped past it")
    p.add_argument("--full-calibration-cap", type=float, default=90.0)
    p.add_argument("--samples", default="", help="PNG of the first held-out video, dense and a few settings")
    p.add_argument("--target-preview-steps", type=int, default=4,
                   help="steps of each quality-target preview (0: no quality-target family)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg = load_checkpoint(a.weights, dev)
    model.eval()
    attention, backend = op_attention()
    geom = geometry_from_latent(cfg.latent_shape[1:])
    layers, heads = cfg.num_layers, cfg.num_heads
    res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                 "backend": backend, "model": json.loads(cfg.to_json()), "geometry": asdict(geom),
                 "sampling": {"steps": a.steps, "shift": a.shift, "batch": a.batch, "eval_seed": EVAL_SEED,
                              "calib_seed": CALIB_SEED, "calib_batch": a.calib_batch, "sampler": "euler flow"}}
    from safetensors import safe_open
    with safe_open(a.weights, framework="pt") as f:
        res["train"] = {k: v for k, v in f.metadata().items() if k != "sparseflow_fidelity_config"}

    def stage(name: str, t0: float) -> None:
        res.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - t0, 2)
        log.info("stage %s: %.1f s (total %.1f s)", name, time.perf_counter() - t0, time.perf_counter() - t_start)

    # -- dense baseline on held-out seeds; keep q/k/v of the middle step for timing
    t0 = time.perf_counter()
    noise, classes = held_out_noise(cfg, a.batch, EVAL_SEED, dev)
    mid = a.steps // 2
    cap = CaptureOverride(layers, {mid})
    ref = sample(model, cfg, noise, classes, cap, steps=a.steps, shift=a.shift)
    timing_qkv = next(c for c in cap.captures if c.layer == layers // 2)
    del cap
    stage("dense", t0)

    # -- calibration on captured q/k/v of calibration seeds (not the evaluation seeds)
    t0 = time.perf_counter()
    cnoise, cclasses = held_out_noise(cfg, a.calib_batch, CALIB_SEED, dev)
    keep = {int(s) for s in a.calib_steps.split(",") if int(s) < a.steps}
    cap = CaptureOverride(layers, keep)
    sample(model, cfg, cnoise, cclasses, cap, steps=a.steps, shift=a.shift)
    t1 = time.perf_counter()
    table = calib.calibrate_captures(cap.captures, geom, attention)
    res["calibration_seconds_tiny"] = time.perf_counter() - t1
    maps = {}
    res["calibration"] = {"candidates": [c.name for c in table.candidates], "costs": table.costs.tolist(),
                          "errors_rms": calib.error_tensor(table, layers).tolist(), "captures": len(cap.captures),
                          "steps": sorted(keep), "maps": {}}
    for b in sorted(set(BUDGETS) | set(target.ts.DEFAULT_BUDGETS)):
        maps[b] = calib.calibrated_map(table, layers, b)[0]
    for b in BUDGETS:
        rmap, cres = calib.calibrated_map(table, layers, b)
        maps[b] = rmap
        res["calibration"]["maps"][f"{b:g}"] = {"routes": rmap.routes.tolist(), "window": rmap.window.tolist(),
                                                "mean_cost": cres.mean_cost(), "report": cres.report()}
        log.info("%s", cres.report())
    kinds = calib.linear_kind_errors(cap.captures, geom, attention, layers)
    res["linear_kinds"] = {k: v.tolist() for k, v in kinds.items()}
    del cap
    stage("calibration", t0)

    # -- quality-target search on the calibration seeds: the settings Calibrate to Target would pick
    found = {"choices": {}}
    if a.target_preview_steps > 0:
        t0 = time.perf_counter()
        found = target.search(model, cfg, maps, geom, attention, cnoise, cclasses, steps=a.target_preview_steps,
                              shift=a.shift)
        res["target_search"] = found
        for name, c in found["choices"].items():
            log.info("target %s: sparsity %g, budget %g, met %s, preview PSNR %.2f dB, est. %.2fx", name,
                     c["sparsity"], c["budget"], c["met"], c["preview_psnr"], c["est_speedup"])
        stage("target_search", t0)

    # -- quality of every setting, same noise and classes as the dense baseline
    t0 = time.perf_counter()
    settings = _settings()
    after = max(i for i, s in enumerate(settings) if s.family == "calibrated") + 1
    settings[after:after] = _target_settings(found)
    sol_reason = _sol_reason()
    strip = {"dense": latent_to_rgb(cfg, ref[:1])[0].cpu()}
    for s in settings:
        if time.perf_counter() - t_start > a.time_budget:
            s.metrics["skipped"] = "time budget"
            continue
        if s.family == "sol_attn":
            if sol_reason is not None:
                s.metrics["skipped"] = f"sol_attn unavailable: {sol_reason}"
                continue
            ov = SolAttnOverride(layers, s.tau, s.topk_ratio, a.shift, start_percent=s.start_percent)
        else:
            rmap, sched = _sparseflow_setup(s, maps, layers, heads)
            ov = SparseFlowOverride(geom, rmap, sched, attention, precision=s.precision)
        t1 = time.perf_counter()
        try:
            x = sample(model, cfg, noise, classes, ov, steps=a.steps, shift=a.shift)
        except Exception as e:  # noqa: BLE001 - record and go on with the other settings
            log.exception("setting %s failed", s.name)
            s.metrics["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            continue
        s.metrics.update(_quality(x, ref, cfg))
        if s.name in STRIP:
            strip[s.name] = latent_to_rgb(cfg, x[:1])[0].cpu()
        s.metrics["sample_seconds"] = time.perf_counter() - t1
        if isinstance(ov, SolAttnOverride):
            s.metrics["sparse_steps"] = sum(1 for i in range(a.steps)
                                            if float(_sigmas(a)[i]) <= ov.sigma_start + 1e-9)
        else:
            plans = [ov.plan(layer, ov.schedule.at(i / max(1, a.steps - 1)))
                     for i in range(a.steps) for layer in range(layers)]
            s.metrics["density_tiny"] = sum(_density(pl) for pl in plans) / len(plans)
        log.info("%-40s PSNR %.2f dB SSIM %.4f motion %.3f", s.name, s.metrics["psnr"], s.metrics["ssim"],
                 s.metrics["motion_ratio"])
    stage("quality", t0)
    if a.samples:
        _save_strip(strip, a.samples)

    # -- attention-op time per setting at the model's shape and at the Wan 1.3B shape
    if dev == "cuda":
        t0 = time.perf_counter()
        _timings(settings, maps, timing_qkv, geom, attention, a, layers, heads, res)
        stage("timing", t0)
        t0 = time.perf_counter()
        res["full_calibration"] = calib.time_full_calibration(attention, time_cap=a.full_calibration_cap)
        stage("full_calibration", t0)
    res["settings"] = [asdict(s) for s in settings]
    res["total_seconds"] = time.perf_counter() - t_start
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, default=_json_default)
    print(f"wrote {a.out} ({len(settings)} settings, {res['total_seconds']:.0f} s)")


def _sigmas(a) -> torch.Tensor:
    from .sampler import flow_sigmas
    return flow_sigmas(a.steps, a.shift)


def _json_default(o):
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return str(o)
    raise TypeError(type(o).__name__)


def _timings(settings, maps, cap, geom, attention, a, layers, heads, res) -> None:
    """Fill metrics time_* / speedup_* for every setting that ran (see timing.py for what is summed)."""
    big = calib.WAN13B_GEOMETRY
    tiny = timing.PlanTimer(cap.q, cap.k, cap.v, attention)
    kinds = ("local", "smooth", "global") * 4
    q, k, v = structured_qkv(big, kinds, dim=128, seed=0, dtype=torch.bfloat16, device="cuda")
    large = timing.PlanTimer(q, k, v, attention)
    res["timing"] = {"tiny_shape": list(cap.q.shape), "tiny_dense_ms": tiny.dense_ms,
                     "wan13b_shape": list(q.shape), "wan13b_dense_ms": large.dense_ms,
                     "wan13b_qkv": "sparseflow.synthetic.structured_qkv, heads local/smooth/global x4"}
    for s in settings:
        m = s.metrics
        if "psnr" not in m:
            continue
        try:
            if s.family == "sol_attn":
                n = m["sparse_steps"]
                t_ms, d_ms = timing.sol_run_ms(cap.q, cap.k, cap.v, tiny.dense_ms, tau=s.tau,
                                               topk_ratio=s.topk_ratio, sparse_steps=n, steps=a.steps, layers=layers)
                b_ms, bd_ms = timing.sol_run_ms(q, k, v, large.dense_ms, tau=s.tau, topk_ratio=s.topk_ratio,
                                                sparse_steps=n, steps=a.steps, layers=30)
            else:
                rmap, sched = _sparseflow_setup(s, maps, layers, heads)
                t_ms, d_ms = timing.sparseflow_run_ms(tiny, geom, rmap, sched, a.steps, s.precision)
                # presets: the preset itself at 30 x 12 (what a Wan 1.3B user gets); calibrated maps: tiled
                big_map = timing.tile_map(rmap, 30, 12) if s.family in ("calibrated", "target") else \
                    routing_preset(s.routing, 30, 12)
                b_ms, bd_ms = timing.sparseflow_run_ms(large, big, big_map, sched, a.steps, s.precision)
                plans = [plan_for(big, big_map, layer, sched.at(i / max(1, a.steps - 1)))
                         for i in range(a.steps) for layer in range(30)]
                m["density_wan13b"] = sum(_density(pl) for pl in plans) / len(plans)
            m.update(time_tiny_ms=t_ms, dense_tiny_ms=d_ms, speedup_tiny=d_ms / t_ms,
                     time_wan13b_ms=b_ms, dense_wan13b_ms=bd_ms, speedup_wan13b=bd_ms / b_ms)
            log.info("%-40s speed-up %.2fx (model shape) %.2fx (Wan 1.3B shape)", s.name, m["speedup_tiny"],
                     m["speedup_wan13b"])
        except Exception as e:  # noqa: BLE001
            log.exception("timing %s failed", s.name)
            m["timing_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    del q, k, v
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
