"""Full-size random-weight Wan checkpoints in the real key format, built directly on the GPU.

Key names and shapes come from tests/tiny_wan.py (`state_dict_shapes`, COMFY_NOTES §5), so ComfyUI's
detection (`comfy.sd.load_diffusion_model_state_dict`) picks the class: WAN21_T2V for Wan 2.1 1.3B/14B,
WAN22_T2V for Wan 2.2 TI2V 5B (in/out 48). Sizes are the released models' (ANCHORS.md), latents the
ones ComfyUI makes for the named video sizes (EmptyHunyuanLatentVideo / Wan22ImageToVideoLatent).

Init: weights N(0, 1/fan_in) (variance preserving, so 30-40 random blocks stay finite in bf16), biases and
modulations N(0, 0.02^2), norm scales 1 + N(0, 0.02^2). Random weights give near-uniform attention, which
matters for the data-dependent methods (sol_attn's block choice, calibration): see docs/performance.md
("End to end in ComfyUI").
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass

import torch

from .boot import REPO

__all__ = ["MODELS", "WanBenchModel", "build_state_dict", "tiny_wan_module"]


@dataclass(frozen=True)
class WanBenchModel:
    """One benchmark model: architecture, the latent it samples, and the video it stands for."""

    name: str
    variant: str            # tests/tiny_wan.py variant (key layout)
    dim: int
    ffn_dim: int
    layers: int
    latent: tuple[int, int, int, int]   # (C, T, H, W)
    video: str
    expected_class: str

    @property
    def heads(self) -> int:
        return self.dim // 128

    @property
    def tokens(self) -> int:
        _, t, h, w = self.latent
        return t * math.ceil(h / 2) * math.ceil(w / 2)


MODELS: dict[str, WanBenchModel] = {m.name: m for m in (
    WanBenchModel("wan21_1.3b", "wan21_t2v", 1536, 8960, 30, (16, 21, 60, 104), "832x480x81f", "WAN21_T2V"),
    WanBenchModel("wan22_5b", "wan22_ti2v_5b", 3072, 14336, 30, (48, 31, 44, 80), "1280x704x121f", "WAN22_T2V"),
    WanBenchModel("wan21_14b", "wan21_t2v", 5120, 13824, 40, (16, 21, 90, 160), "1280x720x81f", "WAN21_T2V"),
    # CPU development: the same code path at a size the reference backend runs in seconds (640 tokens, 5 blocks)
    WanBenchModel("tiny", "wan21_t2v", 256, 512, 4, (16, 5, 16, 32), "tiny", "WAN21_T2V"),
)}


def tiny_wan_module():
    """tests/tiny_wan.py loaded by path (tests/ is not a package)."""
    name = "sparseflow_bench_tiny_wan"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "tiny_wan.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def build_state_dict(model: WanBenchModel, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of the checkpoint, seeded random values, allocated on `device` in `dtype`."""
    tw = tiny_wan_module()
    spec = tw.TinyWanSpec(dim=model.dim, ffn_dim=model.ffn_dim, num_layers=model.layers)
    gen = torch.Generator(device=device).manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in tw.state_dict_shapes(model.variant, spec).items():
        t = torch.empty(shape, device=device, dtype=dtype)
        if key.endswith(".weight") and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            t.normal_(0.0, fan_in ** -0.5, generator=gen)
        else:
            t.normal_(0.0, 0.02, generator=gen)
            if tw._is_norm_scale(key):
                t += 1.0
        out[key] = t
    return out
