"""Synthetic q/k/v with the attention structure of video DiT heads, for the demo and calibration tests.

Three head kinds, each built so one route is the right answer:
- `local`: temporally local (a query attends to its own and neighbouring frames) -> sparse;
- `smooth`: attends within its own frame, to spatially smooth values -> linear (pooled);
- `global`: attends to a content cluster spread over all frames -> dense.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .geometry import Geometry

__all__ = ["HEAD_KINDS", "structured_qkv"]

HEAD_KINDS = ("local", "smooth", "global")


def _frame_codes(frames: int, dim: int, reach: float, gen: torch.Generator) -> torch.Tensor:
    """Unit vectors per frame whose dot products fall off with frame distance (Gaussian of width `reach`)."""
    base = torch.randn(frames + 8, dim, generator=gen, dtype=torch.float64)
    offs = torch.arange(-4, 5, dtype=torch.float64)
    w = torch.exp(-(offs / reach) ** 2)
    codes = torch.stack([(w[:, None] * base[f:f + 9]).sum(0) for f in range(frames)])
    return codes / codes.norm(dim=-1, keepdim=True)


def _smooth_field(frames: int, h: int, w: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """(T, h*w, D) values varying slowly over space: a few low-frequency cosines per channel."""
    y = torch.arange(h, dtype=torch.float64)[:, None] / max(h, 1)
    x = torch.arange(w, dtype=torch.float64)[None, :] / max(w, 1)
    out = torch.zeros(frames, h * w, dim, dtype=torch.float64)
    for _ in range(3):
        fy, fx = torch.rand(2, generator=gen, dtype=torch.float64) * 1.5
        amp = torch.randn(frames, 1, dim, generator=gen, dtype=torch.float64)
        phase = torch.rand(dim, generator=gen, dtype=torch.float64) * 6.28
        wave = torch.cos(6.28 * (fy * y + fx * x)[..., None] + phase).reshape(h * w, dim)
        out += amp * wave[None]
    return out


def structured_qkv(geometry: Geometry, kinds: Sequence[str] = HEAD_KINDS, dim: int = 128, batch: int = 1,
                   seed: int = 0, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, H, L, D) q, k, v, one head per entry of `kinds`. Extra tokens get random vectors."""
    g = geometry
    gen = torch.Generator().manual_seed(seed)
    f = g.tokens_per_frame
    frame = torch.arange(g.video_tokens) // f
    qs, ks, vs = [], [], []
    for kind in kinds:
        if kind not in HEAD_KINDS:
            raise ValueError(f"synthetic: head kind must be one of {HEAD_KINDS}, got {kind!r}")
        noise = [torch.randn(batch, g.video_tokens, dim, generator=gen, dtype=torch.float64) for _ in range(3)]
        # A code c scaled by sqrt(s) * D^(1/4) gives logits s * (c . c') under the 1/sqrt(D) softmax scale.
        amp = dim ** 0.25
        if kind == "local":
            codes = _frame_codes(g.frames, dim, reach=1.2, gen=gen)[frame] * amp * 7.0 ** 0.5
            q, k, v = codes + 0.3 * noise[0], codes + 0.3 * noise[1], noise[2]
        elif kind == "smooth":
            codes = _frame_codes(g.frames, dim, reach=0.3, gen=gen)[frame] * amp * 7.0 ** 0.5
            field = _smooth_field(g.frames, g.height, g.width, dim, gen).reshape(g.video_tokens, dim)
            q, k = codes + 0.3 * noise[0], codes + 0.3 * noise[1]
            v = field[None].expand(batch, -1, -1) + 0.05 * noise[2]
        else:
            clusters = torch.randn(8, dim, generator=gen, dtype=torch.float64)
            clusters = clusters / clusters.norm(dim=-1, keepdim=True) * amp * 8.0 ** 0.5
            member = torch.randint(0, 8, (g.video_tokens,), generator=gen)
            q, k, v = clusters[member] + 0.3 * noise[0], clusters[member] + 0.3 * noise[1], noise[2]
        extra = [torch.randn(batch, g.prefix + g.suffix, dim, generator=gen, dtype=torch.float64) for _ in range(3)]
        for lst, x, e in zip((qs, ks, vs), (q, k, v), extra):
            lst.append(torch.cat([e[:, :g.prefix], x, e[:, g.prefix:]], dim=1))
    out = (torch.stack(t, dim=1).to(device=device, dtype=dtype) for t in (qs, ks, vs))
    return tuple(out)  # type: ignore[return-value]
