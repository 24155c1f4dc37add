"""Fused block adds + norms inside real ComfyUI Wan models (CPU): same result as ComfyUI's own block forward,
the Triton kernel itself (interpreter) inside the model, per-call fallbacks said in the telemetry, unknown
ComfyUI forwards left alone, object patches removed when switched off.
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
from test_nodes_common import PACKAGE, last_run, pack, patch_small, sample_big, tiny_models  # noqa: F401

pytestmark = requires_comfy

STEPS = 2
BLOCK_KEY = "diffusion_model.blocks.{}.forward"
ATTN_KEY = "diffusion_model.blocks.{}.self_attn.forward"


def _block_module():
    return importlib.import_module(f"{PACKAGE}.nodes.fused_block")


def _sample(comfy, model, variant=tw.WAN21_T2V, batch=1):  # noqa: F811
    return sample_big(comfy, model, variant, batch, steps=STEPS)


_patch, _last = patch_small, last_run


def _sparseflow_keys(model) -> list[str]:
    return sorted(k for k, v in model.object_patches.items() if getattr(v, "_sparseflow", False))


def test_installed_comfyui_block_is_mirrored_and_each_option_sets_its_own_patches(pack, tiny_models):  # noqa: F811
    model = tiny_models[tw.WAN21_T2V]
    block_cls = type(model.get_model_object("diffusion_model").blocks[0])
    fingerprint = importlib.import_module(f"{PACKAGE}.nodes.prologue").forward_fingerprint
    assert fingerprint(block_cls) in _block_module().KNOWN_BLOCK_FORWARDS
    both = _patch(pack, model)
    assert _sparseflow_keys(both) == sorted([BLOCK_KEY.format(i) for i in range(2)]
                                            + [ATTN_KEY.format(i) for i in range(2)])
    assert not _sparseflow_keys(model)
    blocks_only = _patch(pack, both, fuse_qk_norm_rope=False)
    assert _sparseflow_keys(blocks_only) == [BLOCK_KEY.format(i) for i in range(2)]
    attn_only = _patch(pack, both, fuse_block_norms=False)
    assert _sparseflow_keys(attn_only) == [ATTN_KEY.format(i) for i in range(2)]
    assert not _sparseflow_keys(_patch(pack, both, fuse_block_norms=False, fuse_qk_norm_rope=False))


@pytest.mark.parametrize("variant,batch", [(tw.WAN21_T2V, 2), (tw.WAN21_I2V, 1), (tw.WAN22_TI2V_5B, 1),
                                           (tw.WAN21_VACE, 1)])
def test_fused_blocks_give_comfyuis_result_and_are_counted(comfy, pack, tiny_models, variant, batch):  # noqa: F811
    model = tiny_models[variant]
    own = _sample(comfy, _patch(pack, model, fuse_block_norms=False), variant, batch)
    fused_model = _patch(pack, model)
    fused = _sample(comfy, fused_model, variant, batch)
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-5)
    tel = _last(pack, fused_model)
    assert tel.block_norms == {"fused": STEPS * 2}, tel.block_norms  # main blocks only; VACE blocks keep theirs
    assert f"block adds + norms: fused x{STEPS * 2}" in tel.summary()


def test_triton_block_kernel_runs_inside_the_model(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """The Triton kernel (TRITON_INTERPRET=1 on CPU, compiled on CUDA) in place of ComfyUI's adds + norms."""
    pytest.importorskip("triton")
    from comfyui_sparseflow.sparseflow import residual_norm

    mod = _block_module()
    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_block_norms=False))
    calls = []
    real = residual_norm._triton_fn()
    assert real is not None

    def counting(*args):
        calls.append((args[1] is not None, args[3]))  # (has a module output, norm)
        return real(*args)

    monkeypatch.setattr(residual_norm, "_triton_fn", lambda: counting)
    monkeypatch.setattr(mod, "_backend", lambda state, x: ("triton", None))
    out = _sample(comfy, _patch(pack, model))
    # per block call: norm1, add + norm3, add + norm2, add: four launches
    assert calls == [(False, True), (True, True), (True, True), (True, False)] * (STEPS * 2)
    torch.testing.assert_close(out, own, rtol=1e-4, atol=1e-4)


