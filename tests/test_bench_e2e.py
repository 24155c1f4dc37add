"""bench/e2e_comfy.py on the CPU with a tiny checkpoint (the GPU bench's own code path, reference backend):
which steps s/step averages, with and without an untimed warm-up sampling (skipped loudly without ComfyUI)."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfy_env import comfy_path, requires_comfy  # noqa: I001 - tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]

pytestmark = requires_comfy


def _run(tmp_path: Path, *args: str) -> dict:
    env = dict(os.environ, COMFYUI_PATH=str(comfy_path()), SPARSEFLOW_COMMIT="test")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "e2e_comfy.py"), "--tiny", "--out", str(tmp_path),
                           "--configs", "default,sparseflow_quality", "--steps", "3", *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "e2e_tiny.json").read_text())
    data["stdout"] = proc.stdout
    return data


def test_without_warmup_step_0_is_left_out_of_s_per_step(tmp_path):
    data = _run(tmp_path)
    assert data["env"]["warmup_steps"] == 0
    for row in data["rows"]:
        assert row["status"] == "ok", row
        assert len(row["steps"]) == 3 and row["timed_steps"] == "1.."
        assert row["s_per_step"] == pytest.approx(statistics.mean(row["steps"][1:]))
        assert "warmup_s" not in row
    assert "mean of steps 1.." in data["stdout"]


def test_with_warmup_every_step_is_timed(tmp_path):
    """A schedule's dense steps count wherever they fall (sol_attn's first 20 %, `quality`'s last 15 %)."""
    data = _run(tmp_path, "--warmup-steps", "2")
    assert data["env"]["warmup_steps"] == 2
    rows = {r["config"]: r for r in data["rows"]}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert len(row["steps"]) == 3 and row["timed_steps"] == "all"
        assert row["s_per_step"] == pytest.approx(statistics.mean(row["steps"]))
        assert row["warmup_s"] > 0
        assert row["first_step_overhead_s"] == pytest.approx(row["warmup_s"] - 2 * row["s_per_step"])
        assert row["breakdown_calls"] == 3  # the warm-up's model calls are not in the breakdown
    # the warm-up leaves the sampled latent alone: same seed, same result as the default run's own
    assert rows["default"]["rel_err"] == 0 and rows["sparseflow_quality"]["rel_err"] > 0
    assert "mean of all steps, after an untimed warm-up sampling" in data["stdout"]


