"""Sparsity schedule: interpolation, presets, progress from sigmas, slider scaling, JSON, validation."""

import json

import pytest
import torch
from comfyui_sparseflow.sparseflow.schedule import (
    DEFAULT_SCHEDULE,
    SCHEDULE_PRESETS,
    Keyframe,
    Schedule,
    StepParams,
    describe,
    progress_from_sigmas,
    scaled,
    schedule_from_json,
    schedule_preset,
    schedule_to_json,
)


def _linear_sigmas(steps: int) -> list[float]:
    return [1.0 - i / steps for i in range(steps + 1)]


def test_interpolation_rounds_half_up_and_flags_step_at_left_keyframe():
    # progress values are exact binary fractions so the half-way cases are exact
    s = Schedule((Keyframe(0.25, 0, topk=0, compensation=False, dense=False),
                  Keyframe(0.75, 4, topk=3, compensation=True, dense=True)))
    assert s.at(0.0) == StepParams(0, 0, False, False)  # before the first keyframe: the first
    assert s.at(0.25) == StepParams(0, 0, False, False)
    # t = 0.25: window 1.0 -> 1, topk 0.75 -> 1
    assert s.at(0.375) == StepParams(1, 1, False, False)
    # t = 0.375: window 1.5 -> 2, topk 1.125 -> 1
    assert s.at(0.4375) == StepParams(2, 1, False, False)
    # t = 0.625: window 2.5 -> 3 (half up; banker's rounding would give 2)
    assert s.at(0.5625).window == 3
    assert s.at(0.7499) == StepParams(4, 3, False, False)  # flags still keyframe a's
    assert s.at(0.75) == StepParams(4, 3, True, True)
    assert s.at(1.0) == StepParams(4, 3, True, True)  # after the last keyframe: the last


def test_at_clamps_out_of_range_progress_and_rejects_nan():
    s = schedule_preset("fast")
    assert s.at(-3.0) == s.at(0.0)
    assert s.at(7.0) == s.at(1.0)
    with pytest.raises(ValueError, match="progress must be a number"):
        s.at(float("nan"))


def test_presets_are_valid_and_follow_sparser_early_denser_late():
    assert DEFAULT_SCHEDULE == "balanced"
    assert {"fast", "balanced", "quality", "dense"} <= set(SCHEDULE_PRESETS)
    for name, s in SCHEDULE_PRESETS.items():
        assert s.name == name
        steps = describe(s, 30)
        windows = [p.window for p in steps]
        assert windows == sorted(windows), f"{name}: windows must not shrink over time"
        dense = [p.dense for p in steps]
        assert dense == sorted(dense), f"{name}: once dense, stays dense"
    fast = describe(schedule_preset("fast"), 11)
    assert fast[0].window == 0 and fast[-1].window == 1
    assert all(p.compensation and not p.dense for p in fast)
    bal = schedule_preset("balanced")
    assert bal.at(0.0).window == 0 and bal.at(0.5).window == 1 and bal.at(0.9).window == 2
    assert bal.at(1.0) == StepParams(2, 0, True, False)
    assert all(p.compensation and not p.dense for p in describe(bal, 25))
    q = schedule_preset("quality")
    assert q.at(0.0).window == 1 and not q.at(0.84).dense and q.at(0.85).dense and q.at(1.0).dense
    assert all(p.dense for p in describe(schedule_preset("dense"), 7))


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="fast.*balanced.*quality.*dense.*got 'turbo'"):
        schedule_preset("turbo")


