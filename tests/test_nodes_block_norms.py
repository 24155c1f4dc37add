"""Fused block adds + norms inside real ComfyUI Wan models (CPU), on the ComfyUI tree under test: the block patch runs
the matched version's block body with ComfyUI's result, the Triton kernel itself (interpreter) inside the model,
newest ComfyUI's attn1/attn2 patches still called where ComfyUI calls them, per-call fallbacks said in the telemetry,
a block no version matches left alone.
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


def _sample(comfy, model, variant=tw.WAN21_T2V, batch=1):  # noqa: F811
    return sample_big(comfy, model, variant, batch, steps=STEPS)


_patch, _last = patch_small, last_run


def _reference_positional(x, y, gate, norm, weight, bias, shift, scale, eps, out=None):
    from comfyui_sparseflow.sparseflow.residual_norm import add_norm_reference

    s, n = add_norm_reference(x, y, gate, norm=norm, weight=weight, bias=bias, shift=shift, scale=scale, eps=eps)
    if out is not None:
        out.copy_(s)
        s = out
    return s, n


def _triton_is_comfyuis_ops(monkeypatch):
    """The block kernel's "triton" path stood in for by ComfyUI's ops (the CPU has no kernel to run)."""
    from comfyui_sparseflow.sparseflow import residual_norm

    monkeypatch.setattr(residual_norm, "triton_reason", lambda x=None: None)
    monkeypatch.setattr(residual_norm, "_triton_fn", lambda: _reference_positional)


@pytest.mark.parametrize("variant,batch", [(tw.WAN21_T2V, 2), (tw.WAN21_I2V, 1), (tw.WAN22_TI2V_5B, 1),
                                           (tw.WAN21_VACE, 1)])
def test_fused_blocks_give_comfyuis_result_and_are_counted(comfy, pack, tiny_models, variant, batch):  # noqa: F811
    model = tiny_models[variant]
    own_model = _patch(pack, model, fuse_block_norms=False)
    own = _sample(comfy, own_model, variant, batch)
    assert _last(pack, own_model).block_norms == {}  # off: ComfyUI's own block, nothing noted
    fused_model = _patch(pack, model)
    fused = _sample(comfy, fused_model, variant, batch)
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-5)
    tel = _last(pack, fused_model)
    assert tel.block_norms == {"reference": STEPS * 2}, tel.block_norms  # main blocks only; VACE blocks keep theirs
    assert f"block adds + norms: SparseFlow's PyTorch reference (no kernel) x{STEPS * 2}" in tel.summary()
    assert not any(getattr(v, "_sparseflow", False) and k.endswith("blocks.0.forward")
                   for k, v in fused_model.object_patches.items())  # a replace patch, no block object patch


@pytest.mark.parametrize("pieces", [False, True], ids=["ffn_whole", "ffn_in_pieces"])
def test_triton_block_kernel_runs_inside_the_model(comfy, pack, tiny_models, monkeypatch, pieces):  # noqa: F811
    """The Triton kernel (TRITON_INTERPRET=1 on CPU, compiled on CUDA) in place of ComfyUI's adds + norms; with the
    FFN in pieces, each piece's gated add is the kernel's too, written into the stream in place."""
    pytest.importorskip("triton")
    from comfyui_sparseflow.sparseflow import ffn, residual_norm

    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_block_norms=False))
    calls = []
    real = residual_norm._triton_fn()
    assert real is not None

    def counting(*args, **kw):
        calls.append((args[1] is not None, args[3], "out" in kw))  # (has a module output, norm, in place)
        return real(*args, **kw)

    monkeypatch.setattr(residual_norm, "_triton_fn", lambda: counting)
    monkeypatch.setattr(residual_norm, "triton_reason", lambda x=None: None)
    if pieces:
        monkeypatch.setattr(ffn, "CHUNK_MIN_BYTES", 0)
    patched = _patch(pack, model, backend="auto")
    out = _sample(comfy, patched)
    tel = _last(pack, patched)
    # per block call: norm1, add + norm3, add + norm2, add (or one add into the stream per FFN piece)
    if pieces:
        (n,) = tel.ffn_pieces  # one piece count for every block call
        assert n >= 2
        last = [(True, False, True)] * n
    else:
        assert tel.ffn_pieces == {}
        last = [(True, False, False)]
    assert calls == ([(False, True, False), (True, True, False), (True, True, False)] + last) * (STEPS * 2)
    torch.testing.assert_close(out, own, rtol=1e-4, atol=1e-4)
    gelu_cpu = "FFN GELU unfused: input on cpu (the GELU epilogue is cuBLASLt's)"
    assert tel.block_norms == {"fused": STEPS * 2, gelu_cpu: STEPS * 2}
    assert f"block adds + norms: fused x{STEPS * 2}" in tel.summary()


def test_auto_backend_on_cpu_keeps_comfyuis_block_and_says_why(comfy, pack, tiny_models, caplog):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour: on CUDA the auto backend fuses")
    model = tiny_models[tw.WAN21_T2V]
    own = _sample(comfy, _patch(pack, model, fuse_block_norms=False, backend="auto"))
    patched = _patch(pack, model, backend="auto")
    reason = "fused block norms cannot run: no CUDA device"
    importlib.import_module(f"{PACKAGE}.nodes.report")._logged.discard(("block_norms", reason))  # once a process
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
    _triton_is_comfyuis_ops(monkeypatch)
    outputs = []

    def reason(x, y):  # per block the outputs of self_attn, cross_attn, ffn come in that order: the FFN's refused
        outputs.append(y.shape)
        if len(outputs) % 3 == 0:
            return "test: FFN output refused"
        return real_reason(x, y)

    monkeypatch.setattr(residual_norm, "output_reason", reason)
    patched = _patch(pack, model, backend="auto")
    out = _sample(comfy, patched)
    torch.testing.assert_close(out, own, rtol=1e-5, atol=1e-5)
    gelu_cpu = "FFN GELU unfused: input on cpu (the GELU epilogue is cuBLASLt's)"  # said, like every fallback
    assert _last(pack, patched).block_norms == {"one add: test: FFN output refused": STEPS * 2,
                                                gelu_cpu: STEPS * 2, "fused": STEPS * 2}


def test_attn1_and_attn2_patches_run_where_this_comfyui_runs_them(comfy, pack, tiny_models):  # noqa: F811
    """Newest ComfyUI calls attn1_patch after self-attention and attn2_patch after the cross-attention add; 0.3.64's
    Wan calls neither. With both fusions on, the patches see what ComfyUI's own forwards give them."""
    newest = expected_forward(comfy).NAME.startswith("ComfyUI newest")

    def patched_with_hooks(**kw):
        seen = {"attn1": [], "attn2": []}
        m = _patch(pack, tiny_models[tw.WAN21_T2V], **kw)
        m.set_model_attn1_patch(lambda a: seen["attn1"].append(tuple(a["q"].shape)) or a["x"] * 1.5)
        m.set_model_attn2_patch(lambda a: seen["attn2"].append(tuple(a["x"].shape)) or a["x"] * 0.75)
        return m, seen

    own_model, own_seen = patched_with_hooks(fuse_block_norms=False, fuse_qk_norm_rope=False)
    own = _sample(comfy, own_model)
    fused_model, fused_seen = patched_with_hooks()
    fused = _sample(comfy, fused_model)
    calls = STEPS * 2 if newest else 0
    assert len(own_seen["attn1"]) == len(own_seen["attn2"]) == calls
    assert fused_seen == own_seen  # same calls, same shapes (q as (b, s, n, d))
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-5)
    tel = _last(pack, fused_model)
    assert tel.block_norms == {"reference": STEPS * 2} and tel.prologue == {"reference": STEPS * 2}


