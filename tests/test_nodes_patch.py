"""SparseFlow Patch on tiny Wan models in real ComfyUI (CPU): untouched input, dense bit-identity, the operator
inside the model, per-step schedule values, passthrough of cross-attention, interrupts, unsupported models.
"""

from __future__ import annotations

import pytest
import tiny_wan as tw
import torch
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import AttentionPlan
from comfyui_sparseflow.sparseflow.reference import reference_attention
from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.schedule import describe, schedule_preset
from helpers import assert_close_report
from test_nodes_common import BIG, FRAMES, HEIGHT, WIDTH, last_run, model_snapshot, pack, tiny_models  # noqa: F401

pytestmark = requires_comfy

STEPS = 3


def _sample(comfy, model, variant, shape=(FRAMES, HEIGHT, WIDTH), batch=1, steps=STEPS, cfg=3.0, seed=0,  # noqa: F811
            callback=None):
    latent = tw.empty_latent(variant, *shape, batch=batch)
    positive, negative = tw.make_conditioning(comfy, variant, latent, seed=seed)
    if callback is None:
        return tw.sample_tiny(comfy, model, latent, positive, negative, steps=steps, cfg=cfg, seed=seed)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               disable_pbar=True, seed=seed, callback=callback)


def _last(pack, model):  # noqa: F811
    return last_run(pack, model)


def test_patching_leaves_the_input_model_unchanged(comfy, pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    before = model_snapshot(model)
    patched = pack.patch.apply_sparseflow(model, backend="reference")
    assert model_snapshot(model) == before
    assert patched is not model and patched.model is model.model
    _sample(comfy, patched, tw.WAN21_T2V)
    assert model_snapshot(model) == before
    to = patched.model_options["transformer_options"]
    assert getattr(to["optimized_attention_override"], "_sparseflow", False)
    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})
    assert list(patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "sparseflow"))
    assert not model.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "sparseflow")


@pytest.mark.parametrize("how", ["all_dense_routing", "dense_schedule"])
def test_all_dense_routing_matches_unpatched_model_bit_for_bit(comfy, pack, tiny_models, how):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    reference = _sample(comfy, model, tw.WAN21_T2V, BIG)
    if how == "all_dense_routing":
        kwargs = {"routing": routing_preset("all_dense", 2, 2)}
    else:
        kwargs = {"schedule": schedule_preset("dense")}
    # the fused QK-norm + RoPE prologue is off here: it rounds differently (tests/test_nodes_prologue.py)
    patched = pack.patch.apply_sparseflow(model, backend="reference", block=64, fuse_qk_norm_rope=False, **kwargs)
    out = _sample(comfy, patched, tw.WAN21_T2V, BIG)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    tel = _last(pack, patched)
    assert len(tel.calls) == STEPS * 2 and tel.backends() == ["comfyui"]  # every self-attention call seen
    assert tel.flops_saved() == 0.0


def _recording_override(inner, calls):
    """Wrap our override: record q/k/v, the output and the step/layer of every call (marked as ours)."""

    def record(func, q, k, v, heads, **kwargs):
        out = inner(func, q, k, v, heads, **kwargs)
        to = kwargs["transformer_options"]
        calls.append({"q": q, "k": k, "v": v, "out": out, "heads": heads, "layer": to.get("sparseflow_block"),
                      "sigma": float(to["sigmas"][0]), "sample_sigmas": to["sample_sigmas"].tolist(),
                      "dense": func(q, k, v, heads=heads, **kwargs)})
        return out

    record._sparseflow = True  # so the wrapper does not chain a second SparseFlow override on top
    record._sparseflow_previous = None
    return record


CASES = [(tw.WAN21_T2V, 2), (tw.WAN21_I2V, 1), (tw.WAN22_TI2V_5B, 1), (tw.WAN21_VACE, 1)]


