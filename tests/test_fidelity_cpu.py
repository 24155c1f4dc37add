"""Fidelity bench on CPU at tiny size: calibration through the capture hook, the attention override, metrics,
the Wan checkpoint layout and a few training steps of ComfyUI's own WanModel (skipped loudly without ComfyUI)."""

import os

import pytest
import torch
from comfy_env import comfy_path, requires_comfy  # noqa: I001 - tests/ is on sys.path
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE
from comfyui_sparseflow.sparseflow.quality import psnr, ssim, temporal
from comfyui_sparseflow.sparseflow.reference import reference_attention
from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.schedule import Keyframe, Schedule, StepParams
from comfyui_sparseflow.sparseflow.synthetic import structured_qkv

from bench.fidelity.calib import calibrate_captures, calibrated_map
from bench.fidelity.hooks import CaptureOverride, SparseFlowOverride, plan_for, sigma_at_percent

if comfy_path() is not None:  # the fidelity model and the test fixture must import the same ComfyUI
    os.environ.setdefault("COMFYUI_PATH", str(comfy_path()))

needs_comfy = requires_comfy


def _ref(q, k, v, plan, *, heads=None):
    return reference_attention(q, k, v, plan, heads=heads)


def _to_comfy_layout(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def _dense_func(q, k, v, heads, **kwargs):  # stands in for ComfyUI's backend; never reached for self-attention
    raise AssertionError("the override must not call func")


def test_calibration_through_capture_hook_picks_dense_sparse_linear():
    """q/k/v enter the capture override in ComfyUI's (B, L, H*D) layout, two layers, two steps; calibration
    must pick dense for the global head, sparse for the temporally local one, linear for the smooth one."""
    g = Geometry(9, 8, 16)
    layers = 2
    cap = CaptureOverride(layers, {0, 1})
    for step in range(2):
        cap.begin_step(step, 2, 1.0 - step / 2)
        for layer in range(layers):
            # seeds 0..2: their smooth head is smooth enough for linear at 0.1 (seed 3 is not: error 0.23)
            q, k, v = structured_qkv(g, ("global", "local", "smooth"), dim=128, seed=(layer + step) % 3)
            cap(_dense_func, *(_to_comfy_layout(t) for t in (q, k, v)), 3)
    assert [(c.layer, c.step) for c in cap.captures] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert cap.captures[0].q.shape == (1, 3, g.length, 128)
    table = calibrate_captures(cap.captures, g, _ref, block=64)
    rmap, res = calibrated_map(table, layers, budget=0.1)
    assert rmap.routes.tolist() == [[DENSE, SPARSE, LINEAR]] * layers, res.report()
    assert (rmap.window[:, 1] >= 0).all() and (rmap.window[:, 0] == -1).all()
    assert res.mean_cost() < 0.8


def test_plan_for_takes_schedule_values_and_dense_flag():
    g = Geometry(5, 8, 16)
    rmap = routing_preset("alternating", 2, 2)
    plan = plan_for(g, rmap, 1, StepParams(window=2, topk=1, compensation=True, dense=False))
    assert plan.routes == (SPARSE, LINEAR) and plan.window == (2, 2) and plan.topk == (1, 1) and plan.compensation
    dense = plan_for(g, rmap, 1, StepParams(window=2, topk=0, compensation=False, dense=True))
    assert dense.routes == (DENSE, LINEAR)


def test_sparseflow_override_counts_layers_and_runs_the_plan():
    g = Geometry(6, 8, 16)  # 768 tokens, 6 blocks of 128
    q, k, v = (_to_comfy_layout(t) for t in structured_qkv(g, ("local", "smooth"), dim=128, seed=3))
    full = Schedule((Keyframe(0.0, g.frames - 1, compensation=False),))
    narrow = Schedule((Keyframe(0.0, 0, compensation=False),))
    dense = reference_attention(q, k, v, plan_for(g, routing_preset("all_dense", 2, 2), 0, full.at(0)), heads=2)
    outs = {}
    for name, sched in (("full", full), ("narrow", narrow)):
        ov = SparseFlowOverride(g, routing_preset("all_sparse", 2, 2), sched, _ref)
        ov.begin_step(0, 1, 1.0)
        outs[name] = [ov(_dense_func, q, k, v, 2) for _ in range(3)]
        assert ov.calls == 3 and sorted(key[0] for key in ov._plans) == [0, 1]
    assert torch.allclose(outs["full"][0], dense, atol=1e-5)  # window >= T - 1: sparse equals dense (spec 5.2)
    err = (outs["narrow"][0] - dense).norm() / dense.norm()
    assert err > 1e-3, "window 0 must differ from dense on a head that spans frames"


def test_sol_attn_start_percent_matches_comfy_flow_shift():
    assert sigma_at_percent(0.0, 3.0) == 1.0 and sigma_at_percent(1.0, 3.0) == 0.0
    assert sigma_at_percent(0.2, 3.0) == pytest.approx(3 * 0.8 / (1 + 2 * 0.8))


def test_metrics_identity_noise_and_motion():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 4, 5, 16, 16, generator=gen).cumsum(dim=2)
    assert torch.isinf(psnr(ref, ref)).all()
    assert torch.allclose(ssim(ref, ref), torch.ones(2))
    small, big = (ref + s * torch.randn(ref.shape, generator=gen) for s in (0.01, 0.3))
    assert (psnr(small, ref) > psnr(big, ref) + 10).all()
    assert (ssim(small, ref) > ssim(big, ref)).all()
    frozen = ref[:, :, :1].expand_as(ref)
    assert temporal(ref, ref)["motion_ratio"] == pytest.approx(1.0)
    assert temporal(frozen, ref)["motion_ratio"] == 0.0


