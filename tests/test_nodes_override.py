"""SparseFlow's attention override in real ComfyUI (CPU), on the tree under test: newest ComfyUI's tensor containers,
composition with core "Model Sparse Attention" (its stand-in, bench/e2e/overrides.py: core's node cannot be imported
on these trees) and any other override in either order without the chain growing, dense steps to the real dense path.
"""

from __future__ import annotations

import pytest
import tiny_wan as tw
import torch
import torch.nn.functional as F
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow.schedule import schedule_preset
from test_nodes_common import last_run, pack, patch_small, sample_big, tiny_models  # noqa: F401

from bench.e2e.overrides import apply_core_sparse_attention, install_core_override

pytestmark = requires_comfy

OVERRIDE = "optimized_attention_override"
STEPS = 4
LAYERS = 2


class _Kitchen:
    """comfy_kitchen's sol_attn stood in for by exact attention on BTHD tensors; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def sol_attn_is_available(self, device) -> bool:
        return True

    def sol_attn(self, q, k, v, tau, scale, sink_blocks, sink_q, topk_ratio, token_aug):
        self.calls += 1
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def _core(model, kitchen, **kw):
    kw.setdefault("start_percent", 0.5)  # dense in the first half of the run: both nodes get self-attention calls
    return apply_core_sparse_attention(model, kitchen, min_tokens=0, devices=("cpu", "cuda"), **kw)


def _depth(pack, override) -> int:  # noqa: F811
    return len(pack.override.chain(override))


def _depth_recorder(comfy, model, depths):  # noqa: F811
    def wrapper(executor, *args, **kwargs):
        depths.append(args[5].get(OVERRIDE))  # transformer_options, the 6th positional argument
        return executor(*args, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_depth", wrapper)


@pytest.mark.parametrize("order", ["sparseflow_then_core", "core_then_sparseflow"])
def test_stacked_with_core_sparse_attention_the_chain_keeps_its_depth_and_each_call_is_handled_once(
        comfy, pack, tiny_models, order):  # noqa: F811
    base, kitchen = tiny_models[tw.WAN21_T2V], _Kitchen()
    quality = schedule_preset("quality")  # sparse early, dense late
    if order == "sparseflow_then_core":
        model, core = _core(patch_small(pack, base, schedule=quality), kitchen)
    else:
        core_model, core = _core(base, kitchen)
        model = patch_small(pack, core_model, schedule=quality)
    seen = []
    _depth_recorder(comfy, model, seen)
    sample_big(comfy, model, steps=STEPS)
    depths = [_depth(pack, o) for o in seen]
    assert len(depths) == STEPS and len(set(depths)) == 1 and depths[0] <= 3, depths
    # every self-attention call is run once: by core's kernel or by SparseFlow (its dense steps never reach core's);
    # on 0.3.64 (no re-install: no model_options in ON_PREPARE_STATE) SparseFlow on top takes them all
    tel = last_run(pack, model)
    assert len(tel.calls) > 0 and kitchen.calls + len(tel.calls) == STEPS * LAYERS
    assert kitchen.calls > 0 or (order == "core_then_sparseflow" and not hasattr(comfy.attention,
                                                                                  "AttentionTensorContainer"))
    # the probe: ON_PREPARE_STATE with the live model options, 50 times (newest ComfyUI passes them)
    live = comfy.model_patcher.create_model_options_clone(model.model_options)
    callbacks = model.get_all_callbacks(comfy.patcher_extension.CallbacksMP.ON_PREPARE_STATE)
    per_call = []
    for _ in range(50):
        for callback in callbacks:
            callback(model, None, live)
        per_call.append(_depth(pack, live["transformer_options"][OVERRIDE]))
    assert len(set(per_call)) == 1 and per_call[0] <= 3, per_call


def test_sparseflows_dense_steps_skip_a_sparse_override_below_it(comfy, pack, tiny_models):  # noqa: F811
    """SparseFlow on top of core's override (as installed, no re-install): the dense schedule's calls go to
    ComfyUI's attention, not into core's sparse kernel; cross-attention still goes through core's override."""
    base, kitchen = tiny_models[tw.WAN21_T2V], _Kitchen()
    below = base.clone()
    core = apply_core_sparse_attention(base, kitchen, start_percent=0.0, min_tokens=0, devices=("cpu", "cuda"))[1]
    install_core_override(core, below.model_options["transformer_options"])
    model = patch_small(pack, below, schedule=schedule_preset("dense"))
    out = sample_big(comfy, model, steps=STEPS)
    assert kitchen.calls == 0
    tel = last_run(pack, model)
    assert len(tel.calls) == STEPS * LAYERS and tel.backends() == ["comfyui"]
    own = sample_big(comfy, patch_small(pack, base, schedule=schedule_preset("dense")), steps=STEPS)
    torch.testing.assert_close(out, own, rtol=0, atol=0)