@pytest.mark.parametrize("variant,batch", CASES, ids=[f"{v}-b{b}" for v, b in CASES])
def test_sparseflow_output_equals_the_reference_operator_applied_inside_the_model(comfy, pack, tiny_models,  # noqa: F811
                                                                                   variant, batch):
    model = tiny_models[variant]
    schedule = schedule_preset("balanced")
    routing = routing_preset("alternating", 2, 2)
    patched = pack.patch.apply_sparseflow(model, schedule=schedule, routing=routing, backend="reference", block=64)
    to = patched.model_options["transformer_options"]
    calls = []
    to["optimized_attention_override"] = _recording_override(to["optimized_attention_override"], calls)

    out = _sample(comfy, patched, variant, BIG, batch=batch, steps=2)
    dense_out = _sample(comfy, model, variant, BIG, batch=batch, steps=2)
    assert torch.isfinite(out).all() and out.shape == dense_out.shape
    assert not torch.equal(out, dense_out)  # the sparse routes changed the result

    geometry = Geometry(*BIG[:1], BIG[1] // 2, BIG[2] // 2)
    selfs = [c for c in calls if c["q"].shape == c["k"].shape]
    cross = [c for c in calls if c["q"].shape != c["k"].shape]
    vace = 1 if variant == tw.WAN21_VACE else 0
    assert len(selfs) == 2 * (2 + vace)
    per_step = describe(schedule, 2)
    for c in selfs:
        assert c["q"].shape == (2 * batch, geometry.length, 256)  # CFG: cond + uncond in one call
        step = c["sample_sigmas"].index(c["sigma"])
        p = per_step[step]
        plan = AttentionPlan(geometry, routing.head_routes(c["layer"]), (p.window,) * 2, (0,) * 2, anchors=(0,),
                             compensation=p.compensation, block=64)
        expected = reference_attention(c["q"], c["k"], c["v"], plan, heads=2)
        assert_close_report(c["out"], expected, atol=1e-6, rtol=1e-5, what=f"layer {c['layer']} step {step}")
    assert any((c["out"] - c["dense"]).abs().max() > 1e-4 for c in selfs)
    for c in cross:  # cross-attention is ComfyUI's own, untouched
        torch.testing.assert_close(c["out"], c["dense"], rtol=0, atol=0)
    tel = _last(pack, patched)
    cross_per_block = 2 if variant == tw.WAN21_I2V else 1
    assert tel.passthrough == {"cross-attention": 2 * (2 + vace) * cross_per_block}
    assert len(tel.calls) == len(selfs) and tel.backends() == ["reference"]


@pytest.mark.parametrize("precision", ["int8-qk", "fp8"])
def test_quantized_precision_reaches_the_operator_inside_the_model(comfy, pack, tiny_models, precision):  # noqa: F811
    """precision="int8-qk" / "fp8": every self-attention call SparseFlow runs is that precision's reference operator
    (spec §8), which differs from the fp16 one."""
    model = tiny_models[tw.WAN21_T2V]
    routing = routing_preset("alternating", 2, 2)
    patched = pack.patch.apply_sparseflow(model, routing=routing, backend="reference", block=64, precision=precision)
    assert f"Q·K {precision}" in pack.patch.patch_text(patched)
    to = patched.model_options["transformer_options"]
    calls = []
    to["optimized_attention_override"] = _recording_override(to["optimized_attention_override"], calls)
    _sample(comfy, patched, tw.WAN21_T2V, BIG, steps=2)
    geometry = Geometry(*BIG[:1], BIG[1] // 2, BIG[2] // 2)
    per_step = describe(schedule_preset("balanced"), 2)
    selfs = [c for c in calls if c["q"].shape == c["k"].shape]
    assert selfs
    for c in selfs:
        p = per_step[c["sample_sigmas"].index(c["sigma"])]
        plan = AttentionPlan(geometry, routing.head_routes(c["layer"]), (p.window,) * 2, (0,) * 2, anchors=(0,),
                             compensation=p.compensation, block=64, precision=precision)
        expected = reference_attention(c["q"], c["k"], c["v"], plan, heads=2)
        assert_close_report(c["out"], expected, atol=1e-6, rtol=1e-5, what=f"layer {c['layer']}")
        fp16 = reference_attention(c["q"], c["k"], c["v"], plan.with_precision("fp16"), heads=2)
        assert (c["out"] - fp16).abs().max() > 1e-5
    assert f"precision {precision} (sparse, linear and mixed calls)" in _last(pack, patched).summary()


@pytest.mark.parametrize("sparsity, window", [(0.5, -1), (1.0, 0), (0.0, 1)])
def test_the_default_routings_edge_layers_keep_their_fixed_window(comfy, pack, tiny_models, sparsity,  # noqa: F811
                                                                    window):
    """No routing given: heuristic_sparse_edges. The tiny model's 2 layers are both edge layers, so every head is
    sparse at EDGE_WINDOW (2) whatever the sparsity slider and the window input say (4 latent frames: window 0 or 1
    would give another result)."""
    model = tiny_models[tw.WAN21_T2V]
    patched = pack.patch.apply_sparseflow(model, sparsity=sparsity, window=window, backend="reference", block=64)
    to = patched.model_options["transformer_options"]
    calls = []
    to["optimized_attention_override"] = _recording_override(to["optimized_attention_override"], calls)
    _sample(comfy, patched, tw.WAN21_T2V, BIG, steps=2)
    geometry = Geometry(*BIG[:1], BIG[1] // 2, BIG[2] // 2)
    selfs = [c for c in calls if c["q"].shape == c["k"].shape]
    assert len(selfs) == 4
    for c in selfs:
        plan = AttentionPlan(geometry, (1, 1), (2, 2), (0, 0), anchors=(0,), compensation=True, block=64)
        assert_close_report(c["out"], reference_attention(c["q"], c["k"], c["v"], plan, heads=2), atol=1e-6,
                            rtol=1e-5, what=f"layer {c['layer']}")
        narrow = AttentionPlan(geometry, (1, 1), (0, 0), (0, 0), anchors=(0,), compensation=True, block=64)
        assert (c["out"] - reference_attention(c["q"], c["k"], c["v"], narrow, heads=2)).abs().max() > 1e-4
    assert "heads sparse 4 / linear 0 / dense 0" in _last(pack, patched).summary()


@pytest.mark.parametrize("preset", ["fast", "balanced", "quality"])
def test_schedule_per_step_values_are_the_ones_applied(comfy, pack, tiny_models, preset):  # noqa: F811
    steps = 5
    schedule = schedule_preset(preset)
    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], schedule=schedule, backend="reference")
    _sample(comfy, patched, tw.WAN21_T2V, steps=steps)
    applied = _last(pack, patched).step_params()
    expected = {i: (p.window, p.topk, p.dense) for i, p in enumerate(describe(schedule, steps))}
    assert applied == expected
    if preset == "quality":
        assert applied[steps - 1][2] and not applied[0][2]  # dense late, sparse early


def test_sigma_progress_mode_uses_the_models_whole_sigma_range(comfy, pack, tiny_models):  # noqa: F811
    from comfyui_sparseflow.sparseflow.schedule import Keyframe, Schedule

    schedule = Schedule((Keyframe(0.0, 0), Keyframe(0.5, 3)), progress_mode="sigma")
    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], schedule=schedule, backend="reference")
    _sample(comfy, patched, tw.WAN21_T2V, steps=4)
    tel = _last(pack, patched)
    model_sampling = patched.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", 4).tolist()
    assert tel.steps() == [0, 1, 2, 3]
    for c in tel.calls:
        progress = 1.0 - sigmas[c.step] / float(model_sampling.sigma_max)
        assert c.progress == pytest.approx(progress)
        assert c.window == schedule.at(progress).window


