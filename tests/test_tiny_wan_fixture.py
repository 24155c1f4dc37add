"""The tiny Wan fixtures load through real ComfyUI detection, sample, and expose the attention override contract.

Checks COMFY_NOTES §1.1 (override signature, self/cross shapes), §2.1 (transformer_options keys, CFG batch)
and §5 (key layout, detected classes) against the ComfyUI at $COMFYUI_PATH. Skipped loudly without it.
"""

from __future__ import annotations

import pytest
import tiny_wan as tw
import torch
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)

pytestmark = requires_comfy

SPEC = tw.TinyWanSpec()
FRAMES, HEIGHT, WIDTH = 3, 8, 8
TOKENS = FRAMES * (HEIGHT // 2) * (WIDTH // 2)  # patch (1, 2, 2) -> 48 video tokens
STEPS = 2
# key counts at 2 layers / 1 VACE layer, as listed in COMFY_NOTES §5
KEY_COUNTS = {tw.WAN21_T2V: 69, tw.WAN21_I2V: 87, tw.WAN22_TI2V_5B: 69, tw.WAN21_VACE: 102}


@pytest.fixture(scope="module")
def models(comfy, tmp_path_factory):  # noqa: F811
    """Load each variant once per module: {variant: ModelPatcher}."""
    directory = tmp_path_factory.mktemp("tiny_wan")
    return {v: tw.load_tiny_wan(comfy, v, directory, SPEC) for v in tw.VARIANTS}


@pytest.mark.parametrize("variant", tw.VARIANTS)
def test_checkpoint_is_detected_as_the_real_class_with_every_key_loaded(models, variant):
    model = models[variant]
    assert tw.model_class_name(model) == tw.EXPECTED_CLASS[variant]

    ours = tw.build_state_dict(variant, SPEC)
    loaded = model.model.diffusion_model.state_dict()
    assert len(ours) == KEY_COUNTS[variant]
    assert sorted(loaded) == sorted(ours), "missing/unexpected keys"
    for key, value in ours.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")

    dm = model.model.diffusion_model
    assert (dm.dim, dm.num_heads, dm.ffn_dim, len(dm.blocks)) == (SPEC.dim, SPEC.num_heads, SPEC.ffn_dim,
                                                                    SPEC.num_layers)
    assert dm.in_dim == tw.IN_CHANNELS[variant] and dm.out_dim == tw.LATENT_CHANNELS[variant]
    if variant == tw.WAN21_VACE:
        assert len(dm.vace_blocks) == SPEC.vace_layers


@pytest.mark.parametrize("variant", tw.VARIANTS)
def test_sampling_with_cfg_returns_a_finite_latent_of_the_latent_shape(comfy, models, variant):  # noqa: F811
    out = tw.sample_variant(comfy, models[variant], variant, frames=FRAMES, height=HEIGHT, width=WIDTH,
                            steps=STEPS, cfg=3.0)
    assert out.shape == (1, tw.LATENT_CHANNELS[variant], FRAMES, HEIGHT, WIDTH)
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def _expected_calls(variant: str) -> tuple[int, list[int]]:
    """(self-attention calls, cross-attention key lengths in call order) for one model call."""
    layers = SPEC.num_layers + (SPEC.vace_layers if variant == tw.WAN21_VACE else 0)
    if variant == tw.WAN21_I2V:
        return layers, [tw.CLIP_TOKENS, tw.TEXT_TOKENS] * layers  # image call first, then text
    return layers, [tw.TEXT_TOKENS] * layers


@pytest.mark.parametrize("variant", tw.VARIANTS)
def test_attention_override_on_a_clone_sees_every_wan_attention_call(comfy, models, variant):  # noqa: F811
    model = models[variant]
    latent = tw.empty_latent(variant, FRAMES, HEIGHT, WIDTH)
    positive, negative = tw.make_conditioning(comfy, variant, latent, seed=1)
    reference = tw.sample_tiny(comfy, model, latent, positive, negative, steps=STEPS, cfg=3.0, seed=1)

    calls = []
    backend = comfy.wan_model.optimized_attention.__wrapped__  # wrap_attn hands the override the bare backend

    def probe(func, *args, **kwargs):
        to = kwargs["transformer_options"]
        calls.append({
            "func_is_backend": func is backend, "n_args": len(args),
            "q": tuple(args[0].shape), "k": tuple(args[1].shape), "v": tuple(args[2].shape),
            "kwargs": sorted(kwargs), "heads": kwargs.get("heads"),
            "cond_or_uncond": list(to["cond_or_uncond"]), "to_keys": set(to),
            "sigma": float(to["sigmas"][0]), "sample_sigmas": to["sample_sigmas"].tolist(),
        })
        return func(*args, **kwargs)

    patched = model.clone()
    patched.model_options["transformer_options"]["optimized_attention_override"] = probe
    out = tw.sample_tiny(comfy, patched, latent, positive, negative, steps=STEPS, cfg=3.0, seed=1)

    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})
    torch.testing.assert_close(out, reference, rtol=0, atol=0)  # forwarding to func changes nothing

    n_self, cross_lens = _expected_calls(variant)
    per_step = n_self + len(cross_lens)
    assert len(calls) == STEPS * per_step
    d = SPEC.dim
    newest = hasattr(comfy.attention, "AttentionTensorContainer")  # the newest-shape tree (COMFY_NOTES §1.2)
    for c in calls:
        assert c["func_is_backend"] and c["n_args"] == 3
        # newest: the I2V image cross-attention (the first cross call of a block) also passes low_precision_attention
        image_call = newest and variant == tw.WAN21_I2V and c["k"][1] == tw.CLIP_TOKENS
        extra = ["low_precision_attention"] if image_call else []
        assert c["kwargs"] == sorted(["_inside_attn_wrapper", "heads", "transformer_options", *extra])
        assert c["heads"] == SPEC.num_heads
        assert sorted(c["cond_or_uncond"]) == [0, 1]  # cond and uncond batched into one call
        assert {"cond_or_uncond", "sigmas", "sample_sigmas", "uuids"} <= c["to_keys"]
        assert c["q"] == (2, TOKENS, d)
    selfs = [c for c in calls if c["k"] == c["q"]]
    cross = [c for c in calls if c["k"] != c["q"]]
    assert len(selfs) == STEPS * n_self
    assert all(c["v"] == c["q"] for c in selfs)
    assert [c["k"][1] for c in cross] == cross_lens * STEPS
    assert all(c["k"] == c["v"] and c["k"][2] == d for c in cross)
    sample_sigmas = calls[0]["sample_sigmas"]
    assert calls[0]["sigma"] == sample_sigmas[0] == 1.0
    assert calls[-1]["sigma"] == pytest.approx(sample_sigmas[STEPS - 1])


