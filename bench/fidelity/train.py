"""Train the fidelity DiT with rectified-flow matching on procedural latent videos, seeded, then save it.

x_t = (1 - t) x0 + t noise, target noise - x0 (Wan / ComfyUI CONST flow), t ~ logit-normal(0, 1).
AdamW, linear warm-up then cosine decay, bf16 autocast on CUDA, fp32 on CPU.

    python -m bench.fidelity.train --out weights.safetensors [--steps N | --time-budget 200]

With --time-budget and no --steps, the step count is fixed after 10 warm-up and 20 timed steps so the run fits
the budget; the chosen count is printed and saved in the checkpoint metadata (pass it as --steps to reproduce exactly).
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import torch
import torch.nn.functional as F

from .data import make_batch
from .model import ModelConfig, build_model, class_context, predict, save_checkpoint

__all__ = ["TRAIN_SEED_OFFSET", "flow_loss", "train"]

log = logging.getLogger("sparseflow.bench.fidelity.train")

TRAIN_SEED_OFFSET = 0  # data seeds step + offset; evaluation uses seeds >= 10**9 (held out)
_WARM_STEPS = 10
_PROBE_STEPS = 20


def flow_loss(model: torch.nn.Module, cfg: ModelConfig, x0: torch.Tensor, classes: torch.Tensor,
              gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss of one batch; noise and t drawn from `gen` (CPU generator)."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = torch.sigmoid(torch.randn(b, generator=gen)).to(x0.device)
    tb = t[:, None, None, None, None]
    xt = (1 - tb) * x0 + tb * noise
    ctx = class_context(cfg, classes)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x0.is_cuda):
        pred = predict(model, xt, t, ctx)
    return F.mse_loss(pred.float(), noise - x0)


def train(cfg: ModelConfig, *, steps: int | None = None, batch: int = 16, lr: float = 3e-4,
          device: str | torch.device = "cpu", time_budget: float | None = None, warmup: int = 100,
          log_every: int = 100) -> tuple[torch.nn.Module, dict]:
    """Train from scratch; returns (model, history with losses, steps and seconds)."""
    torch.manual_seed(cfg.seed)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(cfg, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    planned = steps if steps is not None else 10**9
    history: dict = {"loss": [], "step": [], "batch": batch, "lr": lr}
    start = time.perf_counter()
    ema = None
    step = 0
    while step < planned:
        if steps is None and time_budget is not None and step in (_WARM_STEPS, _WARM_STEPS + _PROBE_STEPS):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if step == _WARM_STEPS:
                probe_start = time.perf_counter()
                planned = 10**9
            else:  # steady-state step time (the first steps include CUDA/cuDNN warm-up)
                per_step = (time.perf_counter() - probe_start) / _PROBE_STEPS
                left = time_budget - (time.perf_counter() - start)
                planned = max(step + 1, step + int(left / per_step * 0.97))
                log.info("%.1f ms/step (steps %d-%d): training %d steps", per_step * 1e3, _WARM_STEPS, step, planned)
        frac = step / max(1, planned)
        scale = min(1.0, (step + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * min(1.0, frac))) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr * scale
        x0, classes = make_batch(cfg, batch, seed=TRAIN_SEED_OFFSET + step, device=device)
        loss = flow_loss(model, cfg, x0, classes, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if step % log_every == 0 or step == planned - 1:
            history["loss"].append(ema)
            history["step"].append(step)
            log.info("step %d/%d loss %.4f (ema %.4f) %.0f s", step, planned, value, ema,
                     time.perf_counter() - start)
        step += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    history.update(steps=step, seconds=time.perf_counter() - start, final_loss_ema=ema)
    model.eval()
    return model, history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=200.0, help="seconds, used when --steps is not given")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CPU smoke size (dim 256, 2 layers, 5x16x16 latents)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = ModelConfig(seed=a.seed)
    if a.tiny:
        cfg = ModelConfig(dim=256, ffn_dim=512, num_layers=2, frames=5, height=16, width=16, seed=a.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, hist = train(cfg, steps=a.steps, batch=a.batch, lr=a.lr, device=device, time_budget=a.time_budget)
    save_checkpoint(model, cfg, a.out, {"steps": hist["steps"], "batch": a.batch, "lr": a.lr,
                                        "train_seconds": f"{hist['seconds']:.1f}",
                                        "final_loss_ema": f"{hist['final_loss_ema']:.5f}"})
    print(f"trained {hist['steps']} steps in {hist['seconds']:.1f} s, loss ema {hist['final_loss_ema']:.4f} -> {a.out}")


if __name__ == "__main__":
    main()
