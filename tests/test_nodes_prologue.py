"""The fused QK-norm + RoPE prologue inside real ComfyUI Wan models (CPU), on the ComfyUI tree under test (0.3.64 or
the newest-shape tree): the behaviour check picks the version module that does what this ComfyUI's forward does,
same result as ComfyUI's own forward, the Triton kernel itself (interpreter) inside the model, per-call fallbacks said
in the telemetry, a forward no version matches left alone, object patches removed when switched off.
"""

from __future__ import annotations

import importlib
import logging
import os

import pytest
import tiny_wan as tw
import torch

if not torch.cuda.is_available():  # before ComfyUI (which imports triton) is imported by the fixtures
    os.environ.setdefault("TRITON_INTERPRET", "1")
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from test_nodes_common import (  # noqa: F401
    PACKAGE,
    expected_forward,
    fresh_forward_checks,
    last_run,
    pack,
    patch_small,
    sample_big,
    tiny_models,
)

pytestmark = requires_comfy

STEPS = 2
PATCH_KEY = "diffusion_model.blocks.{}.self_attn.forward"


def _sample(comfy, model, variant=tw.WAN21_T2V, batch=1):  # noqa: F811
    return sample_big(comfy, model, variant, batch, steps=STEPS)


_patch, _last = patch_small, last_run


def _probe():
    return importlib.import_module(f"{PACKAGE}.nodes.forwards.probe")


def test_every_block_gets_the_fused_forward_and_the_check_picks_this_comfyuis_version(  # noqa: F811
        comfy, pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    patched = _patch(pack, model)
    keys = sorted(k for k, v in patched.object_patches.items() if getattr(v, "_sparseflow", False)
                  and k.endswith(".self_attn.forward"))
    assert keys == [PATCH_KEY.format(i) for i in range(2)]
    assert not any(getattr(v, "_sparseflow", False) for v in model.object_patches.values())
    off = _patch(pack, patched, fuse_qk_norm_rope=False)  # patching again with it off removes them
    assert not any(getattr(v, "_sparseflow", False) and k.endswith(".self_attn.forward")
                   for k, v in off.object_patches.items())
    match = _probe().match_forwards(model.get_model_object("diffusion_model"), torch.device("cpu"), torch.float32)
    assert match.attn is expected_forward(comfy) and match.block is expected_forward(comfy), match
    assert match.describe() == f"Wan forward: {expected_forward(comfy).NAME}"


def test_the_check_rejects_the_other_versions_forward_and_says_why(comfy, pack, tiny_models,  # noqa: F811
                                                                   monkeypatch):
    """The 0.3.64 module on the newest tree (plain tensors where ComfyUI passes containers) and the newest module on
    0.3.64 (containers ComfyUI does not have) are both told apart by what the code does."""
    from comfyui_sparseflow.nodes import forwards

    other = next(v for v in forwards.VERSIONS if v is not expected_forward(comfy))
    fresh_forward_checks(monkeypatch)
    monkeypatch.setattr(_probe(), "VERSIONS", (other,))
    match = _probe().match_forwards(tiny_models[tw.WAN21_T2V].get_model_object("diffusion_model"),
                                    torch.device("cpu"), torch.float32)
    assert match.attn is None and match.block is None
    assert match.attn_reason.startswith("ComfyUI's self-attention forward does what no supported version does")
    assert other.NAME in match.attn_reason


@pytest.mark.parametrize("variant,batch", [(tw.WAN21_T2V, 2), (tw.WAN21_I2V, 1), (tw.WAN22_TI2V_5B, 1),
                                           (tw.WAN21_VACE, 1)])
def test_fused_prologue_gives_comfyuis_result_and_is_counted(comfy, pack, tiny_models, variant, batch):  # noqa: F811
    model = tiny_models[variant]
    own = _sample(comfy, _patch(pack, model, fuse_qk_norm_rope=False), variant, batch)
    fused_model = _patch(pack, model)
    fused = _sample(comfy, fused_model, variant, batch)
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-5)
    tel = _last(pack, fused_model)
    vace = 1 if variant == tw.WAN21_VACE else 0  # VACE blocks are patched too
    calls = STEPS * (2 + vace)
    assert tel.prologue == {"reference": calls}, tel.prologue  # the reference backend: no kernel ran
    assert len(tel.calls) == calls
    assert f"QK-norm + RoPE: SparseFlow's PyTorch reference (no kernel) x{calls}" in tel.summary()
    assert f"(Wan forward: {expected_forward(comfy).NAME})" in tel.summary()
    # unpatched again, the model is ComfyUI's own: same result as before
    again = _sample(comfy, _patch(pack, model, fuse_qk_norm_rope=False), variant, batch)
    torch.testing.assert_close(again, own, rtol=0, atol=0)