def test_steps_mode_gives_same_progress_at_same_fraction_for_any_step_count():
    for n in (10, 19, 28):
        sig = _linear_sigmas(n)
        assert progress_from_sigmas(sig[0], sig, "steps") == 0.0
        assert progress_from_sigmas(sig[n - 1], sig, "steps") == 1.0  # last step, not the final 0
        assert progress_from_sigmas(sig[n], sig, "steps") == 1.0  # clamped
    # a third of the way: step 3 of 10 (3/9) and step 6 of 19 (6/18)
    assert progress_from_sigmas(_linear_sigmas(10)[3], _linear_sigmas(10), "steps") == pytest.approx(1 / 3)
    assert progress_from_sigmas(_linear_sigmas(19)[6], _linear_sigmas(19), "steps") == pytest.approx(1 / 3)
    # the step index decides, not the sigma value: nonlinear sigmas give the same progress
    warped = [s ** 3 for s in _linear_sigmas(10)]
    assert progress_from_sigmas(warped[3], warped, "steps") == pytest.approx(1 / 3)


def test_steps_mode_picks_closest_sigma_and_first_on_ties():
    sig = [1.0, 0.5, 0.5, 0.0]
    assert progress_from_sigmas(0.5, sig, "steps") == 0.5  # index 1 of max(1, 2)
    assert progress_from_sigmas(0.76, [1.0, 0.5, 0.0], "steps") == 0.0  # closer to 1.0
    assert progress_from_sigmas(0.75, [1.0, 0.5, 0.0], "steps") == 0.0  # tie -> first
    assert progress_from_sigmas(0.9, [0.9, 0.0], "steps") == 0.0  # one step: max(1, 0)


def test_sigma_mode_is_fraction_of_sigma_range_for_any_step_count():
    for n in (8, 20, 50):
        sig = torch.linspace(14.6, 0.0, n + 1)
        assert progress_from_sigmas(float(sig[0]), sig, "sigma") == 0.0
        assert progress_from_sigmas(float(sig[0]) * 0.25, sig, "sigma") == pytest.approx(0.75, abs=1e-6)
        assert progress_from_sigmas(0.0, sig, "sigma") == 1.0
        assert progress_from_sigmas(20.0, sig, "sigma") == 0.0  # clamped
    assert progress_from_sigmas(1.0, [1.0, 1.0], "sigma") == 0.0  # s0 == s_last
    # ComfyUI's per-batch sigma tensor
    assert progress_from_sigmas(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.5, 0.0]), "steps") == 1.0


def test_progress_from_sigmas_rejects_bad_mode_and_empty_sigmas():
    with pytest.raises(ValueError, match="mode must be one of"):
        progress_from_sigmas(1.0, [1.0, 0.0], "time")
    with pytest.raises(ValueError, match="at least one sigma"):
        progress_from_sigmas(1.0, [], "steps")


def test_at_sigma_uses_the_schedule_progress_mode():
    s = Schedule((Keyframe(0.0, 0), Keyframe(1.0, 8)), progress_mode="sigma")
    sig = [1.0, 0.9, 0.1, 0.0]
    assert s.at_sigma(0.1, sig).window == 7  # sigma progress 0.9 -> 7.2 -> 7
    assert Schedule(s.keyframes).at_sigma(0.1, sig).window == 8  # steps progress 2/2 = 1


def test_scaled_half_is_identity_and_extremes_shrink_or_widen():
    q = schedule_preset("quality")
    assert scaled(q, 0.5) is q
    full = scaled(q, 1.0)
    assert all(kf.window == 0 and not kf.dense for kf in full.keyframes)
    assert [kf.window for kf in scaled(q, 0.75).keyframes] == [1, 1]  # 1*0.5 = 0.5 -> 1, 2*0.5 -> 1
    low = scaled(q, 0.0)
    assert [kf.window for kf in low.keyframes] == [5, 6] and low.keyframes[1].dense
    assert [kf.window for kf in scaled(q, 0.25).keyframes] == [3, 4]
    assert scaled(q, 0.9).keyframes[1].dense  # dense keyframes only drop at 1.0
    with pytest.raises(ValueError, match="sparsity must be a number in \\[0, 1\\]"):
        scaled(q, 1.5)


