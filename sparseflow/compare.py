"""A/B of a SparseFlow result against the dense one: quality per frame and overall, times, a difference video.

The numbers come from `sparseflow/quality.py` (PSNR and SSIM with the dense video's range as peak, non-finite
counts per frame); this module lays two results side by side, checks they can be compared, and writes the report
text and the plain payload the Compare nodes' plot draws. NaN or inf in either result is counted per frame and
kept: a frame with NaN has a NaN PSNR, and so has the overall figure (`finite_mean` skips only +inf, which marks
identical frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .quality import finite_mean, frame_psnr, frame_ssim, frames_to_video, nonfinite_frames, psnr, relative_error, ssim

__all__ = ["AttentionError", "Comparison", "RunTimes", "SpaceQuality", "as_video", "compare_space",
           "difference_video", "plot_payload", "report_text"]


@dataclass(frozen=True)
class SpaceQuality:
    """Patched vs dense in one space ("latent" or "pixel"); per-frame tensors are (batch, frames)."""

    space: str
    shape: tuple[int, ...]  # (B, C, T, H, W) of each video
    psnr: torch.Tensor
    ssim: torch.Tensor
    nonfinite_patched: torch.Tensor
    nonfinite_dense: torch.Tensor
    psnr_overall: float
    ssim_overall: float
    relative_error: float

    @property
    def nonfinite(self) -> int:
        return int(self.nonfinite_patched.sum() + self.nonfinite_dense.sum())


@dataclass(frozen=True)
class RunTimes:
    """Wall time of each sampling run, in seconds."""

    patched_s: float
    dense_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.patched_s if self.patched_s > 0 else math.inf


@dataclass(frozen=True)
class AttentionError:
    """The largest per-head attention error a routing map carries (measured by calibration, not by the compare)."""

    value: float
    layer: int
    head: int
    source: str


@dataclass(frozen=True)
class Comparison:
    latent: SpaceQuality
    pixel: SpaceQuality | None
    times: RunTimes | None
    attention: AttentionError | None
    run_summary: str | None = None  # the patched run's telemetry line, when SparseFlow captured one


def as_video(x: torch.Tensor, name: str) -> torch.Tensor:
    """A LATENT's samples (B, C, T, H, W) or (B, C, H, W), or IMAGE frames (T, H, W, C) / (B, T, H, W, C) from a
    VAE decode, as (B, C, T, H, W). `name` is "latent" or "images"."""
    if name == "images":
        if x.dim() == 4:
            return frames_to_video(x)
        if x.dim() == 5:
            return x.permute(0, 4, 1, 2, 3)
        raise ValueError(f"SparseFlow Compare: images are (frames, height, width, channels); got shape "
                         f"{tuple(x.shape)}")
    if x.dim() == 4:
        return x.unsqueeze(2)
    if x.dim() == 5:
        return x
    raise ValueError(f"SparseFlow Compare: a latent is (batch, channels, frames, height, width) or (batch, channels, "
                     f"height, width); got shape {tuple(x.shape)}")


def _same_shape(what: str, patched: torch.Tensor, dense: torch.Tensor) -> None:
    if patched.shape != dense.shape:
        raise ValueError(f"SparseFlow Compare: the two {what} differ in shape: patched {tuple(patched.shape)} vs "
                         f"dense {tuple(dense.shape)}; both must come from the same latent (size, length, batch)")


def compare_space(space: str, patched: torch.Tensor, dense: torch.Tensor) -> SpaceQuality:
    """PSNR / SSIM per frame and overall of `patched` against `dense` (both (B, C, T, H, W)), on CPU in float32."""
    _same_shape("latents" if space == "latent" else "image batches", patched, dense)
    a, b = patched.detach().float().cpu(), dense.detach().float().cpu()
    return SpaceQuality(space, tuple(b.shape), frame_psnr(a, b), frame_ssim(a, b), nonfinite_frames(a),
                        nonfinite_frames(b), finite_mean(psnr(a, b)), finite_mean(ssim(a, b)), relative_error(a, b))


def difference_video(patched: torch.Tensor, dense: torch.Tensor, scale: int = 1) -> tuple[torch.Tensor, float]:
    """|patched - dense| averaged over channels as gray IMAGE frames (B*T, H*scale, W*scale, 3) in [0, 1], white =
    the largest finite difference (returned); pixels where either result is NaN/inf are red."""
    _same_shape("results", patched, dense)
    a, b = patched.detach().float().cpu(), dense.detach().float().cpu()
    bad = ~(torch.isfinite(a) & torch.isfinite(b)).all(dim=1)  # (B, T, H, W)
    diff = (a - b).abs().mean(dim=1).masked_fill(bad, 0.0)
    peak = float(diff.max()) if diff.numel() else 0.0
    gray = diff / peak if peak > 0 else diff
    rgb = gray.unsqueeze(-1).repeat(1, 1, 1, 1, 3)
    rgb[bad] = torch.tensor([1.0, 0.0, 0.0])
    rgb = rgb.flatten(0, 1)
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return rgb.clamp(0, 1).contiguous(), peak


def _num(v: float) -> float | str:
    """A float for JSON: inf and NaN as strings ("inf", "nan"), which the browser's JSON.parse accepts."""
    return v if math.isfinite(v) else ("inf" if v > 0 else "nan")


