"""SparseFlow Calibrate to Target end to end on a tiny Wan in real ComfyUI (CPU), and Calibrate fed a patched model.

The report's numbers are checked against an independent re-sampling of the chosen setting and of dense, with PSNR
computed here; a tighter target is checked never to pick a cheaper setting; a patched model is checked to calibrate
exactly as the unpatched one (issue 18).
"""

from __future__ import annotations

import logging
import math

import pytest
import tiny_wan as tw
import torch
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow import target_search as ts
from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.schedule import schedule_preset
from test_nodes_common import BIG, pack, tiny_models  # noqa: F401

pytestmark = requires_comfy

STEPS, CFG, SEED = 2, 3.0, 2
# 4 settings: budget 1e6 takes the cheapest route on every head, 0.05 keeps the tiny model's heads dense; with the
# 'quality' schedule, sparsity 0.5 keeps its dense last step and 1.0 drops it
SPACE = ts.SearchSpace((0.5, 1.0), (0.05, 1e6))


def _inputs(comfy):  # noqa: F811
    latent = tw.empty_latent(tw.WAN21_T2V, *BIG)
    positive, negative = tw.make_conditioning(comfy, tw.WAN21_T2V, latent, seed=SEED)
    return positive, negative, {"samples": latent}


def _search(comfy, pack, model, target, space=SPACE):  # noqa: F811
    from comfyui_sparseflow.nodes.calibrate_target import calibrate_to_target

    positive, negative, latent = _inputs(comfy)
    return calibrate_to_target(model, positive, negative, latent, target=target, space=space, steps=STEPS, cfg=CFG,
                               seed=SEED, block=64, backend="reference", schedule=schedule_preset("quality"))


def _my_psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB written out here (peak: the reference's value range), independent of sparseflow/quality.py."""
    x, ref = x.double(), ref.double()
    peak = float(ref.max() - ref.min())
    mse = float(((x - ref) ** 2).mean())
    return 10 * math.log10(peak * peak / mse) if mse > 0 else math.inf


@pytest.fixture(scope="module")
def loose(comfy, pack, tiny_models):  # noqa: F811
    """One search at a target every setting meets (PSNR >= 1 dB), with the progress it reported."""
    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append(
        (value, total)))
    try:
        out = _search(comfy, pack, tiny_models[tw.WAN21_T2V], ts.QualityTarget("psnr_db", 1.0))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    return out, progress


def test_reported_quality_equals_an_independent_resampling_of_the_chosen_setting(comfy, pack, tiny_models, loose):  # noqa: F811
    out, progress = loose
    model = tiny_models[tw.WAN21_T2V]
    positive, negative, latent = _inputs(comfy)
    dense = tw.sample_tiny(comfy, model, latent["samples"], positive, negative, steps=STEPS, cfg=CFG, seed=SEED)
    patched = pack.patch.apply_sparseflow(model, routing=out.routing, sparsity=out.sparsity, block=64,
                                          backend="reference", schedule=schedule_preset("quality"))
    chosen = tw.sample_tiny(comfy, patched, latent["samples"], positive, negative, steps=STEPS, cfg=CFG, seed=SEED)
    m = out.result.chosen.measurement
    assert out.result.met and m.nonfinite == 0
    mine = _my_psnr(chosen, dense)
    assert math.isfinite(mine) and mine > 1.0
    assert m.psnr == pytest.approx(mine, abs=1e-3)
    rel = float((chosen.double() - dense.double()).norm() / dense.double().norm())
    assert m.rel_err == pytest.approx(rel, rel=1e-4)
    assert f"PSNR {mine:.2f} dB" in out.report and "not a timing" in out.report
    # the loosest target takes the cheapest setting: every head on its cheapest route, no dense step
    assert (out.result.chosen.setting.sparsity, out.result.chosen.setting.budget) == (1.0, 1e6)
    assert m.cost == min(t.measurement.cost for t in out.result.trials) and m.speedup > 1.0
    rows = [line for line in out.report.splitlines() if line.count(" | ") == 6]
    assert len(out.result.trials) == 4 and len(rows) == 5 and rows[-1].endswith("<- chosen")  # header + 4 settings
    assert progress[-1] == (STEPS * 5, STEPS * 5)  # 1 dense + 4 settings, STEPS ticks each


def test_a_tighter_target_never_picks_a_sparser_setting_and_the_search_is_deterministic(comfy, pack, tiny_models,  # noqa: F811
                                                                                        loose):
    out, _ = loose
    trials = out.result.trials
    finite = sorted({t.measurement.psnr for t in trials if math.isfinite(t.measurement.psnr)})
    assert len(finite) >= 2, [t.measurement for t in trials]
    tight_db = out.result.chosen.measurement.psnr + 1e-3  # the loose choice fails it; a denser setting meets it
    tight = _search(comfy, pack, tiny_models[tw.WAN21_T2V], ts.QualityTarget("psnr_db", tight_db))
    assert [t.measurement for t in tight.result.trials] == [t.measurement for t in trials]  # same seed, same numbers
    assert tight.result.met
    assert tight.result.chosen.measurement.psnr >= tight_db
    assert tight.result.chosen.measurement.cost > out.result.chosen.measurement.cost


