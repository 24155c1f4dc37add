"""Euler sampler for the rectified-flow fidelity model, with ComfyUI's shifted flow sigmas.

Sigmas: s_i = 1 - i/n, shifted as ModelSamplingDiscreteFlow does (shift * s / (1 + (shift - 1) * s));
step: x <- x + (sigma_{i+1} - sigma_i) * v(x, sigma_i). The override's `begin_step` is told the step and sigma
before each model call, so schedules and sol_attn's start percent see the same progress ComfyUI would give.
"""

from __future__ import annotations

import torch

from .model import ModelConfig, class_context, predict

__all__ = ["flow_sigmas", "held_out_noise", "sample"]


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def held_out_noise(cfg: ModelConfig, batch: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise (B, 16, T, H, W), classes (B,)) for evaluation seeds (never used as training data seeds)."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.arange(batch) % cfg.classes
    noise = torch.randn((batch, *cfg.latent_shape), generator=gen)
    return noise.to(device), classes.to(device)


@torch.no_grad()
def sample(model: torch.nn.Module, cfg: ModelConfig, noise: torch.Tensor, classes: torch.Tensor, override, *,
           steps: int = 20, shift: float = 3.0) -> torch.Tensor:
    """Final latent (fp32) from `noise`, attention through `override` (which must have begin_step)."""
    sigmas = flow_sigmas(steps, shift)
    ctx = class_context(cfg, classes)
    x = noise.float().clone()
    b = x.shape[0]
    for i in range(steps):
        override.begin_step(i, steps, float(sigmas[i]))
        sig = torch.full((b,), float(sigmas[i]), device=x.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            v = predict(model, x, sig, ctx, override=override)
        x = x + float(sigmas[i + 1] - sigmas[i]) * v.float()
    return x
