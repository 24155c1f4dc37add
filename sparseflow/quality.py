"""How far a sampled video is from the dense one: PSNR and SSIM per frame and overall, temporal terms.

Videos are (B, C, T, H, W): Wan latents as ComfyUI holds them, or decoded frames laid out the same way
(`frames_to_video`). The peak for PSNR and SSIM is the reference's value range (max - min) per video, so a
number means the same on latents and on frames in [0, 1]. Non-finite values are never averaged away:
`nonfinite_frames` counts them per frame and the means skip only +inf (identical frames), never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["finite_mean", "frame_psnr", "frame_ssim", "frames_to_video", "nonfinite_frames", "psnr",
           "relative_error", "ssim", "temporal"]


def _check(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"the two videos differ in shape: {tuple(x.shape)} vs {tuple(ref.shape)}")
    if ref.dim() != 5:
        raise ValueError(f"a video is (batch, channels, frames, height, width); got shape {tuple(ref.shape)}")


def _range(ref: torch.Tensor) -> torch.Tensor:
    flat = ref.flatten(1).float()
    return (flat.max(dim=1).values - flat.min(dim=1).values).clamp_min(1e-6)


def frames_to_video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE frames (T, H, W, C) -> one video (1, C, T, H, W)."""
    if images.dim() != 4:
        raise ValueError(f"IMAGE frames are (frames, height, width, channels); got shape {tuple(images.shape)}")
    return images.permute(3, 0, 1, 2).unsqueeze(0)


def nonfinite_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, T) count of NaN / inf values in each frame."""
    return (~torch.isfinite(x)).permute(0, 2, 1, 3, 4).flatten(2).sum(dim=2)


def frame_psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B, T) PSNR in dB of each frame against `ref` (peak: the reference video's range); inf when equal."""
    _check(x, ref)
    mse = (x.float() - ref.float()).pow(2).permute(0, 2, 1, 3, 4).flatten(2).mean(dim=2)
    return 10 * torch.log10(_range(ref).pow(2)[:, None] / mse)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of each whole video against `ref`; inf when equal."""
    _check(x, ref)
    mse = (x.float() - ref.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(_range(ref).pow(2) / mse)


def _gauss(size: int, sigma: float) -> torch.Tensor:
    a = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(a * a) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def frame_ssim(x: torch.Tensor, ref: torch.Tensor, size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """(B, T) mean SSIM (Wang et al. 2004; K1 0.01, K2 0.03) of each frame over channels and window positions.

    The window shrinks to the frame when a frame is smaller than `size` (tiny latents)."""
    _check(x, ref)
    b, c, t, h, w = ref.shape
    size = min(size, h, w)
    xs = x.float().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    rs = ref.float().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    win = _gauss(size, sigma).to(ref.device)[None, None]
    rng = _range(ref).repeat_interleave(t * c)[:, None, None, None]
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, win)

    mx, mr = blur(xs), blur(rs)
    vx = blur(xs * xs) - mx * mx
    vr = blur(rs * rs) - mr * mr
    cov = blur(xs * rs) - mx * mr
    s = ((2 * mx * mr + c1) * (2 * cov + c2)) / ((mx * mx + mr * mr + c1) * (vx + vr + c2))
    return s.reshape(b, t, -1).mean(dim=2)


def ssim(x: torch.Tensor, ref: torch.Tensor, size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """(B,) mean SSIM over frames."""
    return frame_ssim(x, ref, size, sigma).mean(dim=1)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| over the whole tensor (NaN if either holds NaN)."""
    _check(x, ref)
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def temporal(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Frame-to-frame terms over all videos.

    motion_ratio: mean |x[t+1] - x[t]| over the same for `ref` (1 = as much change between frames as dense;
    > 1 flicker, < 1 frozen motion). diff_rel_err: ||dx - dref|| / ||dref|| of the frame differences.
    """
    _check(x, ref)
    dx = (x[:, :, 1:] - x[:, :, :-1]).float()
    dr = (ref[:, :, 1:] - ref[:, :, :-1]).float()
    ratio = float(dx.abs().mean() / dr.abs().mean().clamp_min(1e-12))
    err = float((dx - dr).norm() / dr.norm().clamp_min(1e-12))
    return {"motion_ratio": ratio, "diff_rel_err": err}


def finite_mean(values: torch.Tensor) -> float:
    """Mean over entries that are not +inf (identical frames); NaN stays NaN; inf if every entry is +inf."""
    v = values[~torch.isposinf(values)]
    return float(v.mean()) if v.numel() else math.inf