def test_procedural_videos_are_seeded():
    from bench.fidelity.data import make_batch
    from bench.fidelity.model import ModelConfig

    cfg = ModelConfig(frames=3, height=8, width=8)
    a, ca = make_batch(cfg, 2, seed=5)
    b, cb = make_batch(cfg, 2, seed=5)
    c, _ = make_batch(cfg, 2, seed=6)
    assert a.shape == (2, 16, 3, 8, 8) and torch.equal(a, b) and torch.equal(ca, cb)
    assert not torch.equal(a, c)
    assert 0.3 < float(a.std()) < 3.0


TINY = dict(dim=256, ffn_dim=512, num_layers=1, frames=3, height=8, width=8)


@needs_comfy
def test_a_few_training_steps_reduce_the_flow_loss():
    from bench.fidelity.data import make_batch
    from bench.fidelity.model import ModelConfig, build_model
    from bench.fidelity.train import flow_loss

    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    x0, classes = make_batch(cfg, 2, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = flow_loss(model, cfg, x0, classes, torch.Generator().manual_seed(1))  # same noise and t each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


@needs_comfy
def test_checkpoint_has_wan_keys_and_loads_in_comfyui(tmp_path):
    from comfy_env import import_comfy
    from tiny_wan import TinyWanSpec, state_dict_shapes

    from bench.fidelity.model import ModelConfig, build_model, load_checkpoint, save_checkpoint

    cfg = ModelConfig(**TINY)
    model = build_model(cfg)
    path = save_checkpoint(model, cfg, tmp_path / "fidelity_tiny.safetensors")
    want = state_dict_shapes("wan21_t2v", TinyWanSpec(dim=256, ffn_dim=512, num_layers=1))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want
    comfy = import_comfy()
    patcher = comfy.sd.load_diffusion_model(str(path))
    assert type(patcher.model.model_config).__name__ == "WAN21_T2V"
    back, cfg2 = load_checkpoint(path)
    assert cfg2 == cfg
    a = model.state_dict()["blocks.0.self_attn.q.weight"].to(torch.bfloat16).float()
    assert torch.equal(back.state_dict()["blocks.0.self_attn.q.weight"], a)


@needs_comfy
def test_the_benchs_extra_schedules_are_the_schedule_nodes_custom_sliders():
    """docs/fidelity.md's quality_w2 / quality_dense70 rows are reachable in ComfyUI: SparseFlow Schedule, preset
    custom, early_window / late_window / dense_from."""
    from test_nodes_common import load_pack

    from bench.fidelity.evaluate import EXTRA_SCHEDULES

    build = load_pack().schedule.build_schedule
    w2 = build("custom", early_window=2, late_window=2, dense_from=0.85)
    d70 = build("custom", early_window=1, late_window=2, dense_from=0.7)
    assert w2.keyframes == EXTRA_SCHEDULES["quality_w2"].keyframes
    assert d70.keyframes == EXTRA_SCHEDULES["quality_dense70"].keyframes


@needs_comfy
def test_the_quality_target_family_picks_per_target_and_lands_on_the_plot():
    """bench/fidelity/target.py on a tiny fidelity model: every setting previewed against dense, a tighter target
    never picks a cheaper setting, the chosen setting's preview PSNR re-computed here, and evaluate.py / report.py
    carry the family to the table and the plot."""
    import math

    from comfyui_sparseflow.sparseflow import target_search as ts

    from bench.fidelity import report, target
    from bench.fidelity.evaluate import Setting, _sparseflow_setup, _target_settings
    from bench.fidelity.hooks import DenseOverride
    from bench.fidelity.model import ModelConfig, build_model
    from bench.fidelity.sampler import held_out_noise, sample

    cfg = ModelConfig(**{**TINY, "frames": 8, "height": 16, "width": 16})  # 512 tokens: 4 blocks of 128
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # Wan's init zeroes the output paths: random weights make attention reach the output
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    g = Geometry(8, 8, 8)
    maps = {0.0: routing_preset("all_dense", 1, 2), 1.0: routing_preset("all_sparse", 1, 2)}
    noise, classes = held_out_noise(cfg, 1, 7, "cpu")
    targets = tuple(ts.QualityTarget("psnr_db", v) for v in (1.0, 60.0, 200.0))
    found = target.search(model, cfg, maps, g, _ref, noise, classes, steps=2, shift=3.0, targets=targets,
                          space=ts.SearchSpace((0.5, 1.0), (0.0, 1.0)))
    assert len(found["trials"]) == 4
    speed = {(t["sparsity"], t["budget"]): t["est_speedup"] for t in found["trials"]}
    assert speed[(0.5, 0.0)] == 1.0 and speed[(1.0, 1.0)] > speed[(0.5, 1.0)] > 1.0
    chosen = [found["choices"][t.describe()] for t in targets]
    assert [c["est_speedup"] for c in chosen] == sorted((c["est_speedup"] for c in chosen), reverse=True)
    assert chosen[0]["met"] and (chosen[0]["sparsity"], chosen[0]["budget"]) == (1.0, 1.0)
    assert chosen[2]["budget"] == 0.0 and chosen[2]["est_speedup"] == 1.0  # only all-dense comes that close

    # the chosen setting re-sampled from scratch, PSNR written out here
    settings = _target_settings(found)
    s0 = settings[0]
    assert s0.family == "target" and s0.name == "sparseflow target >= 1 dB"
    rmap, sched = _sparseflow_setup(s0, maps, 1, 2)
    assert rmap is maps[1.0] and sched == target.target_schedule(1.0)
    ref = sample(model, cfg, noise, classes, DenseOverride(1), steps=2, shift=3.0)
    x = sample(model, cfg, noise, classes, SparseFlowOverride(g, rmap, sched, _ref), steps=2, shift=3.0)
    mine = 10 * math.log10(float(ref.max() - ref.min()) ** 2 / float(((x - ref) ** 2).mean()))
    assert chosen[0]["preview_psnr"] == pytest.approx(mine, abs=1e-3)

    # report.py: the family's table and its own legend entry on the plot
    res = {"device": "cpu", "torch": torch.__version__, "backend": "reference", "model": {}, "sampling": {},
           "target_search": found, "settings": []}
    for s in settings + [Setting("sparseflow heuristic / balanced", "preset", "heuristic", "balanced")]:
        d = {**s.__dict__, "metrics": {"psnr": 31.0, "psnr_min": 30.0, "ssim": 0.9, "rgb_psnr": 30.0,
                                       "motion_ratio": 1.0, "diff_rel_err": 0.1, "speedup_tiny": 2.0,
                                       "speedup_wan13b": 3.0}}
        res["settings"].append(d)
    text = report.tables(res)
    met = "yes" if chosen[2]["met"] else "NO"
    assert f"| PSNR vs dense >= 200 dB | 0.5 | 0 | {met} |" in text and "sparseflow target >= 60 dB" in text
    pts = report.points(res, "speedup_wan13b")  # what plot() draws (matplotlib is only on the GPU machine)
    assert [p[2] for p in pts["target"]] == [s.name for s in settings] and len(pts["preset"]) == 1
    assert report.FAMILIES["target"][2] == "SparseFlow Calibrate to Target"
