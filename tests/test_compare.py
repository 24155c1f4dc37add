"""sparseflow/compare.py without ComfyUI: shapes, the difference video, identical results, JSON-safe payloads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from comfyui_sparseflow.sparseflow.compare import (
    Comparison,
    RunTimes,
    as_video,
    compare_space,
    difference_video,
    plot_payload,
    report_text,
)


def _video(seed: int, shape=(1, 4, 3, 6, 5)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_identical_results_read_identical_and_the_payload_stays_strict_json():
    a = _video(0)
    c = Comparison(compare_space("latent", a, a.clone()), None, RunTimes(1.0, 2.5), None)
    assert c.latent.psnr_overall == math.inf and float(c.latent.ssim_overall) == pytest.approx(1.0)
    text = report_text(c)
    assert "PSNR identical" in text and "speed-up 2.50x" in text and "not captured" in text
    payload = plot_payload(c)
    assert payload["latent"]["psnr"] == [["inf"] * 3] and payload["speedup"] == 2.5
    json.dumps(payload, allow_nan=False)


def test_difference_video_scales_the_largest_difference_to_white_and_upscales_latents():
    a, b = _video(0), _video(1)
    frames, peak = difference_video(a, b, scale=8)
    assert frames.shape == (3, 48, 40, 3)
    assert peak == pytest.approx(float((a - b).abs().mean(dim=1).max()))
    assert float(frames.max()) == pytest.approx(1.0) and float(frames.min()) >= 0.0
    assert torch.equal(frames[..., 0], frames[..., 1])  # gray where all is finite


def test_images_and_latents_become_videos_and_other_ranks_are_refused():
    assert as_video(torch.zeros(9, 16, 16, 3), "images").shape == (1, 3, 9, 16, 16)
    assert as_video(torch.zeros(2, 9, 16, 16, 3), "images").shape == (2, 3, 9, 16, 16)
    assert as_video(torch.zeros(1, 4, 8, 8), "latent").shape == (1, 4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"got shape \(8, 8\)"):
        as_video(torch.zeros(8, 8), "latent")
    with pytest.raises(ValueError, match=r"differ in shape: patched \(1, 4, 3, 6, 5\) vs dense \(1, 4, 2, 6, 5\)"):
        compare_space("latent", _video(0), _video(0, (1, 4, 2, 6, 5)))
