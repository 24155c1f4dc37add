"""sparseflow/target_search.py without ComfyUI: targets, the choice, NaN previews, the report, effective patches."""

from __future__ import annotations

import math

import pytest
import torch
from comfyui_sparseflow.sparseflow import target_search as ts
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE
from comfyui_sparseflow.sparseflow.routing import RoutingMap
from comfyui_sparseflow.sparseflow.schedule import scaled, schedule_preset


def _m(psnr: float, cost: float, dense_cost: float = 100.0, nonfinite: int = 0) -> ts.Measurement:
    rel = math.nan if nonfinite else 10 ** (-psnr / 20)
    return ts.Measurement(psnr, psnr, rel, nonfinite, cost, dense_cost)


def _trials() -> list[ts.Trial]:
    """Cheaper settings are worse, as in practice, plus one NaN preview that would be the cheapest."""
    return [ts.Trial(ts.Setting(0.25, 0.02), _m(45.0, 90.0)), ts.Trial(ts.Setting(0.5, 0.05), _m(35.0, 60.0)),
            ts.Trial(ts.Setting(0.75, 0.1), _m(28.0, 40.0)),
            ts.Trial(ts.Setting(1.0, 0.2), _m(math.nan, 10.0, nonfinite=3))]


def test_the_cheapest_setting_meeting_the_target_is_chosen():
    r = ts.choose(ts.QualityTarget("psnr_db", 30.0), _trials())
    assert r.met and r.chosen.setting == ts.Setting(0.5, 0.05)
    assert r.chosen.measurement.speedup == pytest.approx(100 / 60)


@pytest.mark.parametrize("metric, values", [("psnr_db", [1.0, 20.0, 28.0, 30.0, 35.0, 40.0, 45.0]),
                                            ("relative_error", [1.0, 0.04, 0.03, 0.01, 0.005])])
def test_tighter_targets_never_choose_a_cheaper_setting(metric, values):
    costs = [ts.choose(ts.QualityTarget(metric, v), _trials()).chosen.measurement.cost for v in values]
    assert costs == sorted(costs) and len(set(costs)) >= 3


def test_a_nan_preview_is_infeasible_even_when_cheapest_and_the_report_says_nan():
    r = ts.choose(ts.QualityTarget("relative_error", 1.0), _trials())
    assert r.chosen.setting == ts.Setting(0.75, 0.1)
    text = ts.search_report(r)
    nan_row = next(line for line in text.splitlines() if line.startswith("       1 |"))
    assert "NaN" in nan_row and nan_row.rstrip().endswith("| NaN")


def test_no_setting_meeting_the_target_gives_the_densest_and_says_so():
    r = ts.choose(ts.QualityTarget("psnr_db", 60.0), _trials())
    assert not r.met and r.chosen.setting == ts.Setting(0.25, 0.02)
    assert "NO SETTING MEETS THE TARGET (PSNR vs dense >= 60 dB)" in ts.search_report(r)


def test_measure_reads_psnr_relative_error_and_nonfinite_values():
    ref = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = ref + 0.01 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    m = ts.measure(x, ref, 25, 100)
    mse = float(((x - ref) ** 2).mean())
    peak = float(ref.max() - ref.min())
    assert m.psnr == pytest.approx(10 * math.log10(peak ** 2 / mse), rel=1e-5)
    assert m.worst_frame_psnr <= m.psnr + 1e-3 and m.speedup == 4.0 and m.nonfinite == 0
    x[0, 0, 1, 0, 0] = math.nan
    bad = ts.measure(x, ref, 25, 100)
    assert bad.nonfinite == 1 and math.isnan(bad.psnr) and math.isnan(bad.rel_err)
    assert not ts.QualityTarget("relative_error", 1.0).met_by(bad)
    assert ts.measure(ref.clone(), ref, 100, 100).psnr == math.inf


@pytest.mark.parametrize("metric, value, match", [
    ("psnr_db", 0.5, r"\[1, 200\] dB; got 0\.5"), ("psnr_db", 250.0, r"got 250"),
    ("relative_error", 1.5, r"\[0, 1\]; got 1\.5"), ("relative_error", math.nan, r"got nan"),
    ("ssim", 0.9, "metric must be one of"), ("psnr_db", True, "got True")])
def test_out_of_range_targets_name_the_input_and_the_allowed_range(metric, value, match):
    with pytest.raises(ValueError, match=match):
        ts.QualityTarget(metric, value)


def test_search_space_and_value_lists_reject_bad_values():
    assert ts.parse_values(" 0.25, 0.5;1 ", "sparsity_values") == (0.25, 0.5, 1.0)
    with pytest.raises(ValueError, match="sparsity_values: every value must be a number in"):
        ts.SearchSpace((0.5, 2.0), (0.1,))
    with pytest.raises(ValueError, match="error_budgets: give at least one value"):
        ts.SearchSpace((0.5,), ())
    with pytest.raises(ValueError, match="error_budgets: expected finite numbers"):
        ts.parse_values("inf", "error_budgets")
    assert ts.SearchSpace((1.0, 0.5, 0.5), (0.2, 0.1)).settings() == (
        ts.Setting(0.5, 0.1), ts.Setting(0.5, 0.2), ts.Setting(1.0, 0.1), ts.Setting(1.0, 0.2))


def _map(routes, window, topk) -> RoutingMap:
    t = torch.tensor
    return RoutingMap(t(routes, dtype=torch.int8), t(window, dtype=torch.int16), t(topk, dtype=torch.int16), None,
                      "wan2.1", "test")


def test_effective_patch_tells_apart_only_what_a_preview_applies():
    fixed = _map([[SPARSE, LINEAR]], [[1, -1]], [[0, -1]])  # calibrated: the sparse head's window is its own
    free = _map([[SPARSE, DENSE]], [[-1, -1]], [[-1, -1]])  # the schedule's window
    balanced = schedule_preset("balanced")
    assert ts.effective_patch(scaled(balanced, 0.25), fixed, 4) == ts.effective_patch(scaled(balanced, 1.0), fixed, 4)
    assert ts.effective_patch(scaled(balanced, 0.25), free, 4) != ts.effective_patch(scaled(balanced, 1.0), free, 4)
    quality = schedule_preset("quality")  # a dense last step, dropped at sparsity 1.0
    assert ts.effective_patch(scaled(quality, 0.5), fixed, 4) != ts.effective_patch(scaled(quality, 1.0), fixed, 4)
    all_dense = _map([[DENSE, DENSE]], [[-1, -1]], [[-1, -1]])
    assert ts.effective_patch(scaled(quality, 0.5), all_dense, 4) == ts.effective_patch(scaled(quality, 1.0),
                                                                                          all_dense, 4)
