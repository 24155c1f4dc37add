"""Procedural latent videos for the fidelity DiT: camera pans over textures with moving, rotating shapes.

Each sample is rendered as 3-channel frames at the latent resolution, then folded in time as Wan's VAE does
(latent frame 0 = video frame 0 alone, a sharp "first frame"; latent frame f >= 1 = the mean of video frames
4f-3 .. 4f, so motion blurs), then mapped to 16 channels by a fixed quadratic feature map and a seeded random
matrix (a stand-in for the VAE encoder), standardised to about unit variance.

The class (8) sets the pan direction (4) and the shape kind (discs / rotating squares): it is what the
`context` tensor tells the model. Everything is a pure function of (config, seed), generated on the device.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .model import LATENT_CHANNELS, ModelConfig

__all__ = ["VAE_TIME_STRIDE", "latent_to_rgb", "make_batch", "render_rgb"]

VAE_TIME_STRIDE = 4
_SHAPES = 3
_WAVES = 5


def _video_frames(latent_frames: int) -> int:
    return VAE_TIME_STRIDE * (latent_frames - 1) + 1


def render_rgb(cfg: ModelConfig, classes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, V, H, W) video frames in [0, 1]-ish for the given classes; V = 4 (T - 1) + 1."""
    dev = classes.device
    b, v, h, w = classes.shape[0], _video_frames(cfg.frames), cfg.height, cfg.width

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=gen, device="cpu").to(dev)

    t = torch.arange(v, device=dev, dtype=torch.float32)
    yy, xx = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    # -- camera pan over a texture of low-frequency cosines
    direction = classes % 4
    angle = direction.float() * (math.pi / 2) + (rand(b) - 0.5) * 0.6
    speed = 0.25 + 0.25 * rand(b)  # latent pixels per video frame
    ox = (torch.cos(angle) * speed)[:, None] * t[None]  # (B, V)
    oy = (torch.sin(angle) * speed)[:, None] * t[None]
    freq = (rand(b, _WAVES, 2) - 0.5) * (2 * math.pi / 6.0)  # periods of >= 6 latent pixels
    phase = rand(b, _WAVES) * 2 * math.pi
    amp = (rand(b, _WAVES, 3) - 0.5) * 0.5
    base = rand(b, 3) * 0.6 + 0.2
    px = xx[None, None] + ox[..., None, None]  # (B, V, H, W)
    py = yy[None, None] + oy[..., None, None]
    arg = (freq[:, :, None, None, None, 0] * px[:, None] + freq[:, :, None, None, None, 1] * py[:, None]
           + phase[:, :, None, None, None])  # (B, K, V, H, W)
    waves = torch.cos(arg)
    rgb = base[:, :, None, None, None] + torch.einsum("bkvhw,bkc->bcvhw", waves, amp)
    # -- shapes moving in straight lines; kind 1 = squares rotating
    square = (classes // 4) % 2 == 1
    for _ in range(_SHAPES):
        c0x, c0y = rand(b) * w, rand(b) * h
        vel = (rand(b, 2) - 0.5) * 0.8
        radius = 2.5 + 3.5 * rand(b)
        omega = (rand(b) - 0.5) * 0.3
        color = rand(b, 3)
        cx = (c0x[:, None] + vel[:, :1] * t[None]) % w  # wrap around the frame
        cy = (c0y[:, None] + vel[:, 1:] * t[None]) % h
        dx = xx[None, None] - cx[..., None, None]
        dy = yy[None, None] - cy[..., None, None]
        theta = (omega[:, None] * t[None])[..., None, None]
        rx = torch.cos(theta) * dx + torch.sin(theta) * dy
        ry = -torch.sin(theta) * dx + torch.cos(theta) * dy
        sd_disc = radius[:, None, None, None] - torch.sqrt(dx * dx + dy * dy)
        sd_square = radius[:, None, None, None] - torch.maximum(rx.abs(), ry.abs())
        sd = torch.where(square[:, None, None, None], sd_square, sd_disc)
        alpha = torch.sigmoid(sd * 2.0)[:, None]  # (B, 1, V, H, W)
        rgb = rgb * (1 - alpha) + color[:, :, None, None, None] * alpha
    return rgb


def _fold_time(rgb: torch.Tensor) -> torch.Tensor:
    """Wan VAE time folding: frame 0 alone, then groups of 4 averaged. (B, C, V, H, W) -> (B, C, T, H, W)."""
    first = rgb[:, :, :1]
    rest = rgb[:, :, 1:]
    b, c, v, h, w = rest.shape
    rest = rest.reshape(b, c, v // VAE_TIME_STRIDE, VAE_TIME_STRIDE, h, w).mean(dim=3)
    return torch.cat([first, rest], dim=2)


def _features(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    return torch.stack([r, g, b, r * g, g * b, b * r, r * r, g * g, b * b], dim=1)


@lru_cache(maxsize=4)
def _projection(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed (16, 9) encoder matrix, per-channel mean and std measured on a fixed reference batch."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    m = torch.randn(LATENT_CHANNELS, 9, generator=gen) / 3.0
    ref_cfg = ModelConfig(seed=seed)
    classes = torch.arange(ref_cfg.classes).repeat(2)
    feats = _features(_fold_time(render_rgb(ref_cfg, classes, torch.Generator().manual_seed(30_000 + seed))))
    lat = torch.einsum("cf,bfthw->bcthw", m, feats)
    mean = lat.mean(dim=(0, 2, 3, 4))
    std = lat.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    return m, mean, std


def make_batch(cfg: ModelConfig, batch: int, seed: int,
               device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 (B, 16, T, H, W) fp32, classes (B,) int64), a pure function of (cfg, batch, seed)."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, cfg.classes, (batch,), generator=gen).to(device)
    rgb = _fold_time(render_rgb(cfg, classes, gen))
    m, mean, std = (t.to(device) for t in _projection(cfg.seed))
    lat = torch.einsum("cf,bfthw->bcthw", m, _features(rgb))
    lat = (lat - mean[None, :, None, None, None]) / std[None, :, None, None, None]
    return lat.contiguous(), classes


def latent_to_rgb(cfg: ModelConfig, latent: torch.Tensor) -> torch.Tensor:
    """Approximate decode for pictures: least-squares inverse of the linear part of the encoder. (B,3,T,H,W)."""
    m, mean, std = (t.to(latent.device) for t in _projection(cfg.seed))
    lat = latent.float() * std[None, :, None, None, None] + mean[None, :, None, None, None]
    feats = torch.einsum("fc,bcthw->bfthw", torch.linalg.pinv(m), lat)
    return feats[:, :3].clamp(0, 1)