def test_ti2v_noise_mask_keeps_the_known_frame_and_gives_each_frame_its_timestep(comfy, models):  # noqa: F811
    variant = tw.WAN22_TI2V_5B
    latent = torch.randn(1, tw.LATENT_CHANNELS[variant], FRAMES, HEIGHT, WIDTH,
                         generator=torch.Generator().manual_seed(3))
    mask = torch.ones(1, 1, FRAMES, HEIGHT, WIDTH)
    mask[:, :, :1] = 0.0  # frame 0 known, as Wan22ImageToVideoLatent sets it
    positive, negative = tw.make_conditioning(comfy, variant, latent)
    timesteps = []

    def record(executor, x, timestep, *args, **kwargs):
        timesteps.append(timestep.detach().clone())
        return executor(x, timestep, *args, **kwargs)

    patched = models[variant].clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "tiny_wan_test", record)
    out = tw.sample_tiny(comfy, patched, latent, positive, negative, steps=STEPS, noise_mask=mask)

    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, 0], latent[:, :, 0], rtol=0, atol=1e-5)
    assert len(timesteps) == STEPS
    first = timesteps[0]
    assert first.shape == (2, FRAMES)  # (cond+uncond, frames): WAN22.process_timestep
    assert (first[:, 0] == 0).all() and (first[:, 1:] > 0).all()
