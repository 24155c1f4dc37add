"""The SparseFlow Compare nodes: the same sampling with the patch and densely, side by side (issue 19's A/B).

SparseFlow Compare takes SparseFlow Patch's MODEL and samples twice with ComfyUI's own sampler
(`comfy.sample.sample`, as `nodes.common_ksampler`): once as patched, once on a clone with SparseFlow's own
patches removed by their keys (`remove_sparseflow`), so both runs share weights, every other node's patch, the
noise and the conditioning. The patched result goes to the intermediate device as a copy before the dense run
starts, so the dense run holds none of the patched run's tensors. SparseFlow Compare Results compares two results
already in the workflow. The math and the report are `sparseflow/compare.py`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..sparseflow.compare import (
    AttentionError,
    Comparison,
    RunTimes,
    as_video,
    compare_space,
    difference_video,
    plot_payload,
    report_text,
)
from .config import SPARSEFLOW_KEY, PatchConfig
from .run import last_run
from .types import schema
from .unpatch import remove_sparseflow

__all__ = ["PairResult", "SparseFlowCompare", "SparseFlowCompareResults", "compare_results", "sample_pair"]

log = logging.getLogger("sparseflow.nodes")

LATENT_SCALE = 8  # a latent pixel shown as 8x8 in the difference video (Wan 2.1's VAE upscale)


@dataclass(frozen=True)
class PairResult:
    """The two sampled latents (on the intermediate device), their wall times and the patched run's summary."""

    patched: torch.Tensor
    dense: torch.Tensor
    times: RunTimes
    run_summary: str | None


def _config(model) -> PatchConfig:
    config = getattr(model, "model_options", {}).get("transformer_options", {}).get(SPARSEFLOW_KEY)
    if not isinstance(config, PatchConfig):
        raise ValueError("SparseFlow Compare: the model input carries no SparseFlow patch; connect the MODEL output "
                         "of SparseFlow Patch (the dense run is that model with the patch taken out)")
    return config


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def sample_pair(model, positive, negative, latent: dict, *, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, node_id: str | None = None) -> PairResult:
    """Sample `latent` with the patched `model`, then densely; one progress bar of 2 * steps; interruptible."""
    import comfy.model_management as mm
    import comfy.sample
    import comfy.utils

    _config(model)
    dense_model = remove_sparseflow(model)
    pbar = comfy.utils.ProgressBar(2 * steps, node_id=node_id)
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))

    def run(m, offset: int) -> tuple[torch.Tensor, float]:
        def callback(step, x0, x, total_steps):
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(offset + step + 1, 2 * steps)

        _sync()
        start = time.perf_counter()
        out = comfy.sample.sample(m, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                                  noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True,
                                  seed=seed)
        _sync()
        seconds = time.perf_counter() - start
        # a copy even where the sampler already returned it on the intermediate device: nothing the sampler made
        # stays referenced while the next run samples
        return out.to(mm.intermediate_device(), copy=True), seconds

    patched, patched_s = run(model, 0)
    report = last_run(model)
    mm.throw_exception_if_processing_interrupted()
    dense, dense_s = run(dense_model, steps)
    return PairResult(patched, dense, RunTimes(patched_s, dense_s), None if report is None else report.summary)


def attention_error(model) -> AttentionError | None:
    """The routing map's largest per-head error, where calibration measured one (None: not captured)."""
    rmap = _config(model).routing
    if rmap.error is None or rmap.error.numel() == 0:
        return None
    flat = int(rmap.error.argmax())
    layer, head = divmod(flat, rmap.heads)
    return AttentionError(float(rmap.error.flatten()[flat]), layer, head,
                          f"measured by SparseFlow Calibrate for this routing map ({rmap.made_by}), not in this run; "
                          "heads changed by routing_overrides keep their calibrated value")


def _decode(vae, samples: torch.Tensor) -> torch.Tensor:
    images = vae.decode(samples)
    return images.reshape(1, *images.shape) if images.dim() == 4 else images  # (B, T, H, W, C)


def compare_results(patched: torch.Tensor, dense: torch.Tensor, *, patched_images: torch.Tensor | None = None,
                    dense_images: torch.Tensor | None = None, vae=None, times: RunTimes | None = None,
                    attention: AttentionError | None = None,
                    run_summary: str | None = None) -> tuple[Comparison, torch.Tensor, str]:
    """(comparison, difference video IMAGE, report). Pixel space from the given images, else from `vae`."""
    a, b = as_video(patched, "latent"), as_video(dense, "latent")
    latent_q = compare_space("latent", a, b)
    if (patched_images is None) != (dense_images is None):
        raise ValueError("SparseFlow Compare Results: connect both patched_images and dense_images, or neither")
    if patched_images is None and vae is not None:
        patched_images, dense_images = _decode(vae, patched), _decode(vae, dense)
    pixel_q = None
    if patched_images is not None:
        pa, pb = as_video(patched_images, "images"), as_video(dense_images, "images")
        pixel_q = compare_space("pixel", pa, pb)
        diff, peak = difference_video(pa, pb)
        scale_note = f"difference video: pixels, white = |patched - dense| of {peak:.4g}, red = NaN/inf"
    else:
        diff, peak = difference_video(a, b, LATENT_SCALE)
        scale_note = (f"difference video: latent channels (mean |patched - dense|) shown {LATENT_SCALE}x, white = "
                      f"{peak:.4g}, red = NaN/inf")
    comparison = Comparison(latent_q, pixel_q, times, attention, run_summary)
    report = report_text(comparison) + "\n" + scale_note
    return comparison, diff, report


