"""SparseFlow Compare and Compare Results end to end on a tiny Wan in real ComfyUI (CPU): the report's numbers
against an independent re-sampling and hand-written PSNR / SSIM, progress, the dense run, memory, bad input."""

from __future__ import annotations

import gc
import json
import math
import re
import weakref

import pytest
import tiny_wan as tw
import torch
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow.routing import routing_preset
from test_nodes_common import BIG, pack, tiny_models  # noqa: F401

pytestmark = requires_comfy

STEPS, CFG, SEED = 2, 3.0, 5


def _inputs(comfy):  # noqa: F811
    latent = tw.empty_latent(tw.WAN21_T2V, *BIG)
    positive, negative = tw.make_conditioning(comfy, tw.WAN21_T2V, latent, seed=2)
    return positive, negative, {"samples": latent}


def _patched(pack, model):  # noqa: F811
    return pack.patch.apply_sparseflow(model, routing=routing_preset("alternating", 2, 2), backend="reference",
                                       block=64)


def _run(pack, model, positive, negative, latent, vae=None):  # noqa: F811
    return pack.compare.SparseFlowCompare.execute(model=model, positive=positive, negative=negative,
                                                  latent_image=latent, seed=SEED, steps=STEPS, cfg=CFG,
                                                  sampler_name="euler", scheduler="simple", vae=vae)


def _hand_psnr(x: torch.Tensor, ref: torch.Tensor) -> list[list[float]]:
    """Per (video, frame): 10 log10(peak^2 / mse), peak = the whole dense video's max - min."""
    out = []
    for b in range(ref.shape[0]):
        peak = float(ref[b].max() - ref[b].min())
        row = []
        for t in range(ref.shape[2]):
            mse = float(((x[b, :, t].double() - ref[b, :, t].double()) ** 2).mean())
            row.append(math.inf if mse == 0 else 10 * math.log10(peak * peak / mse))
        out.append(row)
    return out


def _hand_ssim(x: torch.Tensor, ref: torch.Tensor, size: int = 7, sigma: float = 1.5) -> list[list[float]]:
    """Wang et al. 2004 with a Gaussian window, written with explicit window sums over unfolded patches."""
    c_, t_, h, w = ref.shape[1:]
    size = min(size, h, w)
    a = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-a * a / (2 * sigma * sigma))
    win = (g[:, None] * g[None, :]).flatten()
    win = win / win.sum()
    out = []
    for b in range(ref.shape[0]):
        peak = float(ref[b].max() - ref[b].min())
        c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
        row = []
        for t in range(t_):
            vals = []
            for c in range(c_):
                px = torch.nn.functional.unfold(x[b, c, t].double()[None, None], size)[0]  # (size*size, windows)
                pr = torch.nn.functional.unfold(ref[b, c, t].double()[None, None], size)[0]
                mx, mr = win @ px, win @ pr
                vx = win @ (px * px) - mx * mx
                vr = win @ (pr * pr) - mr * mr
                cov = win @ (px * pr) - mx * mr
                s = (2 * mx * mr + c1) * (2 * cov + c2) / ((mx * mx + mr * mr + c1) * (vx + vr + c2))
                vals.append(s)
            row.append(float(torch.cat(vals).mean()))
        out.append(row)
    return out


class StandInVae:
    """A deterministic decoder with the layout of ComfyUI's Wan VAE.decode: (B, C, T, H, W) -> (B, T', H*2, W*2, 3)
    in [0, 1], T' = 4 (T - 1) + 1. (A random-weight Wan VAE decodes to NaN and takes ~16 s a call on this CPU.)"""

    def __init__(self) -> None:
        self.calls = 0

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = torch.sigmoid(samples[:, :3].float())
        x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        return x.permute(0, 2, 3, 4, 1).contiguous()


