"""The SparseFlow Schedule node: presets, sliders or JSON keyframes -> SPARSEFLOW_SCHEDULE.

The schedule math is `sparseflow/schedule.py` (sparser early, denser late); this node only builds one.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..sparseflow.schedule import (
    MAX_TOPK,
    MAX_WINDOW,
    PROGRESS_MODES,
    SCHEDULE_PRESETS,
    Keyframe,
    Schedule,
    describe,
    schedule_from_json,
    schedule_preset,
)
from .types import ScheduleType, advanced, schema

__all__ = ["SparseFlowSchedule", "build_schedule"]

PRESET_CHOICES = (*SCHEDULE_PRESETS, "custom")


def build_schedule(preset: str, progress_mode: str = "steps", early_window: int = 0, late_window: int = 2,
                   dense_from: float = 1.0, topk: int = 0, compensation: bool = True, keyframes: str = "") -> Schedule:
    """A preset (with `progress_mode`), or "custom": JSON `keyframes` when given, else the sliders.

    Sliders: window `early_window` at progress 0 rising linearly to `late_window` at `dense_from` (or 1.0);
    from `dense_from` < 1 on, steps are dense.
    """
    if preset not in PRESET_CHOICES:
        raise ValueError(f"SparseFlow Schedule: preset must be one of {', '.join(PRESET_CHOICES)}; got '{preset}'")
    if progress_mode not in PROGRESS_MODES:
        raise ValueError(f"SparseFlow Schedule: progress_mode must be one of {PROGRESS_MODES}; got '{progress_mode}'")
    if preset != "custom":
        base = schedule_preset(preset)
        return Schedule(base.keyframes, progress_mode, base.name)
    if keyframes.strip():
        parsed = schedule_from_json(keyframes)
        return Schedule(parsed.keyframes, progress_mode, parsed.name)
    if not 0.0 <= dense_from <= 1.0:
        raise ValueError(f"SparseFlow Schedule: dense_from must be in [0, 1]; got {dense_from}")
    if dense_from <= 0.0:
        kfs = (Keyframe(0.0, early_window, topk, compensation, dense=True),)
    elif dense_from < 1.0:
        kfs = (Keyframe(0.0, early_window, topk, compensation),
               Keyframe(dense_from, late_window, topk, compensation, dense=True))
    else:
        kfs = (Keyframe(0.0, early_window, topk, compensation), Keyframe(1.0, late_window, topk, compensation))
    return Schedule(kfs, progress_mode, "custom")


def schedule_text(s: Schedule, steps: int = 10) -> str:
    per = " ".join("D" if p.dense else str(p.window) for p in describe(s, steps))
    return f"schedule '{s.name}' ({s.progress_mode}): window per step over {steps} steps (D = dense): {per}"


class SparseFlowSchedule(io.ComfyNode):
    """Sliders / keyframes -> SPARSEFLOW_SCHEDULE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="SparseFlowSchedule",
            display_name="SparseFlow Schedule",
            description=("How sparse each sampling step is: sparser early (layout), denser late (detail). Pick a "
                         "preset, or 'custom' with the sliders or JSON keyframes. Connect to SparseFlow Patch."),
            inputs=[
                io.Combo.Input("preset", options=list(PRESET_CHOICES), default="balanced",
                               tooltip="fast: window 0 -> 1; balanced: 0 -> 1 -> 2; quality: window 1, dense from "
                                       "85%; dense: no sparsity (for A/B checks); custom: the sliders below."),
                io.Combo.Input("progress_mode", options=list(PROGRESS_MODES), default="steps",
                               tooltip="How progress is measured. 'steps': step index / (steps - 1). 'sigma': "
                                       "fraction of the model's sigma range, the same scale for both Wan 2.2 14B "
                                       "experts (each sampler sees only its own steps): use it there."),
                io.Int.Input("early_window", default=0, min=0, max=MAX_WINDOW, step=1,
                             tooltip="custom: temporal window (latent frames) at the first step."),
                io.Int.Input("late_window", default=2, min=0, max=MAX_WINDOW, step=1,
                             tooltip="custom: temporal window at the last sparse step (linear in between)."),
                io.Float.Input("dense_from", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="custom: progress from which steps run dense (1.0 = never, 0.85 = the last "
                                       "15% of steps)."),
                io.Int.Input("topk", default=0, min=0, max=MAX_TOPK, step=1,
                             tooltip="custom: extra key blocks each sparse query block picks by content (0 = off).",
                             **advanced(io.Int.Input)),
                io.Boolean.Input("compensation", default=True,
                                 tooltip="custom: skipped key blocks still add one pooled key each (cheap, "
                                         "closer to dense).", **advanced(io.Boolean.Input)),
                io.String.Input("keyframes", default="", multiline=True,
                                tooltip='custom: JSON keyframes, e.g. {"keyframes": [{"progress": 0, "window": 0}, '
                                        '{"progress": 0.9, "window": 2, "dense": true}]}; overrides the sliders.',
                                **advanced(io.String.Input)),
            ],
            outputs=[ScheduleType.Output(tooltip="Connect to the schedule input of SparseFlow Patch.")],
        )

    @classmethod
    def execute(cls, *, preset: str, progress_mode: str, early_window: int, late_window: int, dense_from: float,
                topk: int, compensation: bool, keyframes: str) -> io.NodeOutput:
        s = build_schedule(preset, progress_mode, early_window, late_window, dense_from, topk, compensation,
                           keyframes)
        return io.NodeOutput(s, ui={"text": [schedule_text(s)]})