def test_a_comfyui_block_that_does_something_else_is_left_alone(comfy, pack, monkeypatch, caplog,  # noqa: F811
                                                                tmp_path):
    model = tw.load_tiny_wan(comfy, tw.WAN21_T2V, tmp_path)  # never patched: no forward bound on its instances
    block_cls = type(model.get_model_object("diffusion_model").blocks[0])
    real_forward = block_cls.forward

    def changed(self, x, *args, **kwargs):  # a ComfyUI update that adds to the residual stream
        return real_forward(self, x, *args, **kwargs) + 0.25

    monkeypatch.setattr(block_cls, "forward", changed)
    fresh_forward_checks(monkeypatch)
    own = _sample(comfy, _patch(pack, model, fuse_block_norms=False))
    patched = _patch(pack, model)
    with caplog.at_level(logging.WARNING, logger="sparseflow.nodes"):
        out = _sample(comfy, patched)
    torch.testing.assert_close(out, own, rtol=0, atol=0)
    assert "block adds + norms stay ComfyUI's own: ComfyUI's block forward does what no supported" in caplog.text
    tel = _last(pack, patched)
    (reason, count), = tel.block_norms.items()
    assert count == STEPS * 2 and "another result" in reason
    assert tel.prologue == {"reference": STEPS * 2}  # the prologue's own check still matches: it stays fused


