"""Quality of a sampled video against the dense one: PSNR, SSIM (Gaussian window, per frame) and temporal terms.

All metrics compare final latents (B, C, T, H, W) per video; the peak for PSNR/SSIM is the dense video's value
range (max - min), so the numbers mean the same on latents and on decoded frames in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "temporal"]


def _range(ref: torch.Tensor) -> torch.Tensor:
    flat = ref.flatten(1).float()
    return (flat.max(dim=1).values - flat.min(dim=1).values).clamp_min(1e-6)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of each video against `ref`; inf when equal."""
    mse = (x.float() - ref.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(_range(ref).pow(2) / mse)


def _gauss(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    a = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(a * a) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, ref: torch.Tensor, size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """(B,) mean SSIM (Wang et al. 2004; K1 0.01, K2 0.03) over channels, frames and valid window positions."""
    b, c, t, h, w = ref.shape
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
    return s.reshape(b, -1).mean(dim=1)


def temporal(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Frame-to-frame terms over all videos.

    motion_ratio: mean |x[t+1] - x[t]| over the same for `ref` (1 = as much change between frames as dense;
    > 1 flicker, < 1 frozen motion). diff_rel_err: ||dx - dref|| / ||dref|| of the frame differences.
    """
    dx = (x[:, :, 1:] - x[:, :, :-1]).float()
    dr = (ref[:, :, 1:] - ref[:, :, :-1]).float()
    ratio = float(dx.abs().mean() / dr.abs().mean().clamp_min(1e-12))
    err = float((dx - dr).norm() / dr.norm().clamp_min(1e-12))
    return {"motion_ratio": ratio, "diff_rel_err": err}


def finite_mean(values: torch.Tensor) -> float:
    """Mean of finite entries; inf if all are inf (identical videos)."""
    v = values[torch.isfinite(values)]
    return float(v.mean()) if v.numel() else math.inf