def test_another_override_applied_after_sparseflow_is_chained_once(comfy, pack, tiny_models):  # noqa: F811
    """An attention override that replaces the hook after SparseFlow (as ModelAttentionBackend does): SparseFlow
    puts itself on top once and hands it every call it does not take; the chain keeps its depth."""
    model = patch_small(pack, tiny_models[tw.WAN21_T2V])
    calls = []

    def backend(func, q, k, v, heads, **kwargs):
        calls.append(1)
        return func(q, k, v, heads=heads, **kwargs)

    model.model_options["transformer_options"][OVERRIDE] = backend
    seen = []
    _depth_recorder(comfy, model, seen)
    sample_big(comfy, model, steps=STEPS)
    assert {_depth(pack, o) for o in seen} <= {1, 2}  # before and after SparseFlow's wrapper put itself on top
    tel = last_run(pack, model)
    assert len(tel.calls) == STEPS * LAYERS and len(calls) == tel.passthrough["cross-attention"]


def test_the_override_takes_containers_where_comfyui_passes_them(comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """Newest ComfyUI hands containers to an override's container_function (0.3.64 passes tensors): SparseFlow reads
    them without taking, takes those it runs, passes the rest on as containers, and gives the tensor protocol's
    result bit for bit; every container is consumed when the call returns (nothing keeps q/k/v alive)."""
    newest = hasattr(comfy.attention, "AttentionTensorContainer")
    cls = pack.override.SparseFlowOverride
    real = cls.container_function
    seen = []

    def spy(self, q, k, v, *args, **kwargs):
        out = real(self, q, k, v, *args, **kwargs)
        seen.append((type(q).__name__, q.tensor is None and k.tensor is None and v.tensor is None))
        return out

    monkeypatch.setattr(cls, "container_function", spy)
    model = patch_small(pack, tiny_models[tw.WAN21_T2V])
    out = sample_big(comfy, model, steps=2)
    assert bool(seen) == newest
    assert all(kind == "AttentionTensorContainer" and consumed for kind, consumed in seen), seen
    assert len(seen) in (0, 2 * LAYERS * 2)  # self + cross per block and step
    tel = last_run(pack, model)
    assert len(tel.calls) == 2 * LAYERS

    tensors = patch_small(pack, tiny_models[tw.WAN21_T2V])  # in front: an override without container_function
    inner = tensors.model_options["transformer_options"][OVERRIDE]

    def plain(func, *args, **kwargs):
        return inner(func, *args, **kwargs)

    plain._sparseflow, plain._sparseflow_previous = True, None
    tensors.model_options["transformer_options"][OVERRIDE] = plain
    torch.testing.assert_close(sample_big(comfy, tensors, steps=2), out, rtol=0, atol=0)


def test_a_container_aware_override_below_gets_the_calls_sparseflow_passes_as_containers(  # noqa: F811
        comfy, pack, tiny_models):  # noqa: F811
    newest = hasattr(comfy.attention, "AttentionTensorContainer")
    kinds = []

    def backend(func, q, k, v, heads, **kwargs):
        kinds.append("tensors")
        return func(q, k, v, heads=heads, **kwargs)

    def backend_containers(q, k, v, heads=None, **kwargs):
        kinds.append("containers")
        return comfy.attention.optimized_attention(q, k, v, heads=heads, **kwargs)

    backend.container_function = backend_containers
    below = tiny_models[tw.WAN21_T2V].clone()
    below.model_options["transformer_options"][OVERRIDE] = backend
    model = patch_small(pack, below)
    sample_big(comfy, model, steps=2)
    assert kinds == ["containers" if newest else "tensors"] * (2 * LAYERS)  # the cross-attention calls


def test_a_gpu_that_cannot_launch_the_kernel_runs_comfyuis_attention_and_says_why(
        comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """KernelLaunchError (every launch config needs more shared memory than the device allows): each such call goes
    to ComfyUI's attention, and the run summary names the sizes; the result equals the unpatched model's."""
    from comfyui_sparseflow.sparseflow.inputs import KernelLaunchError

    why = "needs 116 KiB shared memory, the device allows 99 KiB"

    def cannot_launch(*args, **kwargs):
        raise KernelLaunchError(f"the fused kernel cannot launch on a test GPU: {why}")

    monkeypatch.setattr(pack.override, "_run_operator", cannot_launch)
    base = tiny_models[tw.WAN21_T2V]
    patched = patch_small(pack, base, fuse_qk_norm_rope=False, fuse_block_norms=False)
    out, ref = sample_big(comfy, patched), sample_big(comfy, base)
    summary = pack.run.last_run(patched).summary
    assert f"kernel cannot launch here: the fused kernel cannot launch on a test GPU: {why}" in summary
    assert torch.equal(out, ref)
