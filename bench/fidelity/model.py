"""The fidelity model: ComfyUI's own WanModel at small size, its init, conditioning and checkpoint I/O.

The network is `comfy.ldm.wan.model.WanModel` (t2v) with dim = 128 x heads, so every self-attention head has
head_dim 128 and the real SparseFlow kernel path runs. Conditioning is a fixed random "text" tensor per class
of shape (Lc, 4096) fed as `context` (WanModel's text_dim is 4096 and is not detected by ComfyUI's loader).
Checkpoints are safetensors with the real Wan key names (COMFY_NOTES §5), so `comfy.sd.load_diffusion_model`
detects them as WAN21_T2V.

ComfyUI is imported from $COMFYUI_PATH, else the repo's git-ignored `.comfy/` copy (made by
`bench/fidelity/prepare_comfy.sh` for the GPU machine), else /opt/ComfyUI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

__all__ = ["ModelConfig", "build_model", "class_context", "import_comfy_wan", "load_checkpoint", "predict",
           "save_checkpoint", "sdpa_override", "to_half"]

log = logging.getLogger("sparseflow.bench.fidelity.model")

_REPO = Path(__file__).resolve().parents[2]
HEAD_DIM = 128
TEXT_DIM = 4096
LATENT_CHANNELS = 16
TIMESTEP_SCALE = 1000.0  # ComfyUI ModelSamplingDiscreteFlow: timestep = sigma * 1000


@dataclass(frozen=True)
class ModelConfig:
    """Size of the fidelity DiT and of its videos (latent frames x height x width, 16 channels)."""

    dim: int = 384
    ffn_dim: int = 1024
    num_layers: int = 6
    classes: int = 8
    context_tokens: int = 4
    frames: int = 13
    height: int = 32
    width: int = 32
    seed: int = 0

    @property
    def num_heads(self) -> int:
        return self.dim // HEAD_DIM

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (LATENT_CHANNELS, self.frames, self.height, self.width)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls(**json.loads(text))


def _comfy_root() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser()
    local = _REPO / ".comfy"
    return local if (local / "comfy" / "ldm" / "wan" / "model.py").is_file() else Path("/opt/ComfyUI")


def import_comfy_wan() -> SimpleNamespace:
    """Import `comfy.ldm.wan.model` and `comfy.ops` (CPU forced when no CUDA device is present)."""
    root = _comfy_root()
    if not (root / "comfy" / "ldm" / "wan" / "model.py").is_file():
        raise RuntimeError(f"ComfyUI not found at {root}: set COMFYUI_PATH or run bench/fidelity/prepare_comfy.sh")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.ldm.wan.model as wan
    import comfy.ops as ops

    return SimpleNamespace(root=root, wan=wan, ops=ops)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", init: bool = True) -> torch.nn.Module:
    """A fp32 WanModel of `cfg`'s size, initialised as Wan 2.1 does (seeded) when `init`."""
    c = import_comfy_wan()
    model = c.wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=cfg.context_tokens,
                           in_dim=LATENT_CHANNELS, dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=256,
                           text_dim=TEXT_DIM, out_dim=LATENT_CHANNELS, num_heads=cfg.num_heads,
                           num_layers=cfg.num_layers, qk_norm=True, cross_attn_norm=True, eps=1e-6,
                           device=torch.device(device), dtype=torch.float32,
                           operations=c.ops.disable_weight_init)
    if init:
        _init_weights(model, cfg.seed)
    return model


def _init_weights(model: torch.nn.Module, seed: int) -> None:
    """Wan 2.1's init (wan/modules/model.py `init_weights`): xavier linears, zero biases, normal embeddings,
    modulation randn / sqrt(dim), norm scales 1, zero output head. ComfyUI's ops skip init, so all is set here."""
    gen = torch.Generator().manual_seed(seed)

    def fill(p: torch.Tensor, t: torch.Tensor) -> None:
        with torch.no_grad():
            p.copy_(t.to(p.dtype))

    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("modulation"):
            fill(p, torch.randn(shape, generator=gen) / math.sqrt(shape[-1]))
        elif name.startswith("head.head."):
            fill(p, torch.zeros(shape))
        elif name.endswith(".bias"):
            fill(p, torch.zeros(shape))
        elif ".norm" in name or name.startswith("norm"):
            fill(p, torch.ones(shape))
        elif name.startswith(("text_embedding", "time_embedding")) and p.dim() == 2:
            fill(p, torch.randn(shape, generator=gen) * 0.02)
        elif p.dim() >= 2:
            fan_out, fan_in = shape[0], math.prod(shape[1:])
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            fill(p, (torch.rand(shape, generator=gen) * 2 - 1) * bound)
        else:
            fill(p, torch.ones(shape))


def class_context(cfg: ModelConfig, classes: torch.Tensor) -> torch.Tensor:
    """(B, Lc, 4096) stand-in "text" per class: a fixed seeded Gaussian table, unit variance."""
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    table = torch.randn(cfg.classes, cfg.context_tokens, TEXT_DIM, generator=gen)
    return table[classes.cpu()].to(classes.device)


def sdpa_override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                  skip_output_reshape=False, **kwargs):
    """Dense attention through torch SDPA for every call (self and cross), same on CPU and GPU; trains too.

    On CUDA, fp32 inputs (autocast keeps RoPE'd q/k in fp32) run in bf16, as a bf16 Wan checkpoint would."""
    dtype = q.dtype
    q, k, v = (to_half(t) for t in (q, k, v))
    b, lq, c = q.shape
    d = c // heads
    qs, ks, vs = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, c).to(dtype)


def to_half(t: torch.Tensor) -> torch.Tensor:
    """bf16 on CUDA (the dtype real Wan attention runs in); unchanged on CPU."""
    return t.to(torch.bfloat16) if t.is_cuda and t.dtype == torch.float32 else t


def predict(model: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
            override=sdpa_override, transformer_options: dict | None = None) -> torch.Tensor:
    """Velocity (noise - x0) at x = (1 - sigma) x0 + sigma noise; sigma (B,) in [0, 1]."""
    opts = dict(transformer_options or {})
    opts["optimized_attention_override"] = override
    return model(x, sigma * TIMESTEP_SCALE, context, transformer_options=opts)


def save_checkpoint(model: torch.nn.Module, cfg: ModelConfig, path: str | Path, meta: dict | None = None,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the Wan-keyed state dict (no prefix) as safetensors; config and `meta` go to the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {"sparseflow_fidelity_config": cfg.to_json()}
    metadata.update({k: str(v) for k, v in (meta or {}).items()})
    save_file(sd, str(path), metadata=metadata)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelConfig]:
    """Rebuild the model from a checkpoint written by `save_checkpoint` (fp32 weights)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        cfg = ModelConfig.from_json(f.metadata()["sparseflow_fidelity_config"])
    model = build_model(cfg, device, init=False)
    sd = {k: v.float() for k, v in load_file(str(path), device=str(device)).items()}
    missing, unexpected = model.load_state_dict(sd, strict=True), None
    del missing, unexpected
    return model, cfg
