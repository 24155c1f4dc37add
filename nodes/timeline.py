"""Where one sampler call sits in the whole denoising run, so a schedule in "steps" progress spans the whole run.

The Wan 2.2 14B templates sample with two models and two KSamplerAdvanced (high-noise expert: steps 0..k, low-noise
expert: k..N); ComfyUI's `KSampler.sample` hands each only its slice of the run's sigmas (COMFY_NOTES §2.1), and a
denoise below 1 likewise hands a tail of a longer schedule. The OUTER_SAMPLE wrapper calls `locate()` once per
sampling run: when the sigmas are a slice (they do not start at the model's sigma_max or do not end at 0), it finds
the whole run among ComfyUI's schedulers (`comfy.samplers.calculate_sigmas`) so step progress counts the whole
run's steps; when it cannot tell, progress comes from sigma (as the schedule's `sigma` mode) and the log says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..sparseflow.schedule import slice_offset
from .report import log_once

__all__ = ["Timeline", "locate"]

_MAX_EXTRA_STEPS = 64  # a whole run of up to 4 n + 64 steps is searched for an n-step slice


@dataclass(frozen=True)
class Timeline:
    """`sigmas`: the whole run's sigmas when this sampler call is a slice of a run found among ComfyUI's
    schedulers (None: the call is the whole run); `by_sigma`: progress from sigma, the run could not be told."""

    sigmas: tuple[float, ...] | None = None
    by_sigma: bool = False
    note: str = ""


def _floats(sigmas: object) -> list[float]:
    if isinstance(sigmas, torch.Tensor):
        return [float(s) for s in sigmas.detach().flatten().cpu().tolist()]
    return [float(s) for s in sigmas]


def locate(model_sampling: object, sigmas: object, samplers: object) -> Timeline:
    """The `Timeline` of a sampler call with these sigmas (`samplers`: the `comfy.samplers` module)."""
    part = _floats(sigmas)
    sigma_max = float(getattr(model_sampling, "sigma_max", part[0] if part else 1.0))
    if len(part) < 2 or (part[0] >= sigma_max * (1 - 1e-4) and part[-1] == 0.0):
        return Timeline()
    n = len(part) - 1
    names = list(getattr(samplers, "SCHEDULER_NAMES", ()) or ("simple",))
    names.sort(key=lambda name: name != "simple")  # Wan's templates use simple; try it first
    for name in names:
        for steps in range(n, 4 * n + _MAX_EXTRA_STEPS + 1):
            try:
                full = _floats(samplers.calculate_sigmas(model_sampling, name, steps))
            except Exception:  # noqa: BLE001 - a scheduler that cannot make this step count is no candidate
                continue
            offset = slice_offset(part, full)
            if offset is not None and (offset, len(part)) != (0, len(full)):
                note = (f"this sampler call runs steps {offset}..{offset + n - 1} of a {steps}-step '{name}' run; "
                        "the schedule follows the whole run")
                log_once(("timeline", name, steps, offset, n), "SparseFlow: %s", note)
                return Timeline(tuple(full), note=note)
    note = (f"this sampler call runs sigmas {part[0]:.4g} -> {part[-1]:.4g} in {n} steps, part of a longer run that "
            "SparseFlow could not find among ComfyUI's schedulers; the schedule's progress is taken from sigma (the "
            "fraction of the model's sigma range, as progress mode 'sigma'): put a SparseFlow Schedule node with "
            "progress mode 'sigma' on both models of a split run to say so explicitly")
    log_once(("timeline", "unknown", n, round(part[0], 6), round(part[-1], 6)), "SparseFlow: %s", note,
             level=logging.WARNING)
    return Timeline(by_sigma=True, note=note)
