"""End-to-end Wan sampling speed in real ComfyUI: SparseFlow vs default attention, Sage and core sol_attn.

Runs in-process on the GPU machine (issue 7): imports ComfyUI 0.3.64 (bench/e2e/boot.py), builds a
full-size random-weight Wan checkpoint in the real key format on the GPU (bench/e2e/checkpoints.py),
loads it through `comfy.sd.load_diffusion_model_state_dict` (ComfyUI's detection picks the class), and
samples it with `comfy.sample.sample` (euler / simple, CFG 5 with cond+uncond in one batch, fixed seed,
random (1, 512, 4096) contexts instead of a text encoder) once per configuration:

  default          ComfyUI's startup attention (on CUDA: attention_pytorch, SDPA with cuDNN first)
  sage             every attention call through ComfyUI's attention_sage (what --use-sage-attention does)
  sol_attn         core "Model Sparse Attention", method sol-attn, node defaults (stand-in: bench/e2e/overrides.py)
  sparseflow       nodes/patch.py apply_sparseflow: default schedule and routing presets, backend triton
                   (with the fused QK-norm + RoPE prologue and block adds + norms, the patch's defaults; precision
                   "auto": int8-qk with the a100, rtx50 and consumer tiers' configs, fp16 otherwise)
  sparseflow_nofuse  the same with fuse_qk_norm_rope=False (ComfyUI's own QK-norm + RoPE)
  sparseflow_noblock the same with fuse_block_norms=False (ComfyUI's own residual adds + LayerNorms)
  sparseflow_ffnwhole the same with ffn_in_pieces=False (the FFN's hidden tensor whole: more memory)
  sparseflow_ffnxNN  the same with FFN pieces whose hidden tensor is up to NN/10 streams (ffn_piece_hidden)
  sparseflow_int8qk  the same with precision int8-qk (int8 Q·K); sparseflow_fp8: precision fp8 (also e4m3 P·V);
                   sparseflow_fp16: precision fp16 (what "auto" is not on the consumer tier)
  sparseflow_<preset>  the same with another schedule preset (e.g. sparseflow_quality)
  sparseflow_spNNN the same with the Patch node's sparsity slider at NNN/100 (e.g. sparseflow_sp030)
  sparseflow_edgeNN the same with the routing preset's two dense edge layers (the first and the last) routed sparse
                   at temporal window NN, every head (e.g. sparseflow_edge04): what the dense edge layers cost
  sparseflow_cal   the same with a routing map calibrated on the first step's q/k/v (bench/e2e/calibration.py)
  compare          the SparseFlow Compare node's own functions (nodes/compare.py) on the `sparseflow` patch: the
                   patched and the dense sampling (sample_pair) plus the latent-space report (compare_results);
                   its cost against `default` + `sparseflow` of the same call (it should cost one dense run more)
  <name>+compile   the same after ComfyUI's TorchCompileModel (set_torch_compile_wrapper, backend inductor)
  <name>@<tier>    the fused kernel's launch configs forced to a tier of kernels/configs.py ($SPARSEFLOW_LAUNCH_TIER),
                   e.g. sparseflow@consumer: the configs an RTX 30/40/50 card gets, run on this GPU (a proxy)

Per configuration: seconds per step (mean of steps 1.., step 0 holds warm-up/compile/autotune; with
--warmup-steps N an untimed N-step sampling runs first and s/step is the mean of all steps), total,
speed-up vs default, peak GPU memory, first-step overhead, calibration time, relative error of the final
latent vs the default run, and (eager runs) the step-time breakdown of bench/e2e/timing.py. Results go
to <out>/e2e_<model><tag>.json (after every configuration) and a markdown table to stdout.

The default run can be kept (--save-reference) and compared against from a later run (--reference) that
samples the same thing (bench/e2e/reference.py): a 14B default run alone takes ~150 s of a 600 s device call.

GPU:  bash bench/run_e2e_gpu.sh wan21_1.3b        (see that script for the carry list)
CPU:  python3 bench/e2e_comfy.py --tiny           (same code path, tiny checkpoint, reference backend)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]
__import__("pack_package").load_pack_package()  # repo root: `bench.e2e.*`; tests/: the pack loader

from comfyui_sparseflow.kernels.configs import TIER_ENV  # noqa: E402
from comfyui_sparseflow.sparseflow.routing import SPARSE, RoutingMap, routing_preset  # noqa: E402
from comfyui_sparseflow.sparseflow.schedule import SCHEDULE_PRESETS, schedule_preset  # noqa: E402

from bench.e2e import boot  # noqa: E402
from bench.e2e.checkpoints import MODELS, build_state_dict  # noqa: E402
from bench.e2e.compare_run import run_compare  # noqa: E402
from bench.e2e.memory_peak import memory_peak  # noqa: E402
from bench.e2e.profiling import profile  # noqa: E402
from bench.e2e.reference import load_reference, mismatches, save_reference  # noqa: E402
from bench.e2e.table import table  # noqa: E402
from bench.e2e.timing import Breakdown, StepTimer, sync  # noqa: E402

log = logging.getLogger("sparseflow.bench.e2e")

# the Patch node's `precision` choices other than its default "auto", as configuration names
PRECISION_CONFIGS = {"sparseflow_fp16": "fp16", "sparseflow_int8qk": "int8-qk", "sparseflow_fp8": "fp8"}
BASE_CONFIGS = ("default", "sage", "sol_attn", "sparseflow", "sparseflow_cal")


def _number_after(name: str, prefix: str) -> int | None:
    """NNN of a configuration named `prefix` + digits (sparseflow_sp030 -> 30), else None."""
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def sparse_edges(layers: int, heads: int, window: int) -> RoutingMap:
    """The default routing preset with its two dense edge layers (the first and the last) routed sparse at a fixed
    temporal window, every head: the `sparseflow_edgeNN` configurations."""
    base = routing_preset("heuristic", layers, heads)
    routes, win = base.routes.clone(), base.window.clone()
    for layer in {0, layers - 1}:
        routes[layer] = SPARSE
        win[layer] = window
    return RoutingMap(routes, win, base.topk.clone(), None, base.family, f"bench:heuristic, edge layers sparse "
                      f"at window {window}")


def _bytes_by_dtype(module: torch.nn.Module) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in module.parameters():
        out[str(p.dtype)] = out.get(str(p.dtype), 0.0) + p.numel() * p.element_size() / 2**30
    return out


class Bench:
    """One model, loaded once; `run(config)` samples it with one attention configuration."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cuda = not args.tiny
        self.comfy = boot.import_comfy(cpu=args.tiny)
        self.pack = boot.import_pack()
        from comfyui_sparseflow.nodes import patch as sf_patch  # noqa: E402  (the pack, loaded as a package)

        self.sf_patch = sf_patch
        from comfyui_sparseflow.nodes import fused_block as sf_fused_block  # noqa: E402

        self.sf_fused_block = sf_fused_block
        from comfyui_sparseflow.nodes import run as sf_run  # noqa: E402

        self.sf_run = sf_run
        self.bench = MODELS[args.model]
        self.device = self.comfy.model_management.get_torch_device()
        self.family = "wan2.2-5b" if self.bench.latent[0] == 48 else "wan2.1"
        self.backend = args.backend or ("reference" if args.tiny else "triton")
        self.results: list[dict] = []
        self.reference_latent: torch.Tensor | None = None
        self.default_step: float | None = None
        self.default_peak: float | None = None
        self.reference: dict | None = None   # the default run this run compares against, when not its own
        self.run_meta: dict = {}             # what sampled and where: saved with a reference, matched against one
        self._calibrated = None

    # -- setup --------------------------------------------------------------------------------------------
    def load(self) -> dict:
        t0 = time.perf_counter()
        sd = build_state_dict(self.bench, self.device, dtype=torch.bfloat16, seed=self.args.seed)
        sync(self.cuda)
        built = time.perf_counter() - t0
        options = {"dtype": getattr(torch, self.args.dtype)} if self.args.dtype else {}
        self.model = self.comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
        del sd
        if self.cuda:
            torch.cuda.empty_cache()
        cls = type(self.model.model.model_config).__name__
        if cls != self.bench.expected_class:
            raise RuntimeError(f"detection picked {cls}, expected {self.bench.expected_class}")
        self.comfy.model_management.load_models_gpu([self.model])
        sync(self.cuda)
        c, t, h, w = self.bench.latent
        self.latent = self.comfy.sample.fix_empty_latent_channels(self.model, torch.zeros(1, c, t, h, w))
        g = torch.Generator().manual_seed(self.args.seed + 1)
        self.positive = [[torch.randn(1, 512, 4096, generator=g), {}]]
        self.negative = [[torch.randn(1, 512, 4096, generator=g), {}]]
        dm = self.model.get_model_object("diffusion_model")
        info = {"model": self.bench.name, "class": cls, "dim": self.bench.dim, "layers": self.bench.layers,
                "heads": self.bench.heads, "ffn": self.bench.ffn_dim, "latent": list(self.bench.latent),
                "video": self.bench.video, "tokens": self.bench.tokens,
                "dtype": str(self.model.model.get_dtype()), "weights_device": str(next(dm.parameters()).device),
                "param_gib_by_dtype": _bytes_by_dtype(dm),
                "weights_gib": sum(p.numel() * p.element_size() for p in dm.parameters()) / 2**30,
                "fully_loaded": bool(self.model.loaded_size() >= self.model.model_size() * 0.999),
                "build_and_load_s": time.perf_counter() - t0, "build_s": built}
        log.info("loaded %s", info)
        return info

    # -- configurations ------------------------------------------------------------------------------------
    def _patched(self, name: str):
        base = name.split("+")[0].split("@")[0]
        m = self.model.clone()
        notes: dict = {}
        if base == "sage":
            from bench.e2e.overrides import install_sage
            install_sage(m, self.comfy)
        elif base == "sol_attn":  # core "Model Sparse Attention", method sol-attn, node defaults
            from bench.e2e.overrides import apply_core_sparse_attention
            m, notes["sol_patch"] = apply_core_sparse_attention(m)
            notes["sigma_window"] = [notes["sol_patch"].sigma_end, notes["sol_patch"].sigma_start]
        elif base == "sparseflow":
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend)
        elif base == "sparseflow_dense_edges":  # the `heuristic` preset: first and last layers dense (before 2026-12)
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend,
                                               routing=routing_preset("heuristic", self.bench.layers, self.bench.heads))
        elif base == "sparseflow_nofuse":  # ComfyUI's own QK-norm + RoPE: isolates the fused prologue's gain
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend, fuse_qk_norm_rope=False)
        elif base in PRECISION_CONFIGS:  # sparseflow_int8qk / sparseflow_fp8: the Patch node's precision (spec §8)
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend, precision=PRECISION_CONFIGS[base])
        elif base == "sparseflow_ffnwhole":  # the FFN in one piece: isolates the cost of running it in token pieces
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend, ffn_in_pieces=False)
        elif (tenths := _number_after(base, "sparseflow_ffnx")) is not None:  # e.g. sparseflow_ffnx20: pieces of 2
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend, ffn_piece_hidden=tenths / 10)  # streams
        elif base == "sparseflow_noblock":  # ComfyUI's own block adds + norms: isolates the fused blocks' gain
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend, fuse_block_norms=False)
        elif (sp := _number_after(base, "sparseflow_sp")) is not None:  # e.g. sparseflow_sp030
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend, sparsity=sp / 100)
        elif (window := _number_after(base, "sparseflow_edge")) is not None:  # e.g. sparseflow_edge04
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend,
                                               routing=sparse_edges(self.bench.layers, self.bench.heads, window))
        elif base.startswith("sparseflow_") and base[len("sparseflow_"):] in SCHEDULE_PRESETS:  # sparseflow_quality
            m = self.sf_patch.apply_sparseflow(m, backend=self.backend,
                                               schedule=schedule_preset(base[len("sparseflow_"):]))
        elif base == "sparseflow_cal":
            rmap, seconds, report = self._calibration()
            notes["calibration_s"] = seconds
            notes["calibration"] = report
            m = self.sf_patch.apply_sparseflow(m, routing=rmap, backend=self.backend)
        elif base != "default":
            raise ValueError(f"unknown configuration {name!r}")
        if name.endswith("+compile"):
            self.comfy.torch_compile.set_torch_compile_wrapper(model=m, backend="inductor")
        return m, notes

    def _calibration(self):
        a = self.args
        if self._calibrated is None and a.calibrate_with == "node":
            # the SparseFlow Calibrate node's own function: dense sampling of all steps, reference operator
            from comfyui_sparseflow.nodes import calibrate as sf_calibrate
            sync(self.cuda)
            t0 = time.perf_counter()
            rmap, report = sf_calibrate.calibrate_model(self.model, self.positive, self.negative,
                                                        {"samples": self.latent}, steps=a.steps, cfg=a.cfg,
                                                        seed=a.seed, sampler_name=a.sampler, scheduler=a.scheduler,
                                                        budget=a.budget)
            sync(self.cuda)
            self._calibrated = (rmap, time.perf_counter() - t0, report.split("\n")[:3])
            return self._calibrated
        if self._calibrated is None:
            from bench.e2e.calibration import calibrate_routing
            self._calibrated = calibrate_routing(self.comfy, self.model, self.bench, self.latent, self.positive,
                                                 self.negative, seed=a.seed, cfg=a.cfg, sampler=a.sampler,
                                                 scheduler=a.scheduler, steps=a.steps, budget=a.budget,
                                                 backend=self.backend, family=self.family)
            return self._calibrated
        rmap, _, report = self._calibrated
        return rmap, 0.0, report   # already paid by the eager run

    def _sample(self, m, noise, steps: int, callback=None):
        """ComfyUI's sampler on model `m` with this bench's latent, conditioning, sampler, CFG and seed."""
        a = self.args
        return self.comfy.sample.sample(m, noise, steps, a.cfg, a.sampler, a.scheduler, self.positive, self.negative,
                                        self.latent, callback=callback, disable_pbar=True, seed=a.seed)

    def run(self, name: str) -> dict:
        """One configuration; `<config>@<tier>` runs it with the fused kernel's launch configs forced to a tier
        (kernels/configs.py, e.g. `sparseflow@consumer`: an RTX card's configs on this GPU, a proxy)."""
        tier = name.split("+")[0].partition("@")[2]
        if not tier:
            return self._run(name)
        os.environ[TIER_ENV] = tier
        try:
            return self._run(name)
        finally:
            os.environ.pop(TIER_ENV, None)

    def _run(self, name: str) -> dict:
        a = self.args
        row: dict = {"config": name, "compile": name.endswith("+compile")}
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if name == "compare":
            return run_compare(self, row)
        try:
            m, notes = self._patched(name)
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            timer = StepTimer(self.cuda)
            noise = self.comfy.sample.prepare_noise(self.latent, a.seed)
            breakdown = None
            if not row["compile"] and ("all" in a.breakdown or name.split("+")[0] in a.breakdown):
                breakdown = Breakdown(m.get_model_object("diffusion_model"), self.comfy.wan_model, self.cuda,
                                      fused_block_module=self.sf_fused_block)
            if a.warmup_steps:
                # an untimed sampling first (compile, autotune, first-call plans): then every timed step counts,
                # so a configuration's dense steps are timed wherever its schedule puts them (sol_attn's first
                # 20 %, the `quality` preset's last 15 %)
                sync(self.cuda)
                tw = time.perf_counter()
                self._sample(m, noise, a.warmup_steps)
                sync(self.cuda)
                row["warmup_s"] = time.perf_counter() - tw
            sync(self.cuda)
            t0 = time.perf_counter()
            timer.start()
            with breakdown if breakdown is not None else contextlib.nullcontext():
                out = self._sample(m, noise, a.steps, callback=timer)
            sync(self.cuda)
            total = time.perf_counter() - t0
            steps = timer.step_seconds()
            # after a warm-up every step is timed; without one step 0 holds compile/autotune and is left out
            timed = steps if a.warmup_steps or len(steps) == 1 else steps[1:]
            overhead = (row["warmup_s"] - a.warmup_steps * statistics.mean(timed) if a.warmup_steps
                        else steps[0] - statistics.mean(timed))
            # steady: the later half of the timed steps (a compiled model can recompile at the first window change)
            row.update(status="ok", steps=steps, s_per_step=statistics.mean(timed),
                       timed_steps="all" if timed is steps else "1..",
                       steady_s_per_step=statistics.mean(timed[len(timed) // 2:]), total_s=total,
                       first_step_overhead_s=overhead,
                       peak_gib=torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None,
                       finite=bool(torch.isfinite(out).all()))
            out = out.float()
            if name == "default":
                self.reference_latent = out
                self.default_step = row["s_per_step"]
                self.default_peak = row["peak_gib"]
                if a.save_reference:
                    stem = Path(a.out) / f"reference_{self.bench.name}{a.tag}"
                    meta = dict(self.run_meta, s_per_step=row["s_per_step"], peak_gib=row["peak_gib"],
                                timed_steps=row["timed_steps"])
                    row["saved_reference"] = [p.name for p in save_reference(stem, out, meta)]
            elif self.reference is not None:
                row["vs_reference"] = self.reference["file"]
            if self.reference_latent is not None:
                ref = self.reference_latent
                row["rel_err"] = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
            if self.default_step:
                row["speedup"] = self.default_step / row["s_per_step"]
            if self.default_peak and row["peak_gib"] is not None:
                row["peak_vs_default_pct"] = 100.0 * (row["peak_gib"] / self.default_peak - 1.0)
            if "calibration_s" in notes:
                row["calibration_s"] = notes["calibration_s"]
                row["calibration"] = notes["calibration"]
            if "sol_patch" in notes:
                row["sol_attn_calls"] = dict(notes["sol_patch"].counts)
                row["sol_attn_sigma_window"] = notes["sigma_window"]
            report = self.sf_run.last_run(m)
            if report is not None:
                row["sparseflow_summary"] = report.summary
            if row["compile"]:
                from torch._dynamo.utils import counters
                row["dynamo"] = {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
                                 "graph_breaks": int(sum(counters["graph_break"].values())),
                                 "break_reasons": sorted(counters["graph_break"])[:8]}
            if breakdown is not None:
                calls = breakdown.per_call()
                use = calls if a.warmup_steps or len(calls) == 1 else calls[1:]
                row["breakdown_s"] = {k: statistics.mean(c[k] for c in use) for k in use[0]} if use else {}
                row["breakdown_calls"] = len(calls)
            del m
        except Exception as e:  # noqa: BLE001 - one failing configuration must not stop the others
            row.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            log.error("%s failed: %s", name, row["error"])
        self.results.append(row)
        log.info("%s: %s", name, {k: v for k, v in row.items() if k not in ("traceback",)})
        return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="wan21_1.3b", choices=[k for k in MODELS if k != "tiny"])
    p.add_argument("--tiny", action="store_true", help="CPU development run: tiny checkpoint, reference backend")
    p.add_argument("--configs", default=",".join(BASE_CONFIGS),
                   help="comma-separated; append +compile for TorchCompileModel (e.g. default+compile)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", default="simple")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="weight dtype (UNETLoader model_options); default: ComfyUI's own choice, which is float16 "
                        "for Wan 2.1/2.2 on an H100 in 0.3.64 (supported_models lists fp16 first)")
    p.add_argument("--budget", type=float, default=0.05, help="calibration error budget per head")
    p.add_argument("--calibrate-with", default="bench", choices=["bench", "node"],
                   help="bench: first step only, scored with the triton op (bench/e2e/calibration.py); node: "
                        "nodes/calibrate.py calibrate_model (all steps sampled densely, 2 measured, reference op)")
    p.add_argument("--backend", default=None, help="SparseFlow backend (default triton, reference with --tiny)")
    p.add_argument("--breakdown", default="all",
                   help="eager configurations that get the CUDA-event breakdown hooks ('all', or a comma list; "
                        "give every compared configuration the same hooks so their s/step stay comparable)")
    p.add_argument("--profile", default="", help="comma list of configurations to profile (one model call each, "
                   "torch.profiler, after all timed runs): top CUDA kernels to <out>/profile_<model>_<config>.txt")
    p.add_argument("--memory-peak", default="", help="comma list of configurations whose peak memory is taken apart "
                   "(one sampler step each with the allocation history on, after all timed runs): the sites alive at "
                   "the peak to <out>/memory_<model><tag>_<config>.txt and into the row's memory_at_peak")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="an untimed sampling of this many steps per configuration first; then s/step is the mean "
                        "of all steps (without: of steps 1..). 2 reaches both ends of a schedule")
    p.add_argument("--save-reference", action="store_true",
                   help="write the default run's final latent, s/step and peak memory to "
                        "<out>/reference_<model><tag>-0000i-of-0000n.safetensors, for --reference")
    p.add_argument("--reference", default=None, type=Path,
                   help="compare against the default run saved by --save-reference (a stem or one shard) instead "
                        "of sampling `default`: it must have sampled the same model, dtype, seed, steps, warm-up, "
                        "CFG, sampler, scheduler and latent shape on the same GPU")
    p.add_argument("--tag", default="", help="suffix of the output file names (several runs of one model)")
    p.add_argument("--out", default=os.environ.get("OUT", str(boot.REPO / "bench" / "e2e_out")))
    a = p.parse_args()
    if a.tiny:
        a.model = "tiny"
    a.breakdown = [x for x in a.breakdown.split(",") if x]
    configs = [c for c in a.configs.split(",") if c]
    peaks = [c for c in a.memory_peak.split(",") if c]
    unknown = [c for c in peaks if c not in configs]
    if unknown:
        p.error(f"--memory-peak names {', '.join(unknown)}, which --configs ({a.configs}) does not run")
    if a.reference is not None and "default" in configs:
        p.error("--reference replaces the `default` configuration: leave `default` out of --configs, or drop "
                "--reference to sample it in this run")
    if a.save_reference and "default" not in configs:
        p.error("--save-reference saves the `default` configuration's run: add `default` to --configs")
    if a.reference is not None:
        try:  # before the model is built: a wrong path costs no GPU time
            ref_latent, ref_meta = load_reference(a.reference)
        except FileNotFoundError as e:
            p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    bench = Bench(a)
    info = bench.load()
    if "default" in configs:  # the reference for speed-up, memory and error runs first
        configs.remove("default")
        configs.insert(0, "default")
    env = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "comfyui": bench.comfy.version,
           "commit": os.environ.get("SPARSEFLOW_COMMIT") or boot.git_commit(),
           "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "steps": a.steps, "warmup_steps": a.warmup_steps, "cfg": a.cfg, "sampler": a.sampler,
           "scheduler": a.scheduler, "seed": a.seed,
           "budget": a.budget, "backend": bench.backend}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    env["comfyui_tree"] = info["comfyui_tree"] = boot.comfyui_tree(bench.comfy)
    try:
        from importlib.metadata import version
        env["comfy_kitchen"] = version("comfy-kitchen")
    except Exception:  # noqa: BLE001 - not installed: the newest tree's forward runs its PyTorch branches
        env["comfy_kitchen"] = None
    bench.run_meta = {"model": info["model"], "dtype": info["dtype"], "seed": a.seed, "steps": a.steps,
                      "warmup_steps": a.warmup_steps, "cfg": a.cfg, "sampler": a.sampler, "scheduler": a.scheduler,
                      "latent_shape": list(bench.latent.shape),
                      **{k: env[k] for k in ("gpu", "commit", "timestamp", "torch", "comfyui", "comfyui_tree")}}
    if a.reference is not None:
        wrong = mismatches(ref_meta, bench.run_meta)
        if wrong:
            p.error(f"--reference {a.reference} sampled something else: " + "; ".join(wrong))
        bench.reference_latent = ref_latent
        bench.default_step, bench.default_peak = ref_meta["s_per_step"], ref_meta["peak_gib"]
        bench.reference = env["reference"] = {
            "file": a.reference.name, **{k: ref_meta[k] for k in ("commit", "timestamp", "gpu", "s_per_step",
                                                                  "peak_gib", "timed_steps")}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # the JSON of every row so far
        (out / f"e2e_{info['model']}{a.tag}.json").write_text(json.dumps({"env": env, "model": info,
                                                                  "rows": bench.results}, indent=1, default=str))

    for name in configs:
        bench.run(name)   # with --tiny, sage and sol_attn run their CPU fallbacks (code path only)
        text = table(info, bench.results, bench.reference)
        save()  # after each configuration: a killed run keeps its rows
    print(f"\n{json.dumps(env)}\n{text}")
    for name in [c for c in a.profile.split(",") if c]:
        profile(bench, name, out)
    for name in peaks:
        memory_peak(bench, name, out, a.tag)
    if peaks:
        save()  # with the rows' memory_at_peak


if __name__ == "__main__":
    main()
