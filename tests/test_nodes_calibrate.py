"""SparseFlow Calibrate end to end on a tiny Wan in real ComfyUI (CPU): dense sampling, per-head errors, a map."""

from __future__ import annotations

import json

import pytest
import tiny_wan as tw
import torch
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow.calibrate import DEFAULT_CANDIDATES, head_errors
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE
from test_nodes_common import BIG, pack, tiny_models  # noqa: F401

pytestmark = requires_comfy


def _inputs(comfy, variant=tw.WAN21_T2V):  # noqa: F811
    latent = tw.empty_latent(variant, *BIG)
    positive, negative = tw.make_conditioning(comfy, variant, latent, seed=2)
    return positive, negative, {"samples": latent}


def test_calibrate_node_measures_every_head_and_keeps_routes_within_the_budget(comfy, pack, tiny_models):  # noqa: F811
    positive, negative, latent = _inputs(comfy)
    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append(
        (value, total, node_id)))
    try:
        out = pack.calibrate.SparseFlowCalibrate.execute(
            model=tiny_models[tw.WAN21_T2V], positive=positive, negative=negative, latent=latent, steps=2,
            measure_steps=2, cfg=3.0, seed=2, sampler_name="euler", scheduler="simple", error_budget=0.1,
            block_size="64")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    rmap, report = out.result
    assert (rmap.layers, rmap.heads) == (2, 2) and rmap.family == "wan2.1"
    assert progress[-1][:2] == (4, 4)  # 2 measured steps x 2 layers
    err = rmap.error
    assert err is not None and torch.isfinite(err).all()
    non_dense = rmap.routes != DENSE
    assert (err[non_dense] <= 0.1).all()
    assert "SparseFlow calibration: 2 layers x 2 heads, error budget 0.100" in report
    assert out.ui["text"][0] == report
    json.dumps(out.ui["sparseflow_routing"])


def test_calibration_errors_match_an_independent_measurement_of_the_same_qkv(comfy, pack, tiny_models):  # noqa: F811
    """Record q/k/v of a plain dense run, compute head_errors directly, compare with calibrate_model's table."""
    model = tiny_models[tw.WAN21_T2V]
    positive, negative, latent = _inputs(comfy)
    captured = {}

    def probe(func, q, k, v, heads, **kwargs):
        to = kwargs["transformer_options"]
        if q.shape == k.shape:
            step = to["sample_sigmas"].tolist().index(float(to["sigmas"][0]))
            layer = sum(1 for key in captured if key[0] == step)
            captured[(step, layer)] = (q[:1].clone(), k[:1].clone(), v[:1].clone())
        return func(q, k, v, heads=heads, **kwargs)

    probed = model.clone()
    probed.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = probe
    tw.sample_tiny(comfy, probed, latent["samples"], positive, negative, steps=2, cfg=3.0, seed=2)
    geometry = Geometry(BIG[0], BIG[1] // 2, BIG[2] // 2)
    expected = torch.zeros(2, 2, len(DEFAULT_CANDIDATES), dtype=torch.float64)
    for layer in range(2):
        sq = []
        for step in range(2):
            q, k, v = (t.view(1, -1, 2, 128).transpose(1, 2).float() for t in captured[(step, layer)])
            e, costs = head_errors(q, k, v, geometry, block=64)
            sq.append(e.pow(2))
        expected[layer] = (sum(sq) / 2).sqrt()

    budget = 0.1
    rmap, _ = pack.calibrate.calibrate_model(model, positive, negative, latent, steps=2, cfg=3.0, seed=2,
                                             budget=budget, measure=2, block=64)
    for layer in range(2):
        for head in range(2):
            errs = expected[layer, head].tolist()
            ok = [i for i, e in enumerate(errs) if e <= budget]
            best = min(ok, key=lambda i: (float(costs[i]), errs[i])) if ok else \
                next(i for i, c in enumerate(DEFAULT_CANDIDATES) if c.route == DENSE)
            cand = DEFAULT_CANDIDATES[best]
            assert rmap.route_of(layer, head) == ("dense", "sparse", "linear")[cand.route], (layer, head, errs)
            if cand.route == 1:
                assert int(rmap.window[layer, head]) == cand.window
            assert float(rmap.error[layer, head]) == pytest.approx(errs[best], rel=1e-4, abs=1e-6)


def test_budget_zero_keeps_every_head_dense_and_a_huge_budget_takes_the_cheapest(comfy, pack, tiny_models):  # noqa: F811
    positive, negative, latent = _inputs(comfy)
    strict, _ = pack.calibrate.calibrate_model(tiny_models[tw.WAN21_T2V], positive, negative, latent, steps=1,
                                               budget=0.0, measure=1, block=64)
    assert (strict.routes == DENSE).all()
    loose, report = pack.calibrate.calibrate_model(tiny_models[tw.WAN21_T2V], positive, negative, latent,
                                                   steps=1, budget=1e6, measure=1, block=64)
    assert not (loose.routes == DENSE).any()
    assert "fewer block pairs" in report


def test_calibrate_refuses_non_wan_models(comfy, pack):  # noqa: F811
    plain = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match="SparseFlow supports Wan"):
        pack.calibrate.calibrate_model(plain, [], [], {"samples": torch.zeros(1, 16, 1, 8, 8)})