def test_json_round_trip_is_equal_for_every_preset_and_custom():
    custom = Schedule((Keyframe(0.0, 3, 2, False, False), Keyframe(0.25, 7, 5, True, True)), "sigma", "mine")
    for s in list(SCHEDULE_PRESETS.values()) + [custom]:
        assert schedule_from_json(schedule_to_json(s)) == s
    minimal = schedule_from_json('{"keyframes": [{"progress": 0, "window": 2}]}')
    assert minimal == Schedule((Keyframe(0.0, 2),))


@pytest.mark.parametrize("text, match", [
    ('{"keyframes": [], "speed": 1}', "unknown key 'speed'"),
    ('{"keyframes": [{"progress": 0, "window": 1, "size": 2}]}', "keyframes\\[0\\] has unknown key 'size'"),
    ('{"keyframes": [{"progress": 0, "window": "1"}]}', "keyframes\\[0\\] key 'window' must be a int"),
    ('{"keyframes": [{"progress": 0, "window": 1.5}]}', "key 'window' must be a int"),
    ('{"keyframes": [{"progress": true, "window": 1}]}', "key 'progress' must be a number"),
    ('{"keyframes": [{"progress": 0, "window": 1, "dense": 1}]}', "key 'dense' must be a bool"),
    ('{"keyframes": [{"window": 1}]}', "keyframes\\[0\\] is missing key 'progress'"),
    ('{"keyframes": {}}', "key 'keyframes' must be a list"),
    ('{"name": "x"}', "missing key 'keyframes'"),
    ('{"keyframes": [{"progress": 0, "window": 1}], "format": "other"}', "key 'format' must be"),
    ('[1, 2]', "must be a JSON object"),
    ('{"keyframes": [', "not valid JSON"),
    ('{"keyframes": [{"progress": 0, "window": 99}]}', "keyframe 0: window must be an int in \\[0, 64\\]"),
])
def test_json_errors_name_the_key(text, match):
    with pytest.raises(ValueError, match=match):
        schedule_from_json(text)


@pytest.mark.parametrize("keyframes, mode, match", [
    ((), "steps", "keyframes must be a non-empty tuple"),
    ((Keyframe(0.0, 1), Keyframe(0.5, 1), Keyframe(0.7, -1)), "steps",
     "schedule keyframe 2: window must be an int in \\[0, 64\\], got -1"),
    ((Keyframe(0.0, 65),), "steps", "keyframe 0: window must be an int in \\[0, 64\\], got 65"),
    ((Keyframe(0.0, 1, topk=70),), "steps", "keyframe 0: topk must be an int in \\[0, 64\\], got 70"),
    ((Keyframe(0.0, True),), "steps", "window must be an int"),
    ((Keyframe(1.5, 1),), "steps", "keyframe 0: progress must be a number in \\[0, 1\\], got 1.5"),
    ((Keyframe(0.5, 1), Keyframe(0.5, 2)), "steps", "keyframe 1: progress must be strictly increasing"),
    ((Keyframe(0.0, 1, compensation=1),), "steps", "keyframe 0: compensation must be a bool"),
    ((Keyframe(0.0, 1),), "time", "progress_mode must be one of \\('steps', 'sigma'\\)"),
])
def test_schedule_validation_names_field_and_range(keyframes, mode, match):
    with pytest.raises(ValueError, match=match):
        Schedule(keyframes, mode)


def test_describe_gives_one_entry_per_step_ending_at_last_keyframe():
    s = schedule_preset("balanced")
    d = describe(s, 21)
    assert len(d) == 21 and d[0] == s.at(0.0) and d[10] == s.at(0.5) and d[-1] == s.at(1.0)
    assert describe(s, 1) == [s.at(0.0)]
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        describe(s, 0)


def test_schedule_json_is_plain_json():
    data = json.loads(schedule_to_json(schedule_preset("balanced")))
    assert data["name"] == "balanced" and len(data["keyframes"]) == 3
