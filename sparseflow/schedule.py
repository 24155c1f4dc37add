"""Per-step sparsity schedule: sparse-attention parameters as a function of denoising progress.

The SparseFlow method (report OSF 10.17605/OSF.IO/6EMFW) runs sparser early, when the latent is mostly
noise and coarse layout dominates, and denser late, when fine detail is resolved. A `Schedule` is a few
keyframes on progress p in [0, 1]; `Schedule.at(p)` gives the `StepParams` for one sampling step.
Progress comes from the current sigma (`progress_from_sigmas`), so one schedule fits any step count.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

__all__ = [
    "DEFAULT_SCHEDULE",
    "Keyframe",
    "MAX_TOPK",
    "MAX_WINDOW",
    "PROGRESS_MODES",
    "SCHEDULE_PRESETS",
    "Schedule",
    "StepParams",
    "describe",
    "progress_from_sigmas",
    "scaled",
    "schedule_from_json",
    "schedule_preset",
    "schedule_to_json",
    "slice_offset",
]

log = logging.getLogger("sparseflow.schedule")

MAX_WINDOW = 64
MAX_TOPK = 64
PROGRESS_MODES = ("steps", "sigma")
_JSON_FORMAT = "sparseflow.schedule"
_JSON_VERSION = 1


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class StepParams:
    """Parameters for one sampling step. `window` is in latent frames; `dense` switches sparse heads to dense."""

    window: int
    topk: int
    compensation: bool
    dense: bool


@dataclass(frozen=True)
class Keyframe:
    """Schedule values from `progress` on (validated by the owning `Schedule`)."""

    progress: float
    window: int
    topk: int = 0
    compensation: bool = True
    dense: bool = False


@dataclass(frozen=True)
class Schedule:
    """Keyframes on denoising progress p in [0, 1] (0 = first step, 1 = last step).

    `progress_mode` says how p is measured: "steps" (step index / (steps - 1)) or "sigma" (fraction of the
    sigma range covered). See `progress_from_sigmas`.
    """

    keyframes: tuple[Keyframe, ...]
    progress_mode: str = "steps"
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.keyframes, list):
            object.__setattr__(self, "keyframes", tuple(self.keyframes))
        if not isinstance(self.keyframes, tuple) or not self.keyframes:
            raise ValueError(f"schedule: keyframes must be a non-empty tuple of Keyframe, got {self.keyframes!r}")
        prev = -math.inf
        for i, kf in enumerate(self.keyframes):
            where = f"schedule keyframe {i}"
            if not isinstance(kf, Keyframe):
                raise ValueError(f"{where}: must be a Keyframe, got {type(kf).__name__}")
            p = kf.progress
            if not _is_number(p) or not 0.0 <= p <= 1.0:
                raise ValueError(f"{where}: progress must be a number in [0, 1], got {p!r}")
            if not p > prev:
                raise ValueError(f"{where}: progress must be strictly increasing, got {p!r} after {prev!r}")
            prev = p
            if not _is_int(kf.window) or not 0 <= kf.window <= MAX_WINDOW:
                raise ValueError(f"{where}: window must be an int in [0, {MAX_WINDOW}], got {kf.window!r}")
            if not _is_int(kf.topk) or not 0 <= kf.topk <= MAX_TOPK:
                raise ValueError(f"{where}: topk must be an int in [0, {MAX_TOPK}], got {kf.topk!r}")
            for flag in ("compensation", "dense"):
                if not isinstance(getattr(kf, flag), bool):
                    raise ValueError(f"{where}: {flag} must be a bool, got {getattr(kf, flag)!r}")
        if self.progress_mode not in PROGRESS_MODES:
            raise ValueError(f"schedule: progress_mode must be one of {PROGRESS_MODES}, got {self.progress_mode!r}")
        if not isinstance(self.name, str):
            raise ValueError(f"schedule: name must be a str, got {self.name!r}")

    def at(self, progress: float) -> StepParams:
        """Step parameters at `progress`.

        Before the first keyframe the first applies, after the last the last. Between keyframes a and b
        (a.progress <= p < b.progress) `window` and `topk` are interpolated linearly and rounded half up
        (floor(x + 0.5)); `compensation` and `dense` are a step function taking keyframe a's value.
        Progress outside [0, 1] is clamped; NaN raises ValueError.
        """
        try:
            p = float(progress)
        except (TypeError, ValueError):
            p = math.nan
        if isinstance(progress, bool) or math.isnan(p):
            raise ValueError(f"schedule: progress must be a number in [0, 1], got {progress!r}")
        p = min(1.0, max(0.0, p))
        kfs = self.keyframes
        if p <= kfs[0].progress:
            a = kfs[0]
            return StepParams(a.window, a.topk, a.compensation, a.dense)
        # Last keyframe whose progress is <= p.
        i = max(j for j, kf in enumerate(kfs) if kf.progress <= p)
        a = kfs[i]
        if i == len(kfs) - 1 or p == a.progress:
            return StepParams(a.window, a.topk, a.compensation, a.dense)
        b = kfs[i + 1]
        t = (p - a.progress) / (b.progress - a.progress)
        window = _round_half_up(a.window + t * (b.window - a.window))
        topk = _round_half_up(a.topk + t * (b.topk - a.topk))
        return StepParams(window, topk, a.compensation, a.dense)

    def at_sigma(self, sigma: float, sample_sigmas: Sequence[float] | torch.Tensor) -> StepParams:
        """`at(progress_from_sigmas(sigma, sample_sigmas, self.progress_mode))`."""
        return self.at(progress_from_sigmas(sigma, sample_sigmas, self.progress_mode))


def _sigma_list(sample_sigmas: Sequence[float] | torch.Tensor) -> list[float]:
    if isinstance(sample_sigmas, torch.Tensor):
        values = [float(s) for s in sample_sigmas.detach().flatten().cpu().tolist()]
    else:
        values = [float(s) for s in sample_sigmas]
    if not values:
        raise ValueError("progress_from_sigmas: sample_sigmas must hold at least one sigma, got none")
    if any(math.isnan(s) for s in values):
        raise ValueError("progress_from_sigmas: sample_sigmas must not contain NaN")
    return values


def progress_from_sigmas(sigma: float, sample_sigmas: Sequence[float] | torch.Tensor, mode: str) -> float:
    """Denoising progress in [0, 1] of the step at `sigma`.

    `sample_sigmas` is the sampler's sigma list: n_steps + 1 entries, the last usually 0. `sigma` may be a
    float or a tensor (its first entry is used).
    - "steps": i = index of the entry closest to `sigma` (ties: first), progress = i / max(1, len - 2),
      so the first step is 0 and the last step is 1 for any step count.
    - "sigma": (s0 - sigma) / (s0 - s_last), the fraction of the sigma range covered; 0 if s0 == s_last.
    Both are clamped to [0, 1].
    """
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress_from_sigmas: mode must be one of {PROGRESS_MODES}, got {mode!r}")
    # ComfyUI passes the current sigma as a (batch,) tensor whose entries are equal; take the first.
    s = float(sigma.detach().flatten()[0].item() if isinstance(sigma, torch.Tensor) else sigma)
    if math.isnan(s):
        raise ValueError("progress_from_sigmas: sigma must be a number, got NaN")
    sigmas = _sigma_list(sample_sigmas)
    if mode == "steps":
        dists = [abs(x - s) for x in sigmas]
        i = dists.index(min(dists))
        p = i / max(1, len(sigmas) - 2)
    else:
        s0, s_last = sigmas[0], sigmas[-1]
        p = 0.0 if s0 == s_last else (s0 - s) / (s0 - s_last)
    return min(1.0, max(0.0, p))


def slice_offset(part: Sequence[float], full: Sequence[float], rel_tol: float = 1e-4) -> int | None:
    """Where the sampler's sigmas `part` sit in a whole run's sigmas `full`, or None when they are not a slice of it.

    `part` (n + 1 sigmas, n >= 1) is a slice `full[a : a + n + 1]` of the whole run, as KSamplerAdvanced's
    start/end steps and a denoise below 1 cut it (ComfyUI `KSampler.sample`); its last sigma may also be 0 where
    `full` holds more (KSamplerAdvanced's "return with leftover noise" off). Returns the smallest such a.
    """
    part, full = [float(s) for s in part], [float(s) for s in full]
    n = len(part) - 1
    if n < 1 or len(full) < len(part):
        return None

    def same(x: float, y: float) -> bool:
        return abs(x - y) <= rel_tol * max(abs(x), abs(y), 1e-8)

    for a in range(len(full) - n):
        if all(same(part[i], full[a + i]) for i in range(n)) and (same(part[n], full[a + n]) or part[n] == 0.0):
            return a
    return None


# Windows are in latent frames (one latent frame = 4 video frames for Wan). The method: sparser early, denser late.
SCHEDULE_PRESETS: dict[str, Schedule] = {
    "fast": Schedule((Keyframe(0.0, 0), Keyframe(1.0, 1)), name="fast"),
    "balanced": Schedule((Keyframe(0.0, 0), Keyframe(0.5, 1), Keyframe(0.9, 2)), name="balanced"),
    "quality": Schedule((Keyframe(0.0, 1), Keyframe(0.85, 2, dense=True)), name="quality"),
    "dense": Schedule((Keyframe(0.0, 0, compensation=False, dense=True),), name="dense"),
}
DEFAULT_SCHEDULE = "balanced"


def schedule_preset(name: str) -> Schedule:
    """The preset schedule called `name`."""
    if name not in SCHEDULE_PRESETS:
        raise ValueError(f"schedule preset must be one of {tuple(SCHEDULE_PRESETS)}, got {name!r}")
    return SCHEDULE_PRESETS[name]


def scaled(schedule: Schedule, sparsity: float) -> Schedule:
    """Apply the Patch node's overall-sparsity slider in [0, 1] to every keyframe's window.

    0.5 returns the schedule unchanged. Above 0.5 windows shrink: round(window * (1 - sparsity) * 2), so
    1.0 gives window 0 everywhere, and at 1.0 dense keyframes become sparse. Below 0.5 windows widen:
    window + round((0.5 - sparsity) * 8), i.e. up to +4 latent frames at 0.0, capped at MAX_WINDOW.
    Rounding is half up. topk, compensation and progress are kept.
    """
    if not _is_number(sparsity) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"scaled: sparsity must be a number in [0, 1], got {sparsity!r}")
    if sparsity == 0.5:
        return schedule
    out = []
    for kf in schedule.keyframes:
        if sparsity > 0.5:
            window = max(0, _round_half_up(kf.window * (1.0 - sparsity) * 2.0))
            dense = kf.dense and sparsity < 1.0
        else:
            window = min(MAX_WINDOW, kf.window + _round_half_up((0.5 - sparsity) * 8.0))
            dense = kf.dense
        out.append(replace(kf, window=window, dense=dense))
    return Schedule(tuple(out), schedule.progress_mode, f"{schedule.name}@{sparsity:g}")


def schedule_to_json(s: Schedule) -> str:
    """JSON text of `s`; `schedule_from_json` reads it back to an equal Schedule."""
    return json.dumps({
        "format": _JSON_FORMAT,
        "version": _JSON_VERSION,
        "name": s.name,
        "progress_mode": s.progress_mode,
        "keyframes": [
            {"progress": kf.progress, "window": kf.window, "topk": kf.topk,
             "compensation": kf.compensation, "dense": kf.dense}
            for kf in s.keyframes
        ],
    })


_TOP_KEYS = {"format": str, "version": int, "name": str, "progress_mode": str, "keyframes": list}
_KF_KEYS = {"progress": float, "window": int, "topk": int, "compensation": bool, "dense": bool}


def _check_type(value: object, kind: type, where: str) -> None:
    ok = {int: _is_int, float: _is_number, bool: lambda v: isinstance(v, bool),
          str: lambda v: isinstance(v, str), list: lambda v: isinstance(v, list)}[kind](value)
    if not ok:
        expected = "number" if kind is float else kind.__name__
        raise ValueError(f"schedule JSON: {where} must be a {expected}, got {value!r}")


def schedule_from_json(text: str) -> Schedule:
    """Parse `schedule_to_json` output (or a hand-written equivalent) strictly.

    Required: "keyframes" (list of objects with "progress" and "window"; optional "topk", "compensation",
    "dense"). Optional: "name", "progress_mode", "format" (= "sparseflow.schedule"), "version" (= 1).
    Unknown keys and wrong types raise ValueError naming the key.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"schedule JSON: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"schedule JSON: must be a JSON object, got {type(data).__name__}")
    for key, value in data.items():
        if key not in _TOP_KEYS:
            raise ValueError(f"schedule JSON: unknown key {key!r}; allowed keys are {sorted(_TOP_KEYS)}")
        _check_type(value, _TOP_KEYS[key], f"key {key!r}")
    if data.get("format", _JSON_FORMAT) != _JSON_FORMAT:
        raise ValueError(f"schedule JSON: key 'format' must be {_JSON_FORMAT!r}, got {data['format']!r}")
    if data.get("version", _JSON_VERSION) != _JSON_VERSION:
        raise ValueError(f"schedule JSON: key 'version' must be {_JSON_VERSION}, got {data['version']!r}")
    if "keyframes" not in data:
        raise ValueError("schedule JSON: missing key 'keyframes'")
    keyframes = []
    for i, item in enumerate(data["keyframes"]):
        if not isinstance(item, dict):
            raise ValueError(f"schedule JSON: keyframes[{i}] must be an object, got {item!r}")
        for key, value in item.items():
            if key not in _KF_KEYS:
                raise ValueError(f"schedule JSON: keyframes[{i}] has unknown key {key!r}; allowed keys are "
                                 f"{sorted(_KF_KEYS)}")
            _check_type(value, _KF_KEYS[key], f"keyframes[{i}] key {key!r}")
        for key in ("progress", "window"):
            if key not in item:
                raise ValueError(f"schedule JSON: keyframes[{i}] is missing key {key!r}")
        kf = dict(item)
        kf["progress"] = float(kf["progress"])
        keyframes.append(Keyframe(**kf))
    return Schedule(tuple(keyframes), data.get("progress_mode", "steps"), data.get("name", "custom"))


def describe(schedule: Schedule, steps: int) -> list[StepParams]:
    """Per-step parameters of an n-step run, step i at progress i / (steps - 1) (as in "steps" mode)."""
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"describe: steps must be an int >= 1, got {steps!r}")
    return [schedule.at(i / max(1, steps - 1)) for i in range(steps)]