def test_bench_breakdown_times_the_fused_ffn_as_the_ffn(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """bench/e2e/timing.py: with the GELU epilogue the `ffn` module's forward never runs; its time must still be
    the FFN's, not "rest" (the GPU path stood in for on the CPU by the same function in PyTorch); on the newest tree
    the attention hook sees containers."""
    import comfy.ldm.wan.model as wan_model
    import torch.nn.functional as F
    from comfyui_sparseflow.sparseflow import ffn

    from bench.e2e.timing import Breakdown

    mod = importlib.import_module(f"{PACKAGE}.nodes.fused_block")
    _triton_is_comfyuis_ops(monkeypatch)
    monkeypatch.setattr(ffn, "linear_gelu_reason", lambda linear, act, x: None)
    used = []

    def gelu_in_torch(x, weight, bias):
        used.append(x.shape)
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")

    monkeypatch.setattr(ffn, "linear_gelu", gelu_in_torch)
    patched = _patch(pack, tiny_models[tw.WAN21_T2V], backend="auto")
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
        assert c["ffn"] > 0 and c["rest"] >= 0 and c["self_attention"] > 0 and c["cross_attention"] > 0, c
    assert mod.ffn_forward.__name__ == "ffn_forward"  # restored on exit


@pytest.mark.parametrize("variant,batch,attn2", [(tw.WAN21_T2V, 2, False), (tw.WAN22_TI2V_5B, 1, False),
                                                 (tw.WAN21_T2V, 1, True)])
def test_a_large_ffn_runs_in_token_pieces_with_comfyuis_result(comfy, pack, tiny_models, monkeypatch,  # noqa: F811
                                                               variant, batch, attn2):
    """Over sparseflow.ffn.CHUNK_MIN_BYTES (here 0: every FFN) the fused block runs the FFN piece by piece and adds
    each piece into the stream: ComfyUI's result, per-token gates (Wan 2.2 5B) and attn2 patches (newest: the stream
    is then the patch's tensor, added into a new one) included."""
    from comfyui_sparseflow.sparseflow import ffn

    model = tiny_models[variant]

    def patched(**kw):
        m = _patch(pack, model, **kw)
        if attn2:
            m.set_model_attn2_patch(lambda a: a["x"] * 0.75)
        return m

    own = _sample(comfy, patched(fuse_block_norms=False), variant, batch)
    monkeypatch.setattr(ffn, "CHUNK_MIN_BYTES", 0)
    fused_model = patched()
    dm = fused_model.get_model_object("diffusion_model")
    rows = []
    handles = [b.ffn[0].register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[:-1])) for b in dm.blocks]
    try:
        fused = _sample(comfy, fused_model, variant, batch)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-5)
    assert rows and all(len(r) == 1 for r in rows)  # (tokens, C) pieces of one batch element, never (B, L, C)
    block = dm.blocks[0]
    per_call = len(ffn.token_chunks(2 * batch, 1, block.self_attn.dim, block.ffn_dim, 4, 0))
    assert per_call >= 2 and len(rows) % len(dm.blocks) == 0 and len(rows) // len(dm.blocks) >= STEPS * per_call
    tel = _last(pack, fused_model)
    assert tel.block_norms == {"reference": STEPS * 2}
    assert tel.ffn_pieces == {per_call: STEPS * 2}  # counted per block call, and said in the summary
    assert f"; FFN in token pieces: {per_call} per block x{STEPS * 2}" in tel.summary()


@pytest.mark.parametrize("fused,global_hook", [(True, False), (False, False), (True, True)])
def test_norm1_output_is_freed_before_the_self_attention_runs(comfy, pack, tiny_models, monkeypatch,  # noqa: F811
                                                              fused, global_hook):
    """With SparseFlow's block body and prologue the block hands norm1's output over (nodes/prologue.py Handoff): it
    is gone once v is projected, before the attention call; ComfyUI's own block keeps it alive (the control), and so
    does SparseFlow's when a global module hook would see the call's arguments (it gets the tensor)."""
    import weakref

    import comfy.ldm.wan.model as wan_model

    m = _patch(pack, tiny_models[tw.WAN21_T2V], fuse_block_norms=fused, fuse_qk_norm_rope=fused)
    dm = m.get_model_object("diffusion_model")
    inputs, alive = [], []
    handles = [b.self_attn.v.register_forward_pre_hook(lambda mod, a: inputs.append(weakref.ref(a[0])))
               for b in dm.blocks]
    real = wan_model.optimized_attention

    probe = importlib.import_module(f"{PACKAGE}.nodes.context").PROBE_KEY

    def attention(q, k, v, *args, **kwargs):
        if inputs:  # the behaviour check's calls (a fresh process checks the forwards in the first model call) skipped
            ref = inputs.pop()
            if not (kwargs.get("transformer_options") or {}).get(probe):
                alive.append(ref() is not None)
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(wan_model, "optimized_attention", attention)
    seen = []
    if global_hook:
        handles.append(torch.nn.modules.module.register_module_forward_pre_hook(
            lambda mod, a: seen.append(type(a[0]).__name__) if mod in [b.self_attn for b in dm.blocks] else None))
    try:
        _sample(comfy, m)
    finally:
        for h in handles:
            h.remove()
    assert len(alive) == STEPS * len(dm.blocks)
    assert not any(alive) if fused and not global_hook else all(alive)
    if global_hook:  # every self-attention call (the behaviour check's too) got the tensor itself
        assert set(seen) == {"Tensor"} and len(seen) >= STEPS * len(dm.blocks)