def test_compare_reports_the_quality_of_an_independent_resampling_and_its_dense_run_is_plain_dense(
        comfy, pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    positive, negative, latent = _inputs(comfy)
    patched_model = _patched(pack, model)
    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append(
        (value, total)))
    try:
        out = _run(pack, patched_model, positive, negative, latent)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    patched, dense, diff, report = out.result
    assert progress[-1] == (2 * STEPS, 2 * STEPS) and [v for v, _ in progress] == list(range(1, 2 * STEPS + 1))

    # independent re-sampling: the patched model as given, the unpatched model (never patched) for dense
    want_patched = tw.sample_tiny(comfy, patched_model, latent["samples"], positive, negative, steps=STEPS, cfg=CFG,
                                  seed=SEED)
    want_dense = tw.sample_tiny(comfy, model, latent["samples"], positive, negative, steps=STEPS, cfg=CFG, seed=SEED)
    assert torch.equal(dense["samples"], want_dense)
    assert torch.equal(patched["samples"], want_patched)
    assert not torch.equal(want_patched, want_dense)  # the routing changes the result, so the numbers mean something

    payload = out.ui["sparseflow_compare"][0]
    json.loads(json.dumps(payload, allow_nan=False))
    psnr, ssim = _hand_psnr(want_patched, want_dense), _hand_ssim(want_patched, want_dense)
    assert payload["latent"]["psnr"] == [pytest.approx(r, rel=1e-4) for r in psnr]
    assert payload["latent"]["ssim"] == [pytest.approx(r, abs=1e-4) for r in ssim]
    assert payload["latent"]["nonfinite"] == [[0] * BIG[0]]
    for t in range(BIG[0]):
        assert f"frame {t}: PSNR {psnr[0][t]:.2f} dB, SSIM {ssim[0][t]:.4f}" in report
    mse = float(((want_patched.double() - want_dense.double()) ** 2).mean())
    peak = float(want_dense.max() - want_dense.min())
    assert payload["latent"]["psnr_overall"] == pytest.approx(10 * math.log10(peak * peak / mse), rel=1e-4)
    times = re.search(r"wall time: patched ([\d.]+) s, dense ([\d.]+) s, speed-up ([\d.]+)x", report)
    # the payload carries the unrounded times; the report prints them and their ratio rounded
    patched_s, dense_s = payload["times"]
    assert payload["speedup"] == pytest.approx(dense_s / patched_s, rel=1e-9)
    assert times and (times[1], times[2], times[3]) == (f"{patched_s:.3f}", f"{dense_s:.3f}",
                                                       f"{dense_s / patched_s:.2f}")
    assert "max per-head attention error: not captured" in report  # a preset map carries no measured errors
    assert "patched run: SparseFlow: 2 steps" in report
    assert "pixel space: no VAE" in report and payload["pixel"] is None
    assert diff.shape == (BIG[0], BIG[1] * 8, BIG[2] * 8, 3) and float(diff.max()) == 1.0 and float(diff.min()) >= 0


