"""Calibration to a quality target: the fastest (sparsity, error budget) setting whose preview stays close to dense.

The search is exhaustive over a fixed grid (`SearchSpace`): every setting's few-step preview is measured against
the dense preview of the same seed (PSNR or relative error, `sparseflow/quality.py`) and its attention cost is read
from the preview run's plans (`CallRecord.cost`, docs/spec.md §6, an estimate, not a timing). `choose` then keeps the
cheapest setting that meets the target. The measurements do not depend on the target, so a tighter target can only
remove settings from the feasible set and never yields a cheaper (sparser) one. No setting meeting the target gives
the densest setting, flagged. A preview holding NaN or inf is infeasible and reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .plan import LINEAR, SPARSE
from .quality import frame_psnr, nonfinite_frames, psnr, relative_error
from .routing import RoutingMap
from .schedule import Schedule, describe

__all__ = ["DEFAULT_BUDGETS", "DEFAULT_SPARSITIES", "METRICS", "Measurement", "QualityTarget", "SearchResult",
           "SearchSpace", "Setting", "Trial", "choose", "effective_patch", "measure", "parse_values", "search_report"]

PSNR, REL_ERR = "psnr_db", "relative_error"
METRICS = (PSNR, REL_ERR)
TARGET_RANGE = {PSNR: (1.0, 200.0), REL_ERR: (0.0, 1.0)}
DEFAULT_SPARSITIES = (0.25, 0.5, 0.75, 1.0)
DEFAULT_BUDGETS = (0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class QualityTarget:
    """`metric` PSNR vs dense >= value dB, or relative error of the final latent <= value."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"target metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        lo, hi = TARGET_RANGE[self.metric]
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            unit = " dB" if self.metric == PSNR else ""
            raise ValueError(f"target: with metric {self.metric} the target must be a number in [{lo:g}, {hi:g}]"
                             f"{unit}; got {v!r}")

    def met_by(self, m: Measurement) -> bool:
        """Whether a measurement meets the target (a non-finite preview never does)."""
        if m.nonfinite:
            return False
        if self.metric == PSNR:
            return m.psnr >= self.value
        return m.rel_err <= self.value

    def describe(self) -> str:
        return f"PSNR vs dense >= {self.value:g} dB" if self.metric == PSNR else \
            f"relative error vs dense <= {self.value:g}"


@dataclass(frozen=True)
class Setting:
    """What the Patch node takes: its sparsity slider, and the routing map calibrated at this error budget."""

    sparsity: float
    budget: float


@dataclass(frozen=True)
class SearchSpace:
    """The grid searched: every sparsity x every error budget."""

    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    budgets: tuple[float, ...] = DEFAULT_BUDGETS

    def __post_init__(self) -> None:
        for name, values, lo, hi in (("sparsity_values", self.sparsities, 0.0, 1.0),
                                     ("error_budgets", self.budgets, 0.0, 1e6)):
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"{name}: give at least one value; got {values!r}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                    raise ValueError(f"{name}: every value must be a number in [{lo:g}, {hi:g}]; got {v!r}")

    def settings(self) -> tuple[Setting, ...]:
        return tuple(Setting(float(s), float(b)) for s in sorted(set(self.sparsities))
                     for b in sorted(set(self.budgets)))


def effective_patch(schedule: Schedule, rmap: RoutingMap, steps: int) -> tuple:
    """What a preview of `steps` steps applies, per step and head: two settings with equal keys sample the same.

    A calibrated map fixes each sparse head's window and top-k, so the schedule's (and the sparsity slider's) window
    and top-k reach only heads whose map entry is -1; the dense and compensation flags reach every sparse head.
    """
    routes = rmap.routes.tolist()
    if schedule.progress_mode != "steps":  # progress then depends on the sigmas: compare whole schedules
        return (schedule.keyframes, str(routes), str(rmap.window.tolist()), str(rmap.topk.tolist()))
    sparse = [(w, k) for rr, wr, kr in zip(routes, rmap.window.tolist(), rmap.topk.tolist())
              for r, w, k in zip(rr, wr, kr) if r == SPARSE]
    any_linear = any(r == LINEAR for rr in routes for r in rr)
    per_step = []
    for p in describe(schedule, steps):
        dense = p.dense and (bool(sparse) or any_linear)
        per_step.append((dense, not dense and bool(sparse) and p.compensation,
                         tuple(p.window if w < 0 else w for w, _ in sparse) if not dense else (),
                         tuple(p.topk if k < 0 else k for _, k in sparse) if not dense else ()))
    return (str(routes), tuple(per_step))


