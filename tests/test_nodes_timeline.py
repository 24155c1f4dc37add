"""The Wan 2.2 14B expert pair in real ComfyUI (CPU): two patched models, two KSamplerAdvanced-style calls, each
handed only its slice of the run's sigmas, get one continuous schedule with the Patch node's defaults ("steps"
progress); a denoise below 1 counts from the whole schedule too; sigmas that are no slice of any ComfyUI scheduler's
run fall back to sigma progress, and the log says so.
"""

from __future__ import annotations

import logging

import pytest
import tiny_wan as tw
import torch
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow.schedule import slice_offset
from test_nodes_common import BIG, last_run, pack, tiny_models  # noqa: F401

pytestmark = requires_comfy

STEPS, SPLIT = 6, 3


def _ksampler_advanced(comfy, model, start, end, *, add_noise=True, leftover=False, **kw):  # noqa: F811
    """KSamplerAdvanced as nodes.common_ksampler calls comfy.sample.sample (euler / simple, CFG 3, seed 0)."""
    latent = tw.empty_latent(tw.WAN21_T2V, *BIG)
    positive, negative = tw.make_conditioning(comfy, tw.WAN21_T2V, latent, seed=0)
    noise = comfy.sample.prepare_noise(latent, 0) if add_noise else torch.zeros_like(latent)
    return comfy.sample.sample(model, noise, STEPS, 3.0, "euler", "simple", positive, negative, latent,
                               disable_noise=not add_noise, start_step=start, last_step=end,
                               force_full_denoise=not leftover, disable_pbar=True, seed=0, **kw)


def _progress(pack, model) -> list[float]:  # noqa: F811
    return sorted({round(c.progress, 6) for c in last_run(pack, model).calls})


def test_slice_offset_finds_a_run_slice_and_a_forced_final_zero():
    full = [1.0, 0.9, 0.7, 0.4, 0.2, 0.0]
    assert slice_offset([1.0, 0.9, 0.7, 0.4], full) == 0
    assert slice_offset([0.4, 0.2, 0.0], full) == 3
    assert slice_offset([0.9, 0.7, 0.0], full) == 1  # KSamplerAdvanced with leftover noise off zeroes the end
    assert slice_offset([0.8, 0.5], full) is None and slice_offset([1.0], full) is None


def test_the_two_experts_of_a_split_run_follow_one_schedule(comfy, pack, tiny_models, caplog):  # noqa: F811
    base = tiny_models[tw.WAN21_T2V]
    whole = pack.patch.apply_sparseflow(base, backend="reference", block=64)  # the Patch node's defaults
    _ksampler_advanced(comfy, whole, 0, STEPS)
    high = pack.patch.apply_sparseflow(base, backend="reference", block=64)
    low = pack.patch.apply_sparseflow(base, backend="reference", block=64)
    with caplog.at_level(logging.INFO, logger="sparseflow.nodes"):
        _ksampler_advanced(comfy, high, 0, SPLIT, leftover=True)
        _ksampler_advanced(comfy, low, SPLIT, STEPS, add_noise=False)
    expected = [i / (STEPS - 1) for i in range(STEPS)]
    assert _progress(pack, whole) == pytest.approx(expected)
    assert _progress(pack, high) == pytest.approx(expected[:SPLIT])
    assert _progress(pack, low) == pytest.approx(expected[SPLIT:])
    windows = {round(c.progress, 6): c.window for c in last_run(pack, whole).calls}
    assert sorted(set(windows.values())) == [0, 1, 2]  # the balanced schedule's three windows over the run
    for expert in (high, low):
        assert all(windows[round(c.progress, 6)] == c.window for c in last_run(pack, expert).calls)
    assert f"steps 0..{SPLIT - 1} of a {STEPS}-step 'simple' run" in caplog.text
    assert f"steps {SPLIT}..{STEPS - 1} of a {STEPS}-step 'simple' run" in caplog.text


def test_denoise_below_one_counts_from_the_whole_schedule(comfy, pack, tiny_models):  # noqa: F811
    model = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], backend="reference", block=64)
    _ksampler_advanced(comfy, model, None, None, denoise=0.5)  # 6 steps of a 12-step run: steps 6..11
    assert _progress(pack, model) == pytest.approx([i / 11 for i in range(6, 12)])


def test_sigmas_from_no_known_schedule_take_progress_from_sigma_and_say_so(comfy, pack, tiny_models,  # noqa: F811
                                                                           caplog):
    model = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], backend="reference", block=64)
    sigmas = torch.tensor([0.83, 0.61, 0.37, 0.0])
    with caplog.at_level(logging.WARNING, logger="sparseflow.nodes"):
        _ksampler_advanced(comfy, model, None, None, sigmas=sigmas)
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    assert _progress(pack, model) == pytest.approx([1 - s / sigma_max for s in (0.83, 0.61, 0.37)], abs=1e-6)
    assert "could not find among ComfyUI's schedulers" in caplog.text and "progress mode 'sigma'" in caplog.text