def test_ffn_in_pieces_off_runs_the_ffn_whole(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    from comfyui_sparseflow.sparseflow import ffn

    monkeypatch.setattr(ffn, "CHUNK_MIN_BYTES", 0)
    m = _patch(pack, tiny_models[tw.WAN21_T2V], ffn_in_pieces=False)
    dm = m.get_model_object("diffusion_model")
    rows = []
    handles = [b.ffn[0].register_forward_pre_hook(lambda mod, a: rows.append(a[0].dim())) for b in dm.blocks]
    try:
        _sample(comfy, m)
    finally:
        for h in handles:
            h.remove()
    assert rows == [3] * (STEPS * len(dm.blocks))
    assert _last(pack, m).ffn_pieces == {} and "FFN in token pieces" not in _last(pack, m).summary()


def test_ffn_piece_hidden_sets_the_piece_count_and_is_checked(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """`ffn_piece_hidden` (streams per piece's hidden tensor) reaches the fused block: larger pieces, fewer of them;
    a value that is not a number > 0 is refused naming the parameter."""
    from comfyui_sparseflow.sparseflow import ffn

    monkeypatch.setattr(ffn, "CHUNK_MIN_BYTES", 0)
    model = tiny_models[tw.WAN21_T2V]
    block = model.get_model_object("diffusion_model").blocks[0]
    dim, ffn_dim = block.self_attn.dim, block.ffn_dim
    counts = {}
    for hidden in (0.25 * ffn_dim / dim, ffn_dim / dim):
        m = _patch(pack, model, ffn_piece_hidden=hidden)
        _sample(comfy, m)
        counts[hidden] = set(_last(pack, m).ffn_pieces)
    assert counts[0.25 * ffn_dim / dim] == {4}  # CFG batch 2: two pieces per batch element
    assert counts[ffn_dim / dim] == {2}  # one piece per batch element
    assert len(ffn.token_chunks(2, 27280, 3072, 14336, 2)) == 4  # Wan 2.2 5B 720p with CFG, the default 1.5
    assert len(ffn.token_chunks(2, 27280, 3072, 14336, 2, hidden_per_stream=1.0)) == 6
    assert len(ffn.token_chunks(2, 75600, 5120, 13824, 2)) == 2  # 14B 720p: one piece per batch element
    for bad in (0, -1.0, True, "2"):
        with pytest.raises(ValueError, match="ffn_piece_hidden"):
            _patch(pack, model, ffn_piece_hidden=bad)


def test_ffn_pieces_with_an_output_of_another_dtype_run_the_ffn_whole_as_comfyui_adds(pack, monkeypatch):  # noqa: F811
    """An FFN whose output is not the stream's dtype: the first piece shows it, nothing is written, the FFN runs whole
    and the add is ComfyUI's (which promotes), said in the block's fallbacks."""
    from comfyui_sparseflow.sparseflow import ffn

    mod = importlib.import_module(f"{PACKAGE}.nodes.fused_block")
    monkeypatch.setattr(ffn, "CHUNK_MIN_BYTES", 0)
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(24, 8))
    block = torch.nn.Module()
    block.ffn, block.ffn_dim = seq.double(), 24
    x, h, gate = torch.randn(2, 10, 8), torch.randn(2, 10, 8), torch.randn(2, 1, 8)
    x0 = x.clone()
    calls = []
    real = mod.ffn_forward
    monkeypatch.setattr(mod, "ffn_forward", lambda s, t, b, f: calls.append(t.shape) or real(s, t.double(), b, f))
    ops = mod.BlockOps("reference", 1e-6, 1e-6, None)
    out = ops.feed_forward(block, x, h, gate, own_stream=True)
    assert torch.equal(x, x0)  # nothing written into the stream
    assert calls[0] == (ffn.token_chunks(2, 10, 8, 24, 4, 0)[0].stop,) + (8,) and calls[-1] == (2, 10, 8)
    torch.testing.assert_close(out, torch.addcmul(x0, seq(h.double()), gate))
    assert out.dtype == torch.float64 and ops.fallbacks and ops.fallbacks[0].startswith("FFN whole: ")
