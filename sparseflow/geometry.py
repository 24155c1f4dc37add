"""Token geometry of one self-attention call: frames x height x width video tokens plus extra tokens.

Follows Wan's patchify (ComfyUI `comfy/ldm/wan/model.py`: circular pad to the patch size, then
`patch_embedding(x).flatten(2).transpose(1, 2)`, i.e. frame-major order). See docs/spec.md §2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Geometry",
    "VAE_STRIDES",
    "WAN_PATCH",
    "geometry_from_latent",
    "latent_shape_for_video",
    "token_grid",
]

WAN_PATCH = (1, 2, 2)
# VAE (time, height, width) stride per model family, from ComfyUI nodes_wan.py latent sizes.
VAE_STRIDES = {"wan2.1": (4, 8, 8), "wan2.2-14b": (4, 8, 8), "wan2.2-5b": (4, 16, 16)}


@dataclass(frozen=True)
class Geometry:
    """Token layout: `prefix` extra tokens, `frames` x `height` x `width` video tokens, `suffix` extra tokens."""

    frames: int
    height: int
    width: int
    prefix: int = 0
    suffix: int = 0

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"geometry: {name} must be an int >= 1, got {value!r}")
        for name in ("prefix", "suffix"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"geometry: {name} must be an int >= 0, got {value!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def video_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def length(self) -> int:
        return self.prefix + self.video_tokens + self.suffix

    def check_length(self, length: int, what: str = "q") -> None:
        """Raise ValueError unless a sequence of `length` tokens has this geometry."""
        if length != self.length:
            raise ValueError(
                f"geometry: {what} has {length} tokens but the geometry {self.describe()} needs "
                f"prefix + frames*height*width + suffix = {self.length}"
            )

    def describe(self) -> str:
        extra = f" +{self.prefix} prefix" if self.prefix else ""
        extra += f" +{self.suffix} suffix" if self.suffix else ""
        return f"{self.frames}x{self.height}x{self.width}{extra}"


def token_grid(latent_thw: tuple[int, int, int], patch: tuple[int, int, int] = WAN_PATCH,
               extra_frames: int = 0) -> tuple[int, int, int]:
    """Grid (T, h, w) after ComfyUI's pad-to-patch and patchify of a (T, H, W) latent.

    `extra_frames` counts latent frames concatenated in time before patchify (Wan `time_dim_concat`).
    """
    t, h, w = latent_thw
    pt, ph, pw = patch
    return (math.ceil((t + extra_frames) / pt), math.ceil(h / ph), math.ceil(w / pw))


def geometry_from_latent(shape: tuple[int, ...], patch: tuple[int, int, int] = WAN_PATCH, *, prefix: int = 0,
                         suffix: int = 0, extra_frames: int = 0) -> Geometry:
    """Geometry of the self-attention sequence for a latent of shape (B, C, T, H, W) or (T, H, W)."""
    if len(shape) not in (3, 5):
        raise ValueError(f"geometry: latent shape must be (B, C, T, H, W) or (T, H, W), got {tuple(shape)}")
    t, h, w = token_grid(tuple(int(s) for s in shape[-3:]), patch, extra_frames)
    return Geometry(t, h, w, prefix, suffix)


def latent_shape_for_video(width: int, height: int, frames: int, family: str = "wan2.1") -> tuple[int, int, int]:
    """Latent (T, H, W) ComfyUI makes for a video of `frames` frames at width x height (nodes_wan.py)."""
    if family not in VAE_STRIDES:
        raise ValueError(f"geometry: family must be one of {sorted(VAE_STRIDES)}, got {family!r}")
    st, sh, sw = VAE_STRIDES[family]
    return ((frames - 1) // st + 1, height // sh, width // sw)