def parse_values(text: str, name: str) -> tuple[float, ...]:
    """'0.25, 0.5' -> (0.25, 0.5); a clear error naming the input otherwise."""
    try:
        values = tuple(float(part) for part in str(text).replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name}: expected numbers separated by commas, e.g. '0.25, 0.5'; got {text!r}") from None
    if not values or any(not math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected finite numbers separated by commas, e.g. '0.25, 0.5'; got {text!r}")
    return values


@dataclass(frozen=True)
class Measurement:
    """One preview against the dense preview: quality, non-finite values, attention cost (pair units)."""

    psnr: float  # dB over the whole latent, worst video of the batch; inf = identical; NaN if non-finite
    worst_frame_psnr: float  # dB, the worst frame
    rel_err: float
    nonfinite: int  # NaN / inf values in the preview
    cost: float  # attention work done, pooled reads included (CallRecord.cost summed)
    dense_cost: float  # the same calls fully dense

    @property
    def speedup(self) -> float:
        """Estimated attention speed-up: dense work / this setting's work (an estimate from the plans)."""
        return self.dense_cost / self.cost if self.cost > 0 else math.inf


def measure(x: torch.Tensor, ref: torch.Tensor, cost: float, dense_cost: float) -> Measurement:
    """Quality of preview `x` against the dense preview `ref` (both (B, C, T, H, W)), with the run's cost."""
    bad = int(nonfinite_frames(x).sum())
    if bad:
        return Measurement(math.nan, math.nan, math.nan, bad, float(cost), float(dense_cost))
    return Measurement(float(psnr(x, ref).min()), float(frame_psnr(x, ref).min()), relative_error(x, ref), 0,
                       float(cost), float(dense_cost))


@dataclass(frozen=True)
class Trial:
    """One setting and its measurement."""

    setting: Setting
    measurement: Measurement

    def key(self) -> tuple[float, float, float, float]:
        """The order of preference, independent of the target: cheapest, then better measured, then the lower
        sparsity and budget (a total order, so the choice is deterministic)."""
        m = self.measurement
        err = m.rel_err if math.isfinite(m.rel_err) else math.inf
        return (m.cost, err, self.setting.sparsity, self.setting.budget)


@dataclass(frozen=True)
class SearchResult:
    """The chosen trial, whether it meets the target, and every trial (in search order)."""

    target: QualityTarget
    chosen: Trial
    met: bool
    trials: tuple[Trial, ...]

    @property
    def message(self) -> str:
        s, m = self.chosen.setting, self.chosen.measurement
        if self.met:
            return (f"chosen: sparsity {s.sparsity:g}, error budget {s.budget:g} (the cheapest of {len(self.trials)} "
                    f"settings meeting {self.target.describe()})")
        return (f"NO SETTING MEETS THE TARGET ({self.target.describe()}): none of {len(self.trials)} settings did; "
                f"using the densest, sparsity {s.sparsity:g}, error budget {s.budget:g} (est. attention speed-up "
                f"{m.speedup:.2f}x). Loosen the target, or add lower sparsity values / error budgets")


def choose(target: QualityTarget, trials: Sequence[Trial]) -> SearchResult:
    """The cheapest trial meeting `target`; with none, the densest (largest cost) trial, flagged not met."""
    trials = tuple(trials)
    if not trials:
        raise ValueError("choose: no trials to choose from")
    ok = [t for t in trials if target.met_by(t.measurement)]
    if ok:
        return SearchResult(target, min(ok, key=Trial.key), True, trials)
    densest = max(trials, key=lambda t: (t.measurement.cost, -t.setting.sparsity, -t.setting.budget))
    return SearchResult(target, densest, False, trials)


def _db(v: float) -> str:
    return "NaN" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.2f}")


def _err(v: float) -> str:
    return "NaN" if math.isnan(v) else f"{v:.3g}"


def search_report(result: SearchResult, notes: str = "") -> str:
    """The readable report: the choice, its measured quality and estimated speed-up, the table of trials."""
    m = result.chosen.measurement
    lines = [f"SparseFlow Calibrate to Target: {result.target.describe()}",
             result.message,
             f"measured: PSNR {_db(m.psnr)} dB (worst frame {_db(m.worst_frame_psnr)} dB), relative error "
             f"{_err(m.rel_err)}; estimated attention speed-up {m.speedup:.2f}x (from the plans' block-pair cost, "
             "not a timing)",
             "sparsity | budget | PSNR dB | worst frame | rel. err | est. speed-up | meets",
             ]
    for t in result.trials:
        x = t.measurement
        flag = "NaN" if x.nonfinite else ("yes" if result.target.met_by(x) else "no")
        mark = " <- chosen" if t is result.chosen else ""
        lines.append(f"{t.setting.sparsity:8g} | {t.setting.budget:6g} | {_db(x.psnr):>7s} | "
                     f"{_db(x.worst_frame_psnr):>11s} | {_err(x.rel_err):>8s} | {x.speedup:12.2f}x | {flag}{mark}")
    if notes:
        lines.append(notes)
    return "\n".join(lines)
