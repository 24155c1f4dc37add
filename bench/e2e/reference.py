"""The default-attention run of bench/e2e_comfy.py, kept in safetensors so a later run can compare against it.

A full-size Wan 14B default run costs ~150 s of GPU time (6 steps at ~25 s); the device allows 600 s per command.
`--save-reference` writes the default run's final latent (float32, sharded so each file stays under the device's
16 MiB per returned file) and its measured s/step and peak memory; `--reference` loads them in a later run instead
of sampling `default` again, after checking that the run it came from sampled the same thing (model, weight dtype,
seed, steps, warm-up, CFG, sampler, scheduler, latent shape, GPU kind, ComfyUI tree). The rows of such a run say
which reference they used, and its table says that speed-up and error are against another run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# what must match between the reference's run and the run comparing against it (gpu: speed-ups need one GPU kind)
MATCH_KEYS = ("model", "dtype", "seed", "steps", "warmup_steps", "cfg", "sampler", "scheduler", "latent_shape",
              "gpu", "comfyui_tree")
_SAVED_BEFORE = {"comfyui_tree": "0.3.64"}  # what a reference saved before a key existed ran with
SHARD_BYTES = 15 * 2**20


def shard_paths(stem: Path, n: int) -> list[Path]:
    return [stem.with_name(f"{stem.name}-{i + 1:05d}-of-{n:05d}.safetensors") for i in range(n)]


def save_reference(stem: Path, latent: torch.Tensor, meta: dict) -> list[Path]:
    """Write `latent` (as float32) and `meta` (JSON-able) to `<stem>-0000i-of-0000n.safetensors`."""
    flat = latent.detach().float().cpu().contiguous().reshape(-1)
    per = SHARD_BYTES // 4
    n = max(1, math.ceil(flat.numel() / per))
    meta = dict(meta, latent_shape=list(latent.shape))
    paths = shard_paths(stem, n)
    for i, path in enumerate(paths):
        save_file({"latent": flat[i * per:(i + 1) * per].clone()}, str(path),
                  metadata={"sparseflow_e2e_reference": json.dumps(meta), "shard": f"{i + 1}/{n}"})
    return paths


def _find(reference: Path) -> list[Path]:
    """`reference`: the stem given to save_reference or any one of its shard files."""
    name = reference.name
    if name.endswith(".safetensors") and "-of-" in name:
        name = name[: name.rindex("-", 0, name.index("-of-"))]
    found = sorted(reference.parent.glob(f"{name}-*-of-*.safetensors"))
    if not found:
        raise FileNotFoundError(f"--reference {reference}: no {name}-NNNNN-of-NNNNN.safetensors in {reference.parent}")
    n = int(found[0].name.rsplit("-of-", 1)[1].split(".")[0])
    expected = shard_paths(reference.parent / name, n)
    missing = [p.name for p in expected if p not in found]
    if missing:
        raise FileNotFoundError(f"--reference {reference}: shards missing: {', '.join(missing)}")
    return expected


def load_reference(reference: Path) -> tuple[torch.Tensor, dict]:
    """The latent and metadata written by save_reference (every shard carries the metadata; the first one's is used)."""
    parts, meta = [], None
    for path in _find(reference):
        with safe_open(str(path), framework="pt") as f:
            meta = meta or json.loads(f.metadata()["sparseflow_e2e_reference"])
            parts.append(f.get_tensor("latent"))
    return torch.cat(parts).reshape(meta["latent_shape"]), meta


def mismatches(meta: dict, run: dict) -> list[str]:
    """The MATCH_KEYS on which the reference's run and this run differ, as 'key: reference X, this run Y'."""
    ref = {k: meta.get(k, _SAVED_BEFORE.get(k)) for k in MATCH_KEYS}
    return [f"{k}: reference {ref[k]!r}, this run {run.get(k)!r}" for k in MATCH_KEYS if ref[k] != run.get(k)]