def test_pixel_space_compares_both_decodes_and_the_results_node_agrees(comfy, pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    positive, negative, latent = _inputs(comfy)
    vae = StandInVae()
    out = _run(pack, _patched(pack, model), positive, negative, latent, vae=vae)
    patched, dense, diff, report = out.result
    assert vae.calls == 2
    frames = 4 * (BIG[0] - 1) + 1
    img_a, img_b = StandInVae().decode(patched["samples"]), StandInVae().decode(dense["samples"])
    va, vb = img_a.permute(0, 4, 1, 2, 3), img_b.permute(0, 4, 1, 2, 3)
    payload = out.ui["sparseflow_compare"][0]
    assert payload["pixel"]["psnr"] == [pytest.approx(r, rel=1e-4) for r in _hand_psnr(va, vb)]
    assert payload["pixel"]["ssim"] == [pytest.approx(r, abs=1e-4) for r in _hand_ssim(va, vb)]
    assert f"pixel space (1 x {frames} frames of {BIG[1] * 2}x{BIG[2] * 2})" in report
    assert diff.shape == (frames, BIG[1] * 2, BIG[2] * 2, 3)

    # the same latents and decoded frames (as VAEDecode outputs them: (frames, H, W, C)) through Compare Results
    res = pack.compare.SparseFlowCompareResults.execute(patched=patched, dense=dense, patched_images=img_a[0],
                                                        dense_images=img_b[0])
    diff2, report2 = res.result
    p2 = res.ui["sparseflow_compare"][0]
    assert p2["latent"] == payload["latent"] and p2["pixel"] == payload["pixel"]
    assert torch.equal(diff2, diff)
    tail = report.index("latent space")  # all but the times / run / attention lines
    assert report2[report2.index("latent space"):] == report[tail:] and "wall time" not in report2


def test_nan_in_a_result_is_counted_per_frame_and_never_averaged_away(pack):  # noqa: F811
    dense = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    patched = dense + 0.01 * torch.randn(dense.shape, generator=torch.Generator().manual_seed(1))
    patched[0, 3, 2, 1, 1] = float("nan")
    patched[0, 5, 2, 4, 4] = float("inf")
    res = pack.compare.SparseFlowCompareResults.execute(patched={"samples": patched}, dense={"samples": dense})
    diff, report = res.result
    lat = res.ui["sparseflow_compare"][0]["latent"]
    assert lat["nonfinite"] == [[0, 0, 2, 0]]
    assert lat["psnr"][0][2] == "nan" and all(isinstance(lat["psnr"][0][t], float) for t in (0, 1, 3))
    assert lat["ssim"][0][2] == "nan"
    assert lat["psnr_overall"] == "nan" and lat["ssim_overall"] == "nan"
    assert "non-finite values: patched 2, dense 0" in report
    assert "frame 2: PSNR nan dB, SSIM nan  NON-FINITE patched 2 dense 0" in report
    assert "WARNING: NaN/inf" in report
    assert diff[2, 1 * 8, 1 * 8].tolist() == [1.0, 0.0, 0.0]  # frame 2, latent pixel (1, 1) shown 8x: red
    assert diff[1].max() <= 1.0 and not torch.isnan(diff).any()

    # NaN in the reference leaves its range (the peak) undefined: every frame is NaN, and the report says why
    bad_dense = dense.clone()
    bad_dense[0, 0, 0, 0, 0] = float("nan")
    res = pack.compare.SparseFlowCompareResults.execute(patched={"samples": dense}, dense={"samples": bad_dense})
    lat = res.ui["sparseflow_compare"][0]["latent"]
    assert lat["nonfinite"] == [[1, 0, 0, 0]] and lat["psnr"] == [["nan"] * 4]
    assert "non-finite values: patched 0, dense 1" in res.result[1]
    assert "the dense result's range" in res.result[1]


def test_mismatched_shapes_name_both_shapes(pack):  # noqa: F811
    a, b = torch.zeros(1, 16, 4, 8, 8), torch.zeros(1, 16, 3, 8, 8)
    with pytest.raises(ValueError, match=r"patched \(1, 16, 4, 8, 8\) vs dense \(1, 16, 3, 8, 8\)"):
        pack.compare.SparseFlowCompareResults.execute(patched={"samples": a}, dense={"samples": b})
    img = torch.zeros(13, 16, 16, 3)
    with pytest.raises(ValueError, match=r"image batches differ in shape: patched \(1, 3, 13, 16, 16\) vs dense "
                                         r"\(1, 3, 9, 16, 16\)"):
        pack.compare.SparseFlowCompareResults.execute(patched={"samples": a}, dense={"samples": a},
                                                      patched_images=img, dense_images=img[:9])
    with pytest.raises(ValueError, match="connect both patched_images and dense_images"):
        pack.compare.SparseFlowCompareResults.execute(patched={"samples": a}, dense={"samples": a},
                                                      patched_images=img)


def test_compare_refuses_a_model_without_the_patch(comfy, pack, tiny_models):  # noqa: F811
    positive, negative, latent = _inputs(comfy)
    with pytest.raises(ValueError, match="connect the MODEL output of SparseFlow Patch"):
        _run(pack, tiny_models[tw.WAN21_T2V], positive, negative, latent)


def test_the_dense_run_holds_none_of_the_patched_runs_tensors(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """While the dense run samples, the patched run's state and the sampler's own output tensor are gone; only the
    copy on the intermediate device remains."""
    import comfy.patcher_extension as pe
    import comfy.sample

    positive, negative, latent = _inputs(comfy)
    patched_model = _patched(pack, tiny_models[tw.WAN21_T2V]).clone()
    runs, outputs, alive_in_dense = [], [], []

    def probe(executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None,
              **kwargs):
        run = (transformer_options or {}).get(pack.run.RUN_KEY)
        if run is not None:
            if not runs:
                runs.append(weakref.ref(run))
                runs.append(weakref.ref(run.plans))
        else:
            gc.collect()
            alive_in_dense.append([r() is not None for r in runs + outputs])
        return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)

    patched_model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)
    real_sample = comfy.sample.sample

    def sample(*args, **kwargs):
        out = real_sample(*args, **kwargs)
        outputs.append(weakref.ref(out))
        return out

    monkeypatch.setattr(comfy.sample, "sample", sample)
    out = _run(pack, patched_model, positive, negative, latent)
    assert len(runs) == 2 and alive_in_dense and len(alive_in_dense[0]) == 3  # the probe saw both runs
    assert not any(any(a) for a in alive_in_dense), alive_in_dense
    kept = out.result[0]["samples"]
    assert kept.device == comfy.model_management.intermediate_device()


def test_compare_stops_when_interrupted_before_the_dense_run(comfy, pack, tiny_models):  # noqa: F811
    import comfy.model_management as mm

    positive, negative, latent = _inputs(comfy)
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 1:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(pack, _patched(pack, tiny_models[tw.WAN21_T2V]), positive, negative, latent)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert seen == [1]


def test_removing_the_patch_keeps_another_nodes_override_and_block_replace(comfy, pack, tiny_models):  # noqa: F811
    def other(func, q, k, v, heads, **kwargs):
        return func(q, k, v, heads=heads, **kwargs)

    def replace(args, extra):
        return extra["original_block"](args)

    base = tiny_models[tw.WAN21_T2V].clone()
    base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = other
    base.set_model_patch_replace(replace, "dit", "double_block", 1)
    stripped = pack.unpatch.remove_sparseflow(_patched(pack, base))
    to = stripped.model_options["transformer_options"]
    assert "sparseflow" not in to and to["optimized_attention_override"] is other
    assert to["patches_replace"]["dit"] == {("double_block", 1): replace}
    for kind in stripped.wrappers.values():
        assert "sparseflow" not in kind
    assert not any(getattr(v, "_sparseflow", False) for v in stripped.object_patches.values())