def _db(v: float) -> str:
    return "identical" if v == math.inf else f"{v:.2f} dB"


def _space_lines(q: SpaceQuality) -> list[str]:
    b, _, t, h, w = q.shape
    lines = [f"{q.space} space ({b} x {t} frames of {h}x{w}): PSNR {_db(q.psnr_overall)}, SSIM "
             f"{q.ssim_overall:.4f}, relative error {q.relative_error:.4g}",
             f"  non-finite values: patched {int(q.nonfinite_patched.sum())}, dense {int(q.nonfinite_dense.sum())}"]
    for i in range(b):
        for f in range(t):
            where = f"video {i} frame {f}" if b > 1 else f"frame {f}"
            bad = int(q.nonfinite_patched[i, f]), int(q.nonfinite_dense[i, f])
            note = f"  NON-FINITE patched {bad[0]} dense {bad[1]}" if any(bad) else ""
            lines.append(f"  {where}: PSNR {_db(float(q.psnr[i, f]))}, SSIM {float(q.ssim[i, f]):.4f}{note}")
    return lines


def report_text(c: Comparison) -> str:
    """The report a user reads: times, attention error, quality per space and per frame."""
    lines = ["SparseFlow Compare: patched vs dense (dense is the reference; PSNR peak = the dense result's range)"]
    if c.times is not None:
        lines.append(f"wall time: patched {c.times.patched_s:.3f} s, dense {c.times.dense_s:.3f} s, speed-up "
                     f"{c.times.speedup:.2f}x (each includes any model load or kernel compile it triggered)")
    if c.run_summary:
        lines.append(f"patched run: {c.run_summary}")
    if c.attention is None:
        lines.append("max per-head attention error: not captured (the routing map carries no measured errors; "
                     "SparseFlow Calibrate's maps do)")
    else:
        a = c.attention
        lines.append(f"max per-head attention error: {a.value:.4g} at layer {a.layer} head {a.head} ({a.source})")
    lines += _space_lines(c.latent)
    if c.pixel is not None:
        lines += _space_lines(c.pixel)
    else:
        lines.append("pixel space: no VAE / images connected")
    spaces = [q for q in (c.latent, c.pixel) if q is not None]
    if any(q.nonfinite for q in spaces):
        lines.append("WARNING: NaN/inf in a result; the PSNR/SSIM of those frames and the overall figures are NaN")
    if any(int(q.nonfinite_dense.sum()) for q in spaces):
        lines.append("  (NaN/inf in the dense result leave the dense result's range, the PSNR/SSIM peak, undefined: "
                     "every frame of that video is NaN)")
    return "\n".join(lines)


def _space_payload(q: SpaceQuality) -> dict:
    return {"psnr": [[_num(float(v)) for v in row] for row in q.psnr.tolist()],
            "ssim": [[_num(float(v)) for v in row] for row in q.ssim.tolist()],
            "nonfinite": (q.nonfinite_patched + q.nonfinite_dense).tolist(),
            "psnr_overall": _num(q.psnr_overall), "ssim_overall": _num(q.ssim_overall)}


def plot_payload(c: Comparison) -> dict:
    """Plain JSON for the node's plot (no inf/NaN floats: those are the strings "inf" / "nan")."""
    out = {"latent": _space_payload(c.latent), "pixel": None if c.pixel is None else _space_payload(c.pixel),
           "speedup": None if c.times is None else _num(c.times.speedup)}
    if c.times is not None:
        out["times"] = [c.times.patched_s, c.times.dense_s]
    return out