def _ui(comparison: Comparison, report: str) -> dict:
    return {"sparseflow_compare": [plot_payload(comparison)], "text": [report]}


class SparseFlowCompare(io.ComfyNode):
    """Patched MODEL + sampler inputs -> both results, a difference video and the report."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return schema(
            node_id="SparseFlowCompare",
            display_name="SparseFlow Compare",
            description=("Samples your latent twice with the same seed, sampler and prompt: once with SparseFlow, "
                         "once with dense attention (the same model with the patch taken out). Reports PSNR and "
                         "SSIM per frame (latent, and pixels when a VAE is connected), wall times and the speed-up, "
                         "and outputs both results and a difference video. Costs one dense run more."),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of SparseFlow Patch."),
                io.Conditioning.Input("positive", tooltip="Your positive prompt (as for the KSampler)."),
                io.Conditioning.Input("negative", tooltip="Your negative prompt."),
                io.Latent.Input("latent_image", tooltip="The latent to sample (as for the KSampler)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, step=1,
                             control_after_generate=True, tooltip="Noise seed (both runs use the same noise)."),
                io.Int.Input("steps", default=20, min=1, max=10000, step=1,
                             tooltip="Sampling steps of each run (the progress bar counts both: 2 x steps)."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale, as in your workflow."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="Sampler, as in your workflow."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                               tooltip="Scheduler, as in your workflow."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Optional: decode both results to compare pixels too (and show the "
                                     "difference video in pixels)."),
            ],
            outputs=[io.Latent.Output(display_name="patched", tooltip="The SparseFlow result."),
                     io.Latent.Output(display_name="dense", tooltip="The dense-attention result."),
                     io.Image.Output(display_name="difference", tooltip="|patched - dense| per frame, gray "
                                     "(white = the largest difference, said in the report), red = NaN/inf."),
                     io.String.Output(display_name="report", tooltip="Times, speed-up, PSNR/SSIM per frame.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, *, model: io.Model.Type, positive, negative, latent_image: dict, seed: int, steps: int,
                cfg: float, sampler_name: str, scheduler: str, vae=None) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        pair = sample_pair(model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
                           sampler_name=sampler_name, scheduler=scheduler,
                           node_id=None if node_id is None else str(node_id))
        comparison, diff, report = compare_results(pair.patched, pair.dense, vae=vae, times=pair.times,
                                                   attention=attention_error(model), run_summary=pair.run_summary)
        log.info("SparseFlow Compare: %s", report.splitlines()[1] if "\n" in report else report)
        outs = [{**latent_image, "samples": s} for s in (pair.patched, pair.dense)]
        return io.NodeOutput(outs[0], outs[1], diff, report, ui=_ui(comparison, report))


class SparseFlowCompareResults(io.ComfyNode):
    """Two results already in the workflow -> the same report and difference video, without sampling."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="SparseFlowCompareResults",
            display_name="SparseFlow Compare Results",
            description=("Compares two results you already have (e.g. two KSamplers, one on SparseFlow Patch's "
                         "model, one on the plain model): PSNR and SSIM per frame in latent space, and in pixels "
                         "when both decoded image batches are connected, plus a difference video."),
            inputs=[
                io.Latent.Input("patched", tooltip="The SparseFlow result."),
                io.Latent.Input("dense", tooltip="The dense result (the reference)."),
                io.Image.Input("patched_images", optional=True, tooltip="Optional: the patched result decoded."),
                io.Image.Input("dense_images", optional=True, tooltip="Optional: the dense result decoded."),
            ],
            outputs=[io.Image.Output(display_name="difference", tooltip="|patched - dense| per frame, gray "
                                     "(white = the largest difference, said in the report), red = NaN/inf."),
                     io.String.Output(display_name="report", tooltip="PSNR/SSIM per frame and overall.")],
        )

    @classmethod
    def execute(cls, *, patched: dict, dense: dict, patched_images: torch.Tensor | None = None,
                dense_images: torch.Tensor | None = None) -> io.NodeOutput:
        comparison, diff, report = compare_results(patched["samples"], dense["samples"],
                                                   patched_images=patched_images, dense_images=dense_images)
        return io.NodeOutput(diff, report, ui=_ui(comparison, report))