def test_a_saved_default_run_stands_in_for_default_in_a_later_run(tmp_path):
    """--save-reference / --reference: a later run compares against the saved default run, and refuses one that
    sampled something else (a 14B default run alone is a quarter of a device call)."""
    first = _run(tmp_path / "a", "--warmup-steps", "1", "--save-reference")
    rows = {r["config"]: r for r in first["rows"]}
    saved = rows["default"]["saved_reference"]
    assert saved and all((tmp_path / "a" / name).is_file() for name in saved)
    stem = tmp_path / "a" / "reference_tiny"

    later = _run(tmp_path / "b", "--warmup-steps", "1", "--configs", "sparseflow_quality", "--reference", str(stem))
    (row,) = later["rows"]
    assert row["status"] == "ok" and row["vs_reference"] == "reference_tiny"
    assert later["env"]["reference"]["s_per_step"] == rows["default"]["s_per_step"]
    # the same sampling as the first run's sparseflow_quality row, measured against the same default latent
    assert row["rel_err"] == pytest.approx(rows["sparseflow_quality"]["rel_err"], rel=1e-5)
    assert row["rel_err"] > 0
    assert row["speedup"] == pytest.approx(rows["default"]["s_per_step"] / row["s_per_step"])
    assert "against the default run saved in reference_tiny" in later["stdout"]

    env = dict(os.environ, COMFYUI_PATH=str(comfy_path()), SPARSEFLOW_COMMIT="test")
    base = [sys.executable, str(REPO / "bench" / "e2e_comfy.py"), "--tiny", "--out", str(tmp_path / "c"),
            "--reference", str(stem)]
    other_steps = subprocess.run(base + ["--configs", "sparseflow", "--steps", "2", "--warmup-steps", "1"],
                                 capture_output=True, text=True, env=env, timeout=600)
    assert other_steps.returncode == 2
    assert "sampled something else: steps: reference 3, this run 2" in other_steps.stderr
    both = subprocess.run(base + ["--configs", "default,sparseflow"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert both.returncode == 2 and "--reference replaces the `default` configuration" in both.stderr


SHARED = Path(os.environ.get("SPARSEFLOW_SHARED", REPO.parent / "shared"))


@pytest.mark.skipif(not (SHARED / "comfyui" / "newest-overlay" / "files").is_dir(),
                    reason=f"no ComfyUI trees at {SHARED}/comfyui (0.3.64 and newest-overlay)")
def test_the_gpu_runner_builds_both_trees_and_runs_each_in_one_call(tmp_path):
    """bench/run_e2e_gpu.sh build-trees + trees, as the GPU call runs them (--tiny on the CPU): the newest-shape tree
    (0.3.64 + newest-overlay/files + with_comfy_kitchen.py) first, then 0.3.64, one JSON each."""
    env = dict(os.environ, E2E_TREES=str(tmp_path), OUT=str(tmp_path / "out"), SPARSEFLOW_COMMIT="test",
               SPARSEFLOW_SHARED=str(SHARED))
    env.pop("COMFYUI_PATH", None)
    script = str(REPO / "bench" / "run_e2e_gpu.sh")
    build = subprocess.run(["bash", script, "build-trees"], capture_output=True, text=True, env=env, timeout=300)
    assert build.returncode == 0, build.stderr
    assert "ck.apply_rope1" in (tmp_path / ".comfy_e2e_newest" / "comfy" / "ldm" / "flux" / "math.py").read_text()
    run = subprocess.run(["bash", script, "trees", "tiny", "--steps", "2"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    forwards = {"newest": "ComfyUI newest", "0364": "ComfyUI 0.3.64"}
    for tag, tree in (("newest", "newest-overlay+comfy-kitchen"), ("0364", "0.3.64")):
        data = json.loads((tmp_path / "out" / f"e2e_tiny_{tag}.json").read_text())
        assert data["env"]["comfyui_tree"] == tree
        rows = {r["config"]: r for r in data["rows"]}
        assert set(rows) == {"default", "sparseflow_quality"} and all(r["status"] == "ok" for r in rows.values())
        summary = rows["sparseflow_quality"]["sparseflow_summary"]
        assert f"(Wan forward: {forwards[tag]}" in summary and "passed to ComfyUI attention: cross-attention" in summary


def test_the_compare_configuration_times_the_compare_nodes_two_runs_and_its_dense_run_is_default(tmp_path):
    data = _run(tmp_path, "--configs", "default,sparseflow,compare", "--steps", "1", "--breakdown", "")
    rows = {r["config"]: r for r in data["rows"]}
    row = rows["compare"]
    assert row["status"] == "ok", row.get("error")
    assert row["dense_rel_err_vs_default"] == 0.0  # the node's dense run samples exactly what `default` sampled
    assert row["total_s"] >= row["patched_s"] + row["dense_s"]
    both = rows["default"]["total_s"] + rows["sparseflow"]["total_s"]
    assert row["vs_default_plus_sparseflow"] == pytest.approx(row["total_s"] / both)
    assert "- compare: patched run" in data["stdout"] and "x (default + sparseflow totals)" in data["stdout"]


def test_memory_peak_replays_the_trace_to_the_peak_and_sums_what_is_alive_by_site():
    from bench.e2e.memory_peak import peak_sites

    def ev(action, addr, size, where):
        return {"action": action, "addr": addr, "size": size,
                "frames": [{"filename": "/x/torch/nn/functional.py", "line": 1, "name": "linear"},
                           {"filename": f"/repo/nodes/{where}.py", "line": 7, "name": where}]}

    trace = [ev("alloc", 1, 100, "q"), ev("alloc", 2, 50, "k"), ev("free_requested", 1, 100, "q"),
             ev("free_completed", 1, 100, "q"), ev("alloc", 3, 200, "ffn"), ev("alloc", 4, 30, "ffn"),
             ev("free_completed", 3, 200, "ffn"), ev("alloc", 5, 60, "o")]
    peak, sites = peak_sites(trace)
    assert peak == 280  # k + both ffn blocks; q was freed before, o comes after
    assert sites == [("ffn.py:7 ffn", 230, 2), ("k.py:7 k", 50, 1)]


def test_the_edge_configurations_route_the_first_and_last_layers(tmp_path):
    """sparseflow_edgeNN: the heuristic preset with its first and last layer sparse at window NN, every head;
    sparseflow_dense_edges: the heuristic preset itself (the default before heuristic_sparse_edges). The tiny bench
    model has 4 layers x 2 heads: 4 dense heads in sparseflow_dense_edges, none in the others."""
    import importlib

    e2e = importlib.import_module("bench.e2e_comfy")
    rmap = e2e.sparse_edges(30, 12, 4)
    base = e2e.routing_preset("heuristic", 30, 12)
    assert rmap.counts()["dense"] == 0 and base.counts()["dense"] == 24
    assert (rmap.window[[0, 29]] == 4).all() and (rmap.window[1:29] == -1).all()
    assert torch.equal(rmap.routes[1:29], base.routes[1:29])
    data = _run(tmp_path, "--configs", "default,sparseflow,sparseflow_edge01,sparseflow_dense_edges", "--steps", "2",
                "--breakdown", "")
    rows = {r["config"]: r for r in data["rows"]}
    for name in ("sparseflow", "sparseflow_edge01", "sparseflow_dense_edges"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["rel_err"] > 0
    assert "heads sparse 8 / linear 0 / dense 0," in rows["sparseflow_edge01"]["sparseflow_summary"]
    assert "heads sparse 8 / linear 0 / dense 0," in rows["sparseflow"]["sparseflow_summary"]
    assert "heads sparse 4 / linear 0 / dense 4," in rows["sparseflow_dense_edges"]["sparseflow_summary"]


def test_the_profile_timeline_unions_kernel_intervals_and_sums_time_per_family():
    from types import SimpleNamespace as NS

    from bench.e2e.profiling import device_timeline, kernel_family

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(name, a, b, dev=cuda):
        return NS(name=name, device_type=dev, time_range=NS(start=a, end=b))

    events = [ev("nvjet_sm90_hsh_192x192", 0, 1000), ev("_fused_fwd_kernel", 500, 1500),  # overlap: busy 1500
              ev("_add_norm_kernel", 3000, 3500), ev("aten::addmm", 0, 9000, cpu)]  # gap of 1500, CPU ignored
    tl = device_timeline(events)
    assert (tl.kernels, tl.busy_ms, tl.span_ms, tl.idle_ms) == (3, 2.0, 3.5, 1.5)
    assert tl.by_family_ms == {"GEMM": 1.0, "sparseflow attention": 1.0, "sparseflow block passes": 0.5}
    assert kernel_family("cudnn_generated_fort_native_sdpa_sm90") == "SDPA (ComfyUI attention)"
    assert kernel_family("vectorized_elementwise_kernel<GeluCUDAKernelImpl>") == "other"
    assert device_timeline([]).busy_ms == 0.0