def test_an_unmeetable_target_gives_the_densest_setting_and_says_so(comfy, pack, tiny_models, caplog):  # noqa: F811
    with caplog.at_level(logging.WARNING, logger="sparseflow.nodes"):
        out = _search(comfy, pack, tiny_models[tw.WAN21_T2V], ts.QualityTarget("psnr_db", 200.0),
                      space=ts.SearchSpace((0.75, 1.0), (1e6,)))
    assert not out.result.met
    costs = [t.measurement.cost for t in out.result.trials]
    assert out.result.chosen.measurement.cost == max(costs) and len(set(costs)) == 2
    assert out.sparsity == 0.75
    assert "NO SETTING MEETS THE TARGET (PSNR vs dense >= 200 dB)" in out.report
    assert any("NO SETTING MEETS THE TARGET" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": "relative_error", "target": 5.0}, r"target: with metric relative_error .* \[0, 1\]; got 5\.0"),
    ({"metric": "psnr_db", "target": 0.5}, r"target: with metric psnr_db .* \[1, 200\] dB; got 0\.5"),
    ({"metric": "ssim"}, r"metric must be one of psnr_db, relative_error; got 'ssim'"),
    ({"sparsity_values": "0.5, 1.5"}, r"sparsity_values: every value must be a number in \[0, 1\]; got 1\.5"),
    ({"sparsity_values": "half"}, r"sparsity_values: expected numbers separated by commas"),
    ({"error_budgets": ""}, r"error_budgets: expected finite numbers"),
    ({"error_budgets": "-0.1"}, r"error_budgets: every value must be a number in \[0, 1e\+06\]; got -0\.1"),
])
def test_bad_inputs_fail_at_once_naming_the_input_and_the_allowed_range(comfy, pack, tiny_models, kwargs, match):  # noqa: F811
    from comfyui_sparseflow.nodes.calibrate_target import SparseFlowCalibrateToTarget

    positive, negative, latent = _inputs(comfy)
    args = dict(model=tiny_models[tw.WAN21_T2V], positive=positive, negative=negative, latent=latent,
                metric="psnr_db", target=30.0, preview_steps=STEPS, cfg=CFG, seed=SEED, sampler_name="euler",
                scheduler="simple", sparsity_values="0.5", error_budgets="0.1", block_size="64")
    ticks = []
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: ticks.append(a))
    try:
        with pytest.raises(ValueError, match=match):
            SparseFlowCalibrateToTarget.execute(**{**args, **kwargs})
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert ticks == []  # refused before any sampling


def test_an_interrupt_stops_the_search(comfy, pack, tiny_models):  # noqa: F811
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _search(comfy, pack, tiny_models[tw.WAN21_T2V], ts.QualityTarget("psnr_db", 30.0))
    finally:
        mm.interrupt_current_processing(False)


def test_calibrate_fed_the_patch_nodes_output_calibrates_against_true_dense(comfy, pack, tiny_models, caplog):  # noqa: F811
    """Issue 18: Calibrate on SparseFlow Patch's output equals Calibrate on the unpatched model (and says so)."""
    model = tiny_models[tw.WAN21_T2V]
    positive, negative, latent = _inputs(comfy)
    patched = pack.patch.apply_sparseflow(model, routing=routing_preset("alternating", 2, 2), sparsity=1.0, block=64,
                                          backend="reference")
    kw = dict(steps=2, cfg=CFG, seed=SEED, budget=0.1, measure=2, block=64)
    want, want_report = pack.calibrate.calibrate_model(model, positive, negative, latent, **kw)
    with caplog.at_level(logging.WARNING, logger="sparseflow.nodes"):
        got, got_report = pack.calibrate.calibrate_model(patched, positive, negative, latent, **kw)
    assert torch.equal(got.routes, want.routes) and torch.equal(got.window, want.window)
    assert torch.equal(got.error, want.error)
    assert got_report == want_report
    assert any("already patched by SparseFlow Patch" in r.getMessage() for r in caplog.records)
    # the patched model itself keeps its patch
    assert pack.config.SPARSEFLOW_KEY in patched.model_options["transformer_options"]


def test_calibrate_to_target_fed_the_patch_nodes_output_searches_from_true_dense(comfy, pack, tiny_models, loose):  # noqa: F811
    out, _ = loose
    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], routing=routing_preset("alternating", 2, 2),
                                          sparsity=1.0, block=64, backend="reference")
    again = _search(comfy, pack, patched, ts.QualityTarget("psnr_db", 1.0))
    assert [t.measurement for t in again.result.trials] == [t.measurement for t in out.result.trials]
    assert again.report == out.report