def test_cross_attention_and_a_previous_override_see_every_call_sparseflow_does_not_take(comfy, pack,  # noqa: F811
                                                                                          tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_I2V].clone()
    seen = []

    def previous(func, q, k, v, heads, **kwargs):
        seen.append(k.shape[1])
        return func(q, k, v, heads=heads, **kwargs)

    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = previous
    patched = pack.patch.apply_sparseflow(model, backend="reference", routing=routing_preset("all_sparse", 2, 2))
    _sample(comfy, patched, tw.WAN21_I2V)
    # I2V: image (257) then text (512) cross-attention per block; self-attention never reaches `previous`
    assert seen == [tw.CLIP_TOKENS, tw.TEXT_TOKENS] * (2 * STEPS)
    assert _last(pack, patched).passthrough == {"cross-attention": 4 * STEPS}


def test_patching_twice_replaces_the_first_patch(comfy, pack, tiny_models):  # noqa: F811
    once = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], backend="reference")
    twice = pack.patch.apply_sparseflow(once, backend="reference", window=3)
    wrappers = twice.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "sparseflow")
    assert len(wrappers) == 1
    to = twice.model_options["transformer_options"]
    assert to["optimized_attention_override"]._sparseflow_previous is None
    assert to["patches_replace"]["dit"][("double_block", 0)]._sparseflow_previous is None
    _sample(comfy, twice, tw.WAN21_T2V)
    assert {c.window for c in _last(pack, twice).calls} == {3}
    assert _last(pack, once) is None  # the first patch never ran


class _Stop(Exception):
    pass


