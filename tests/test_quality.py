"""sparseflow/quality.py against independent computations: PSNR per frame and overall, SSIM, NaN handling."""

from __future__ import annotations

import math

import pytest
import torch
from comfyui_sparseflow.sparseflow.quality import (
    finite_mean,
    frame_psnr,
    frame_ssim,
    frames_to_video,
    nonfinite_frames,
    psnr,
    relative_error,
    ssim,
)


def _videos(seed=0, shape=(2, 3, 4, 9, 10)):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(shape, generator=g)
    return ref + 0.05 * torch.randn(shape, generator=g), ref


def test_psnr_per_frame_and_overall_match_the_textbook_formula():
    x, ref = _videos()
    fp = frame_psnr(x, ref)
    for b in range(2):
        peak = float(ref[b].max() - ref[b].min())
        for t in range(4):
            mse = float(((x[b, :, t] - ref[b, :, t]) ** 2).mean())
            assert fp[b, t].item() == pytest.approx(10 * math.log10(peak ** 2 / mse), rel=1e-5)
        mse = float(((x[b] - ref[b]) ** 2).mean())
        assert psnr(x, ref)[b].item() == pytest.approx(10 * math.log10(peak ** 2 / mse), rel=1e-5)


def test_psnr_falls_as_the_difference_grows_and_is_inf_for_equal_videos():
    _, ref = _videos()
    small, big = ref + 0.01, ref + 0.1
    assert torch.isinf(psnr(ref, ref)).all() and torch.isinf(frame_psnr(ref, ref)).all()
    assert (psnr(small, ref) > psnr(big, ref) + 19).all()  # 10x the error: 20 dB


def test_ssim_is_one_for_equal_frames_lower_for_noise_and_symmetric():
    x, ref = _videos()
    assert torch.allclose(frame_ssim(ref, ref), torch.ones(2, 4), atol=1e-5)
    s = frame_ssim(x, ref)
    assert (s < 0.999).all() and (s > 0.5).all()
    assert torch.allclose(ssim(x, ref), s.mean(dim=1))
    noisier = frame_ssim(ref + 0.5 * (x - ref) * 10, ref)
    assert (noisier < s).all()


def test_ssim_of_a_constant_offset_matches_the_luminance_term_by_hand():
    # x = ref + d: variances and covariance equal, so SSIM = (2 mx mr + c1) / (mx^2 + mr^2 + c1) per window
    ref = torch.zeros(1, 1, 1, 7, 7)
    ref[..., 0, 0] = 1.0  # range 1 -> c1 = 1e-4; window 7 covers the frame once
    d = 0.2
    w = torch.exp(-((torch.arange(7.0) - 3) ** 2) / (2 * 1.5 ** 2))
    w = (w[:, None] * w[None, :]) / (w.sum() ** 2)
    mr = float(w[0, 0])
    mx = mr + d
    want = (2 * mx * mr + 1e-4) / (mx * mx + mr * mr + 1e-4)
    assert frame_ssim(ref + d, ref)[0, 0].item() == pytest.approx(want, rel=1e-5)


def test_nan_is_counted_per_frame_and_never_averaged_away():
    x, ref = _videos()
    x[1, 0, 2, 3, 3] = float("nan")
    counts = nonfinite_frames(x)
    assert counts.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0]]
    fp = frame_psnr(x, ref)
    assert math.isnan(fp[1, 2].item()) and math.isnan(finite_mean(fp))
    assert math.isnan(relative_error(x, ref))
    assert finite_mean(torch.tensor([math.inf, 20.0, 30.0])) == 25.0
    assert finite_mean(torch.tensor([math.inf])) == math.inf


def test_shape_mismatch_and_wrong_layouts_are_clear_errors():
    x, ref = _videos()
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(x[:, :, :3], ref)
    with pytest.raises(ValueError, match="batch, channels, frames"):
        psnr(x[0], ref[0])
    with pytest.raises(ValueError, match="frames, height, width, channels"):
        frames_to_video(torch.zeros(3, 4, 5))
    frames = torch.rand(5, 8, 6, 3)
    v = frames_to_video(frames)
    assert v.shape == (1, 3, 5, 8, 6) and torch.equal(v[0, :, 2], frames[2].permute(2, 0, 1))
