"""Tiny random-weight Wan checkpoints in the real key layout, loaded and sampled through real ComfyUI.

Key names and shapes follow COMFY_NOTES §5 (ComfyUI 0.3.64 ``comfy/model_detection.py`` 377-422 and
``comfy/ldm/wan/model.py``): no prefix, dim a multiple of 128 (head_dim is fixed at 128), text_dim 4096.
The files are written as .safetensors and loaded with ``comfy.sd.load_diffusion_model`` so ComfyUI's own
model detection picks the class; conditioning is built by hand (no text encoder, CLIP or VAE needed) in the
same form the Wan nodes of ``comfy_extras/nodes_wan.py`` produce, and sampling goes through
``comfy.sample.sample`` exactly as ``nodes.common_ksampler`` calls it.

Only ``build_state_dict`` / ``state_dict_shapes`` / ``save_checkpoint`` work without ComfyUI; the rest takes the
namespace returned by ``comfy_env.import_comfy()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import save_file

WAN21_T2V = "wan21_t2v"
WAN21_I2V = "wan21_i2v"
WAN22_TI2V_5B = "wan22_ti2v_5b"
WAN21_VACE = "wan21_vace"
VARIANTS = (WAN21_T2V, WAN21_I2V, WAN22_TI2V_5B, WAN21_VACE)

# class names in comfy/supported_models.py (0.3.64) that detection must pick
EXPECTED_CLASS = {
    WAN21_T2V: "WAN21_T2V",
    WAN21_I2V: "WAN21_I2V",
    WAN22_TI2V_5B: "WAN22_T2V",
    WAN21_VACE: "WAN21_Vace",
}
LATENT_CHANNELS = {WAN21_T2V: 16, WAN21_I2V: 16, WAN22_TI2V_5B: 48, WAN21_VACE: 16}
# patch_embedding input channels: I2V = 16 noise + 4 mask + 16 image latent (model_base.WAN21.concat_cond)
IN_CHANNELS = {WAN21_T2V: 16, WAN21_I2V: 36, WAN22_TI2V_5B: 48, WAN21_VACE: 16}

TEXT_DIM = 4096  # not detected: WanModel's default text_dim
TEXT_TOKENS = 512  # Wan T5 tokenizer min_length
CLIP_DIM = 1280
CLIP_TOKENS = 257
VACE_FRAME_CHANNELS = 32  # inactive + reactive VAE latents
VACE_MASK_CHANNELS = 64  # 8x8 pixel mask folded into channels
FREQ_DIM = 256
HEAD_DIM = 128


@dataclass(frozen=True)
class TinyWanSpec:
    """Size and init of a tiny Wan: 2 heads x 128, ffn 512, 2 layers, 1 VACE layer by default."""

    dim: int = 256
    ffn_dim: int = 512
    num_layers: int = 2
    vace_layers: int = 1
    std: float = 0.02
    seed: int = 0
    dtype: torch.dtype = torch.float32

    @property
    def num_heads(self) -> int:
        return self.dim // HEAD_DIM


def _linear(name: str, n_out: int, n_in: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def _block_shapes(prefix: str, d: int, f: int, i2v: bool) -> dict[str, tuple[int, ...]]:
    """The 27 keys of a WanAttentionBlock (+3 for the I2V cross-attention)."""
    s: dict[str, tuple[int, ...]] = {f"{prefix}modulation": (1, 6, d)}
    for p in ("q", "k", "v", "o"):
        s.update(_linear(f"{prefix}self_attn.{p}", d, d))
    s[f"{prefix}self_attn.norm_q.weight"] = (d,)
    s[f"{prefix}self_attn.norm_k.weight"] = (d,)
    s[f"{prefix}norm3.weight"] = (d,)
    s[f"{prefix}norm3.bias"] = (d,)
    for p in ("q", "k", "v", "o"):
        s.update(_linear(f"{prefix}cross_attn.{p}", d, d))
    s[f"{prefix}cross_attn.norm_q.weight"] = (d,)
    s[f"{prefix}cross_attn.norm_k.weight"] = (d,)
    if i2v:
        s.update(_linear(f"{prefix}cross_attn.k_img", d, d))
        s.update(_linear(f"{prefix}cross_attn.v_img", d, d))
        s[f"{prefix}cross_attn.norm_k_img.weight"] = (d,)
    s.update(_linear(f"{prefix}ffn.0", f, d))
    s.update(_linear(f"{prefix}ffn.2", d, f))
    return s


def state_dict_shapes(variant: str, spec: TinyWanSpec = TinyWanSpec()) -> dict[str, tuple[int, ...]]:
    """Every key of the checkpoint with its shape (T2V 69, I2V 87, TI2V-5B 69, VACE 102 keys at 2 layers)."""
    if variant not in VARIANTS:
        raise ValueError(f"tiny_wan: variant must be one of {VARIANTS}; got {variant!r}")
    if spec.dim % HEAD_DIM:
        raise ValueError(f"tiny_wan: dim must be a multiple of {HEAD_DIM} (ComfyUI sets num_heads = dim // 128)")
    d, f = spec.dim, spec.ffn_dim
    c_out = LATENT_CHANNELS[variant]
    i2v = variant == WAN21_I2V
    s: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, IN_CHANNELS[variant], 1, 2, 2),
        "patch_embedding.bias": (d,),
    }
    s.update(_linear("text_embedding.0", d, TEXT_DIM))
    s.update(_linear("text_embedding.2", d, d))
    s.update(_linear("time_embedding.0", d, FREQ_DIM))
    s.update(_linear("time_embedding.2", d, d))
    s.update(_linear("time_projection.1", 6 * d, d))
    for i in range(spec.num_layers):
        s.update(_block_shapes(f"blocks.{i}.", d, f, i2v))
    s["head.modulation"] = (1, 2, d)
    s.update(_linear("head.head", 4 * c_out, d))  # 4 = prod(patch_size (1, 2, 2))
    if i2v:
        # MLPProj: LayerNorm(1280), Linear(1280, 1280), GELU, Linear(1280, d), LayerNorm(d)
        s["img_emb.proj.0.weight"] = (CLIP_DIM,)
        s["img_emb.proj.0.bias"] = (CLIP_DIM,)
        s.update(_linear("img_emb.proj.1", CLIP_DIM, CLIP_DIM))
        s.update(_linear("img_emb.proj.3", d, CLIP_DIM))
        s["img_emb.proj.4.weight"] = (d,)
        s["img_emb.proj.4.bias"] = (d,)
    if variant == WAN21_VACE:
        vace_in = VACE_FRAME_CHANNELS + VACE_MASK_CHANNELS
        s["vace_patch_embedding.weight"] = (d, vace_in, 1, 2, 2)
        s["vace_patch_embedding.bias"] = (d,)
        for j in range(spec.vace_layers):
            s.update(_block_shapes(f"vace_blocks.{j}.", d, f, False))
            if j == 0:
                s.update(_linear(f"vace_blocks.{j}.before_proj", d, d))
            s.update(_linear(f"vace_blocks.{j}.after_proj", d, d))
    return s


def _is_norm_scale(key: str) -> bool:
    """RMSNorm / affine LayerNorm scales: initialised near 1 so activations keep their scale."""
    return key.endswith(".weight") and (".norm" in key or key.startswith(("img_emb.proj.0.", "img_emb.proj.4.")))


def build_state_dict(variant: str, spec: TinyWanSpec = TinyWanSpec()) -> dict[str, torch.Tensor]:
    """Seeded random weights: N(0, std) everywhere, norm scales 1 + N(0, std)."""
    gen = torch.Generator().manual_seed(spec.seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in state_dict_shapes(variant, spec).items():
        t = torch.randn(shape, generator=gen, dtype=torch.float32) * spec.std
        if _is_norm_scale(key):
            t += 1.0
        out[key] = t.to(spec.dtype).contiguous()
    return out


def save_checkpoint(variant: str, directory: str | Path, spec: TinyWanSpec = TinyWanSpec()) -> Path:
    """Write ``<directory>/tiny_<variant>.safetensors`` and return its path."""
    path = Path(directory) / f"tiny_{variant}.safetensors"
    save_file(build_state_dict(variant, spec), str(path))
    return path


def load_tiny_wan(comfy: SimpleNamespace, variant: str, directory: str | Path,
                  spec: TinyWanSpec = TinyWanSpec()) -> Any:
    """Save the checkpoint and load it with ``comfy.sd.load_diffusion_model``; returns the ModelPatcher."""
    path = save_checkpoint(variant, directory, spec)
    return comfy.sd.load_diffusion_model(str(path))


def model_class_name(model: Any) -> str:
    """The supported_models class that detection chose (e.g. 'WAN21_T2V')."""
    return type(model.model.model_config).__name__


def empty_latent(variant: str, frames: int = 3, height: int = 8, width: int = 8, batch: int = 1) -> torch.Tensor:
    """A zero latent (B, C, T, H, W) as EmptyHunyuanLatentVideo / Wan22ImageToVideoLatent make it."""
    return torch.zeros(batch, LATENT_CHANNELS[variant], frames, height, width)


def make_conditioning(comfy: SimpleNamespace, variant: str, latent: torch.Tensor,
                      seed: int = 0) -> tuple[list, list]:
    """(positive, negative) in ComfyUI's CONDITIONING format ``[[context, {extras}]]``.

    context is a random stand-in for UMT5 output, (1, 512, 4096), different for positive and negative so CFG
    matters. I2V adds ``clip_vision_output`` (penultimate_hidden_states (1, 257, 1280)) and
    ``concat_latent_image`` / ``concat_mask`` (first latent frame known), as WanImageToVideo does. VACE adds
    ``vace_frames`` [(1, 32, T, H, W)], ``vace_mask`` [(1, 64, T, H, W)], ``vace_strength`` [1.0], as
    WanVaceToVideo does.
    """
    gen = torch.Generator().manual_seed(seed)
    _, _, t, h, w = latent.shape

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen)

    extras: dict[str, Any] = {}
    if variant == WAN21_I2V:
        clip = comfy.clip_vision.Output()
        clip.penultimate_hidden_states = rand(1, CLIP_TOKENS, CLIP_DIM)
        mask = torch.ones(1, 1, t, h, w)
        mask[:, :, :1] = 0.0
        extras.update(clip_vision_output=clip, concat_latent_image=rand(1, LATENT_CHANNELS[variant], t, h, w),
                      concat_mask=mask)
    elif variant == WAN21_VACE:
        extras.update(vace_frames=[rand(1, VACE_FRAME_CHANNELS, t, h, w)],
                      vace_mask=[torch.ones(1, VACE_MASK_CHANNELS, t, h, w)], vace_strength=[1.0])
    positive = [[rand(1, TEXT_TOKENS, TEXT_DIM), dict(extras)]]
    negative = [[rand(1, TEXT_TOKENS, TEXT_DIM), dict(extras)]]
    return positive, negative


def sample_tiny(comfy: SimpleNamespace, model: Any, latent: torch.Tensor, positive: list, negative: list, *,
                steps: int = 2, cfg: float = 3.0, seed: int = 0, sampler_name: str = "euler",
                scheduler: str = "simple", denoise: float = 1.0,
                noise_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample like ``nodes.common_ksampler`` (no preview callback, no progress bar); returns the latent.

    ``noise_mask`` is the LATENT's "noise_mask" (e.g. (1, 1, T, H, W) with 0 on known frames, as
    Wan22ImageToVideoLatent sets it; WAN22 then gives each frame its own timestep).
    """
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                               denoise=denoise, noise_mask=noise_mask, disable_pbar=True, seed=seed)


def sample_variant(comfy: SimpleNamespace, model: Any, variant: str, *, frames: int = 3, height: int = 8,
                   width: int = 8, batch: int = 1, steps: int = 2, cfg: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Empty latent + conditioning for ``variant`` + ``sample_tiny``, in one call."""
    latent = empty_latent(variant, frames, height, width, batch)
    positive, negative = make_conditioning(comfy, variant, latent, seed=seed)
    return sample_tiny(comfy, model, latent, positive, negative, steps=steps, cfg=cfg, seed=seed)