def test_an_interrupted_run_leaves_nothing_patched_and_the_state_reset(comfy, pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    reference = _sample(comfy, model, tw.WAN21_T2V, BIG)
    before = model_snapshot(model)
    global_attention = comfy.wan_model.optimized_attention
    patched = pack.patch.apply_sparseflow(model, backend="reference", block=64)

    def stop(step, x0, x, total):
        if step == 1:
            raise _Stop

    with pytest.raises(_Stop):
        _sample(comfy, patched, tw.WAN21_T2V, BIG, callback=stop)
    assert pack.run.RUN_KEY not in patched.model_options["transformer_options"]  # the run's state went with it
    assert _last(pack, patched).steps() == [0, 1]  # the partial run was reported
    assert model_snapshot(model) == before
    assert comfy.wan_model.optimized_attention is global_attention
    torch.testing.assert_close(_sample(comfy, model, tw.WAN21_T2V, BIG), reference, rtol=0, atol=0)
    # the patched model runs cleanly again and gives what a fresh patch gives
    again = _sample(comfy, patched, tw.WAN21_T2V, BIG)
    fresh = _sample(comfy, pack.patch.apply_sparseflow(model, backend="reference", block=64), tw.WAN21_T2V, BIG)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)


def test_unsupported_models_fail_at_patch_time_naming_what_is_supported(comfy, pack, tmp_path):  # noqa: F811
    plain = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"SparseFlow supports Wan 2\.1/2\.2 \(t2v, i2v, vace, ti2v-5b\); "
                                         r"got model type 'Linear'"):
        pack.patch.apply_sparseflow(plain)
    # a real Wan variant SparseFlow does not support: Wan 2.2 Fun-Camera (detected as model_type camera_2.2)
    sd = tw.build_state_dict(tw.WAN21_T2V)
    sd["patch_embedding.weight"] = torch.zeros(256, 36, 1, 2, 2)
    sd["control_adapter.conv.weight"] = torch.zeros(256, 24 * 64, 2, 2)
    sd["control_adapter.conv.bias"] = torch.zeros(256)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "camera.safetensors"))
    camera = comfy.sd.load_diffusion_model(str(tmp_path / "camera.safetensors"))
    with pytest.raises(ValueError, match="got model type 'camera_2.2'"):
        pack.patch.apply_sparseflow(camera)


def test_user_errors_name_the_input_and_what_is_allowed(pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    with pytest.raises(ValueError, match=r"routing map is 30x12 .* has 2x2; set layers=2 and heads=2"):
        pack.patch.apply_sparseflow(model, routing=routing_preset("heuristic", 30, 12))
    with pytest.raises(ValueError, match="route 'fast' is unknown"):
        pack.patch.apply_sparseflow(model, overrides='{"0.1": "fast"}')
    with pytest.raises(ValueError, match=r"precision must be one of auto, fp16, int8-qk, fp8; got 'int4'"):
        pack.patch.apply_sparseflow(model, precision="int4")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"backend 'triton' cannot run here: triton: no CUDA device"):
            pack.patch.apply_sparseflow(model, backend="triton")


def test_geometry_counts_time_concat_frames_and_reference_prefix_tokens(pack):  # noqa: F811
    from types import SimpleNamespace

    geometry_for = pack.context.geometry_for
    dm = SimpleNamespace(patch_size=(1, 2, 2), ref_conv=None)
    assert geometry_for(dm, torch.zeros(1, 16, 3, 9, 7), None, {}) == Geometry(3, 5, 4)
    assert geometry_for(dm, torch.zeros(1, 36, 3, 8, 8), torch.zeros(1, 16, 2, 8, 8), {}) == Geometry(5, 4, 4)
    ref = {"reference_latent": torch.zeros(1, 16, 8, 8)}
    assert geometry_for(dm, torch.zeros(1, 16, 3, 8, 8), None, ref) == Geometry(3, 4, 4)  # no ref_conv: ignored
    dm_ref = SimpleNamespace(patch_size=(1, 2, 2), ref_conv=object())
    assert geometry_for(dm_ref, torch.zeros(1, 16, 3, 8, 8), None, ref) == Geometry(3, 4, 4, prefix=16)