def test_triton_prologue_kernel_runs_inside_the_model(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """The Triton kernel (TRITON_INTERPRET=1 on CPU, compiled on CUDA) in place of ComfyUI's norm + RoPE, on this
    tree's forward: the summary says "fused"."""
    pytest.importorskip("triton")
    from comfyui_sparseflow.sparseflow import prologue

    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_qk_norm_rope=False))
    calls = []
    real = prologue._triton_fn()
    assert real is not None

    def counting(*args, **kwargs):
        calls.append(kwargs.get("inplace", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(prologue, "_triton_fn", lambda: counting)
    monkeypatch.setattr(prologue, "triton_reason", lambda x=None: None)
    fused_model = _patch(pack, model, backend="auto")
    out = _sample(comfy, fused_model)
    assert len(calls) == STEPS * 2  # one launch per self-attention call, q and k together
    assert all(calls)  # over the fresh projections, in place
    torch.testing.assert_close(out, own, rtol=1e-4, atol=1e-4)
    tel = _last(pack, fused_model)
    assert tel.prologue == {"fused": STEPS * 2}
    assert f"QK-norm + RoPE: fused x{STEPS * 2}" in tel.summary()


def test_auto_backend_on_cpu_keeps_comfyuis_prologue_and_says_why(comfy, pack, tiny_models, caplog):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour: on CUDA the auto backend fuses")
    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_qk_norm_rope=False, backend="auto"))
    patched = _patch(pack, model, backend="auto")
    with caplog.at_level(logging.INFO, logger="sparseflow.nodes"):
        out = _sample(comfy, patched)
    torch.testing.assert_close(out, own, rtol=0, atol=0)
    reason = "fused prologue cannot run: no CUDA device"
    assert _last(pack, patched).prologue == {reason: STEPS * 2}
    assert f"QK-norm + RoPE: ComfyUI's own ({reason}) x4" in _last(pack, patched).summary()


def test_a_comfyui_forward_that_does_something_else_is_left_alone_and_said(comfy, pack, monkeypatch, caplog,  # noqa: F811
                                                                           tmp_path):
    """A ComfyUI update that changes what self-attention does (here: the output scaled) matches no version: ComfyUI's
    own code runs, bit for bit, the log says why once and the run summary counts it."""
    # a model never patched before: ComfyUI's unpatch leaves the class forward bound on each instance it patched
    model = tw.load_tiny_wan(comfy, tw.WAN21_T2V, tmp_path)
    attn_cls = type(model.get_model_object("diffusion_model").blocks[0].self_attn)
    real_forward = attn_cls.forward

    def changed(self, x, freqs, transformer_options={}, **kwargs):  # noqa: B006 - ComfyUI's signature
        return real_forward(self, x, freqs, transformer_options=transformer_options, **kwargs) * 0.5

    monkeypatch.setattr(attn_cls, "forward", changed)
    fresh_forward_checks(monkeypatch)
    own = _sample(comfy, _patch(pack, model, fuse_qk_norm_rope=False))
    patched = _patch(pack, model)
    with caplog.at_level(logging.WARNING, logger="sparseflow.nodes"):
        out = _sample(comfy, patched)
    torch.testing.assert_close(out, own, rtol=0, atol=0)
    assert "QK-norm + RoPE stay ComfyUI's own: ComfyUI's self-attention forward does what no supported" in caplog.text
    assert "another result" in caplog.text
    (reason, count), = _last(pack, patched).prologue.items()
    assert count == STEPS * 2 and reason.startswith("ComfyUI's self-attention forward does what no supported")
    assert "QK-norm + RoPE: ComfyUI's own (ComfyUI's self-attention forward" in _last(pack, patched).summary()


def test_a_patched_forward_call_with_extra_arguments_or_outside_a_run_goes_to_comfyuis_forward(pack):  # noqa: F811
    """nodes.prologue.call_reason: the guard the patched forward asks first."""
    pro = importlib.import_module(f"{PACKAGE}.nodes.prologue")
    run_mod = importlib.import_module(f"{PACKAGE}.nodes.run")
    ctx_mod = importlib.import_module(f"{PACKAGE}.nodes.context")
    run = object.__new__(run_mod.RunState)
    ctx = object.__new__(ctx_mod.CallContext)
    to = {run_mod.RUN_KEY: run, ctx_mod.CONTEXT_KEY: ctx}
    assert pro.call_reason(to, {}) == (run, ctx, None)
    assert pro.call_reason(to, {"b": 1, "a": 2})[2] == "unexpected arguments ['a', 'b']"
    outside = "no SparseFlow run state in transformer_options (not inside a sampling run)"
    assert pro.call_reason({}, {})[2] == outside
    assert pro.call_reason(None, {})[2] == outside
    assert pro.call_reason({run_mod.RUN_KEY: "not a run"}, {})[2] == outside
    assert pro.call_reason({run_mod.RUN_KEY: run}, {})[2].startswith("no SparseFlow model-call context")


def test_a_lora_function_on_the_qk_norm_leaves_the_prologue_unchecked_and_the_block_matched(comfy, pack,  # noqa: F811
                                                                                             monkeypatch, tmp_path):
    """ComfyUI's lowvram LoRA patches come as weight functions: on the QK norm the prologue cannot use the weight, so
    that check does not run (and is not cached: a later run may differ); the block's check still does."""
    dm = tw.load_tiny_wan(comfy, tw.WAN21_T2V, tmp_path).get_model_object("diffusion_model")
    monkeypatch.setattr(dm.blocks[0].self_attn.norm_q, "weight_function", [lambda w: w * 1.0], raising=False)
    fresh_forward_checks(monkeypatch)
    match = _probe().match_forwards(dm, torch.device("cpu"), torch.float32)
    assert match.attn is None and match.block is expected_forward(comfy)
    assert match.attn_reason == ("the behaviour check cannot use this model's weights (QK norm weight has patch "
                                 "functions (LoRA on the norm))")
    assert not _probe()._cache
