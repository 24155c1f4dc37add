"""The fused QK-norm + RoPE prologue inside real ComfyUI Wan models (CPU): same result as ComfyUI's own
forward, the Triton kernel itself (interpreter) inside the model, per-call fallbacks said in the telemetry,
unknown ComfyUI forwards left alone, object patches removed when switched off or unpatched.
"""

from __future__ import annotations

import logging
import os

import pytest
import tiny_wan as tw
import torch

if not torch.cuda.is_available():  # before ComfyUI (which imports triton) is imported by the fixtures
    os.environ.setdefault("TRITON_INTERPRET", "1")
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from test_nodes_common import PACKAGE, last_run, pack, patch_small, sample_big, tiny_models  # noqa: F401

pytestmark = requires_comfy

STEPS = 2
PATCH_KEY = "diffusion_model.blocks.{}.self_attn.forward"


def _prologue_module():
    import importlib

    return importlib.import_module(f"{PACKAGE}.nodes.prologue")


def _sample(comfy, model, variant=tw.WAN21_T2V, batch=1):  # noqa: F811
    return sample_big(comfy, model, variant, batch, steps=STEPS)


_patch, _last = patch_small, last_run


def test_installed_comfyui_forward_is_one_the_prologue_mirrors_and_every_block_gets_it(pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    attn_cls = type(model.get_model_object("diffusion_model").blocks[0].self_attn)
    assert _prologue_module().forward_fingerprint(attn_cls) in _prologue_module().KNOWN_FORWARDS
    patched = _patch(pack, model)
    keys = sorted(k for k, v in patched.object_patches.items() if getattr(v, "_sparseflow", False)
                  and k.endswith(".self_attn.forward"))
    assert keys == [PATCH_KEY.format(i) for i in range(2)]
    assert not any(getattr(v, "_sparseflow", False) for v in model.object_patches.values())
    off = _patch(pack, patched, fuse_qk_norm_rope=False)  # patching again with it off removes them
    assert not any(getattr(v, "_sparseflow", False) and k.endswith(".self_attn.forward")
                   for k, v in off.object_patches.items())


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
    assert tel.prologue == {"fused": STEPS * (2 + vace)}, tel.prologue
    assert len(tel.calls) == STEPS * (2 + vace)
    assert f"QK-norm + RoPE: fused x{STEPS * (2 + vace)}" in tel.summary()
    # unpatched again, the model is ComfyUI's own: same result as before
    again = _sample(comfy, _patch(pack, model, fuse_qk_norm_rope=False), variant, batch)
    torch.testing.assert_close(again, own, rtol=0, atol=0)


def test_triton_prologue_kernel_runs_inside_the_model(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """The Triton kernel (TRITON_INTERPRET=1 on CPU, compiled on CUDA) in place of ComfyUI's norm + RoPE."""
    pytest.importorskip("triton")
    from comfyui_sparseflow.sparseflow import prologue

    mod = _prologue_module()
    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_qk_norm_rope=False))
    calls = []
    real = prologue._triton_fn()
    assert real is not None

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(prologue, "_triton_fn", lambda: counting)
    monkeypatch.setattr(prologue, "triton_reason", lambda x=None: None)
    monkeypatch.setattr(mod, "_prologue_backend", lambda state, x: ("triton", None))
    fused_model = _patch(pack, model)
    out = _sample(comfy, fused_model)
    assert len(calls) == STEPS * 2  # one launch per self-attention call, q and k together
    torch.testing.assert_close(out, own, rtol=1e-4, atol=1e-4)


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


def test_a_comfyui_forward_the_prologue_does_not_know_is_left_alone(pack, tiny_models, monkeypatch,  # noqa: F811
                                                                     caplog):
    mod = _prologue_module()
    monkeypatch.setattr(mod, "KNOWN_FORWARDS", {})
    with caplog.at_level(logging.WARNING, logger="sparseflow.nodes"):
        patched = _patch(pack, tiny_models[tw.WAN21_T2V])
    assert not any(getattr(v, "_sparseflow", False) and k.endswith(".self_attn.forward")
                   for k, v in patched.object_patches.items())
    assert "is not one SparseFlow's fused prologue mirrors" in caplog.text
    assert "QK-norm + RoPE stay ComfyUI's own" in caplog.text


def test_a_patched_forward_call_with_extra_arguments_or_no_state_goes_to_comfyuis_forward(pack):  # noqa: F811
    """nodes.prologue.call_state: the guard both patched forwards (QK prologue, block norms) ask first."""
    import importlib

    pro = _prologue_module()
    state_mod = importlib.import_module(f"{PACKAGE}.nodes.state")
    state = object.__new__(state_mod.SparseFlowState)
    to = {state_mod.SPARSEFLOW_KEY: state}
    assert pro.call_state(to, {}) == (state, None)
    assert pro.call_state(to, {"b": 1, "a": 2}) == (state, "unexpected arguments ['a', 'b']")
    assert pro.call_state({}, {}) == (None, "no SparseFlow state in transformer_options")
    assert pro.call_state(None, {}) == (None, "no SparseFlow state in transformer_options")
    assert pro.call_state({state_mod.SPARSEFLOW_KEY: "not a state"}, {})[1] == (
        "no SparseFlow state in transformer_options")