def test_auto_backend_on_cpu_keeps_comfyuis_block_and_says_why(comfy, pack, tiny_models, caplog):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour: on CUDA the auto backend fuses")
    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_block_norms=False, backend="auto"))
    patched = _patch(pack, model, backend="auto")
    reason = "fused block norms cannot run: no CUDA device"
    importlib.import_module(f"{PACKAGE}.nodes.state")._logged.discard(("block_norms", reason))  # once a process
    with caplog.at_level(logging.INFO, logger="sparseflow.nodes"):
        out = _sample(comfy, patched)
    torch.testing.assert_close(out, own, rtol=0, atol=0)
    assert _last(pack, patched).block_norms == {reason: STEPS * 2}
    assert f"block adds + norms: ComfyUI's own ({reason}) x4" in _last(pack, patched).summary()
    assert "block adds + norms stay ComfyUI's own here" in caplog.text


def test_a_module_output_the_kernel_does_not_take_runs_comfyuis_ops_for_that_add(comfy, pack, tiny_models,  # noqa: F811
                                                                                  monkeypatch):
    from comfyui_sparseflow.sparseflow import residual_norm

    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_block_norms=False))
    real_reason = residual_norm.output_reason
    mod = _block_module()
    monkeypatch.setattr(mod, "_backend", lambda state, x: ("triton", None))
    monkeypatch.setattr(residual_norm, "_triton_fn", lambda: _reference_positional)  # "triton" = ComfyUI's ops
    outputs = []

    def reason(x, y):  # per block the outputs of self_attn, cross_attn, ffn come in that order: the FFN's refused
        outputs.append(y.shape)
        if len(outputs) % 3 == 0:
            return "test: FFN output refused"
        return real_reason(x, y)

    monkeypatch.setattr(residual_norm, "output_reason", reason)
    patched = _patch(pack, model)
    out = _sample(comfy, patched)
    torch.testing.assert_close(out, own, rtol=1e-5, atol=1e-5)
    gelu_cpu = "FFN GELU unfused: input on cpu (the GELU epilogue is cuBLASLt's)"  # said, like every fallback
    assert _last(pack, patched).block_norms == {"one add: test: FFN output refused": STEPS * 2,
                                                gelu_cpu: STEPS * 2, "fused": STEPS * 2}


def _reference_positional(x, y, gate, norm, weight, bias, shift, scale, eps):
    from comfyui_sparseflow.sparseflow.residual_norm import add_norm_reference

    return add_norm_reference(x, y, gate, norm=norm, weight=weight, bias=bias, shift=shift, scale=scale, eps=eps)


def test_a_comfyui_block_sparseflow_does_not_know_is_left_alone(pack, tiny_models, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(_block_module(), "KNOWN_BLOCK_FORWARDS", {})
    with caplog.at_level(logging.WARNING, logger="sparseflow.nodes"):
        patched = _patch(pack, tiny_models[tw.WAN21_T2V])
    assert _sparseflow_keys(patched) == [ATTN_KEY.format(i) for i in range(2)]  # the prologue is still fused
    assert "is not one SparseFlow's fused block norms mirror" in caplog.text
    assert "block adds + norms stay ComfyUI's own" in caplog.text


def test_bench_breakdown_times_the_fused_ffn_as_the_ffn(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """bench/e2e/timing.py: with the GELU epilogue the `ffn` module's forward never runs; its time must still be
    the FFN's, not "rest" (the GPU path stood in for on the CPU by the same function in PyTorch)."""
    import comfy.ldm.wan.model as wan_model
    import torch.nn.functional as F
    from comfyui_sparseflow.sparseflow import ffn, residual_norm

    from bench.e2e.timing import Breakdown

    mod = _block_module()
    monkeypatch.setattr(mod, "_backend", lambda state, x: ("triton", None))
    monkeypatch.setattr(residual_norm, "_triton_fn", lambda: _reference_positional)
    monkeypatch.setattr(ffn, "linear_gelu_reason", lambda linear, act, x: None)
    used = []

    def gelu_in_torch(x, weight, bias):
        used.append(x.shape)
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")

    monkeypatch.setattr(ffn, "linear_gelu", gelu_in_torch)
    patched = _patch(pack, tiny_models[tw.WAN21_T2V])
    dm = patched.get_model_object("diffusion_model")
    module_calls = []
    handles = [b.ffn.register_forward_hook(lambda m, a, o: module_calls.append(1)) for b in dm.blocks]
    try:
        with Breakdown(dm, wan_model, cuda=False, fused_block_module=mod) as bd:
            _sample(comfy, patched)
    finally:
        for h in handles:
            h.remove()
    assert used and not module_calls  # the fused path ran and never called the ffn module
    calls = bd.per_call()
    assert len(calls) == STEPS
    for c in calls:
        assert c["ffn"] > 0 and c["rest"] >= 0, c
    assert mod.ffn_forward.__name__ == "ffn_forward"  # restored on exit