def test_lora_weight_patches_and_fp8_weights_keep_working_on_a_patched_model(comfy, pack, tiny_models,  # noqa: F811
                                                                              tmp_path):
    model = tiny_models[tw.WAN21_T2V]
    routing = routing_preset("alternating", 2, 2)  # the default heuristic is all dense at 2 layers
    patched = pack.patch.apply_sparseflow(model, backend="reference", block=64, routing=routing)
    plain = _sample(comfy, patched, tw.WAN21_T2V, BIG, steps=2)
    lora = patched.clone()
    key = "diffusion_model.blocks.0.self_attn.q.weight"
    lora.add_patches({key: (torch.full((256, 256), 0.05),)}, strength_patch=1.0)  # a "diff" patch, as LoRAs add
    out = _sample(comfy, lora, tw.WAN21_T2V, BIG, steps=2)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert _last(pack, lora).backends() == ["reference"]

    path = tw.save_checkpoint(tw.WAN21_T2V, tmp_path)
    fp8 = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float8_e4m3fn})
    assert fp8.model.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    patched8 = pack.patch.apply_sparseflow(fp8, backend="reference", block=64, routing=routing)
    out8 = _sample(comfy, patched8, tw.WAN21_T2V, BIG, steps=2)
    assert torch.isfinite(out8).all() and _last(pack, patched8).backends() == ["reference"]


def test_geometry_counts_in_context_latents_appended_after_the_video(pack):  # noqa: F811
    from types import SimpleNamespace

    dm = SimpleNamespace(patch_size=(1, 2, 2), ref_conv=None)
    lat = [torch.zeros(1, 16, 2, 8, 8), torch.zeros(1, 16, 1, 7, 8)]  # newest ComfyUI: padded, patch-embedded
    assert pack.context.geometry_for(dm, torch.zeros(1, 16, 3, 8, 8), None, {"context_latents": lat}) == \
        Geometry(3, 4, 4, suffix=2 * 4 * 4 + 1 * 4 * 4)


def test_extra_tokens_outside_grid_sizes_run_sparseflow(pack, tiny_models):  # noqa: F811
    """Newest ComfyUI's grid_sizes leaves out the appended context_latents (and Fun-Control's prepended reference):
    a call with them still matches the model call's geometry and runs SparseFlow, not dense."""
    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], backend="reference", block=64,
                                          routing=routing_preset("alternating", 2, 2))
    config = patched.model_options["transformer_options"][pack.config.SPARSEFLOW_KEY]
    run = pack.run.RunState(config, pack.run.Timeline())
    to = {"sigmas": torch.tensor([1.0]), "sample_sigmas": torch.tensor([1.0, 0.5, 0.0])}
    ctx = run.context(patched.get_model_object("diffusion_model"), torch.zeros(1, 16, *BIG), None, None, to,
                      {"context_latents": [torch.zeros(1, 16, 1, 16, 16)]})
    assert ctx.geometry == Geometry(4, 8, 8, suffix=64)
    to.update({pack.context.CONTEXT_KEY: ctx, "grid_sizes": (4, 8, 8), "block_index": 0})
    q = torch.zeros(2, 256 + 64, 256)
    decision = run.decide(q, q, q, 2, None, False, False, to)
    assert isinstance(decision, pack.decide.Route) and decision.call.kind == "sparse", decision
    short = torch.zeros(2, 256, 256)  # the grid alone: not this call's sequence
    assert run.decide(short, short, short, 2, None, False, False, to).reason == "token count mismatch"


def test_fun_control_reference_tokens_run_sparseflow_with_the_prefix(comfy, pack, tmp_path):  # noqa: F811
    """Wan Fun-Control's reference_latent prepends (H/2)(W/2) tokens through ref_conv (not in newest's grid_sizes):
    every self-attention call runs the operator on the prefixed geometry."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    sd = tw.build_state_dict(tw.WAN21_T2V)
    sd["patch_embedding.weight"] = torch.randn(256, 48, 1, 2, 2, generator=gen) * 0.02  # + 32 control channels
    sd["ref_conv.weight"] = torch.randn(256, 16, 2, 2, generator=gen) * 0.02
    sd["ref_conv.bias"] = torch.zeros(256)
    save_file(sd, str(tmp_path / "fun_control.safetensors"))
    model = comfy.sd.load_diffusion_model(str(tmp_path / "fun_control.safetensors"))
    assert model.get_model_object("diffusion_model").ref_conv is not None
    routing = routing_preset("alternating", 2, 2)
    patched = pack.patch.apply_sparseflow(model, routing=routing, backend="reference", block=64)
    to = patched.model_options["transformer_options"]
    calls = []
    to["optimized_attention_override"] = _recording_override(to["optimized_attention_override"], calls)
    latent = tw.empty_latent(tw.WAN21_T2V, *BIG)
    positive, negative = tw.make_conditioning(comfy, tw.WAN21_T2V, latent, seed=0)
    reference = torch.randn(1, 16, 1, BIG[1], BIG[2], generator=gen)
    for cond in (positive, negative):
        cond[0][1]["reference_latents"] = [reference]
    tw.sample_tiny(comfy, patched, latent, positive, negative, steps=2)
    geometry = Geometry(BIG[0], BIG[1] // 2, BIG[2] // 2, prefix=(BIG[1] // 2) * (BIG[2] // 2))
    selfs = [c for c in calls if c["q"].shape == c["k"].shape]
    assert len(selfs) == 2 * 2 and all(c["q"].shape[1] == geometry.length for c in selfs)
    tel = _last(pack, patched)
    assert len(tel.calls) == 4 and "token count mismatch" not in tel.passthrough
    for c in selfs:
        step = c["sample_sigmas"].index(c["sigma"])
        p = describe(schedule_preset("balanced"), 2)[step]
        plan = AttentionPlan(geometry, routing.head_routes(c["layer"]), (p.window,) * 2, (0,) * 2, anchors=(0,),
                             compensation=p.compensation, block=64)
        expected = reference_attention(c["q"], c["k"], c["v"], plan, heads=2)
        assert_close_report(c["out"], expected, atol=1e-6, rtol=1e-5, what=f"layer {c['layer']} step {step}")


def test_fp8_precision_is_refused_at_patch_time_below_compute_capability_8_9(pack, monkeypatch):  # noqa: F811
    """An RTX 3090 (sm_86) has no e4m3 tensor cores: precision "fp8" raises when patching, naming the input, the device
    and what it can use instead; int8-qk is accepted there."""
    from comfyui_sparseflow.sparseflow import fp8, quantize

    for mod in (fp8, quantize):
        monkeypatch.setattr(mod.torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(mod.torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(mod.torch.cuda, "get_device_capability", lambda dev=None: (8, 6))
        monkeypatch.setattr(mod.torch.cuda, "get_device_name", lambda dev=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(ValueError, match=r"input 'precision': precision 'fp8' needs compute capability 8\.9\+ .*"
                                         r"RTX 3090 is sm_86 \(use precision 'int8-qk' or 'fp16'\)"):
        pack.patch.check_precision("fp8")
    pack.patch.check_precision("int8-qk")


def test_precision_auto_is_the_default_and_resolves_per_device(pack, tiny_models, monkeypatch):  # noqa: F811
    """The Patch node's default precision "auto": fp16 without CUDA (said in the node's text as auto), int8-qk on an
    RTX 4090's limits (the consumer launch tier, measured faster there), fp16 on an H200's and below sm_80."""
    from comfyui_sparseflow.kernels import configs

    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], backend="reference")
    cfg = patched.model_options["transformer_options"]["sparseflow"]
    if not torch.cuda.is_available():
        assert (cfg.precision, cfg.precision_auto) == ("fp16", True)
        assert "Q·K fp16 (auto)" in pack.patch.patch_text(patched)
        assert pack.patch.resolve_precision("auto").reason == "no CUDA device"
    assert pack.patch.resolve_precision("int8-qk").precision == "int8-qk"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for limits, want in ((configs.DeviceLimits((8, 9), 101376, "NVIDIA GeForce RTX 4090"), "int8-qk"),
                         (configs.DeviceLimits((8, 6), 101376, "NVIDIA GeForce RTX 3090"), "int8-qk"),
                         (configs.DeviceLimits((9, 0), 232448, "NVIDIA H200"), "fp16"),
                         (configs.DeviceLimits((7, 5), 65536, "Tesla T4"), "fp16")):
        monkeypatch.setattr(configs, "device_limits", lambda dev, limits=limits: limits)
        choice = pack.patch.resolve_precision("auto", "cuda:0")
        assert choice.precision == want, (limits, choice)
        assert limits.name in choice.reason
    monkeypatch.setenv(configs.TIER_ENV, "consumer")  # consumer configs forced on a T4: no int8 MMA there
    choice = pack.patch.resolve_precision("auto", "cuda:0")
    assert choice.precision == "fp16" and "sm_80" in choice.reason
