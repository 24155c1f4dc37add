"""A SparseFlow-patched model under ComfyUI's own TorchCompileModel (set_torch_compile_wrapper), on CPU.

The patch must keep working when the diffusion model is compiled: same result as the eager patched model, and
SparseFlow's telemetry still sees every self-attention call (the override runs inside the compiled forward).
"""

from __future__ import annotations

import time

import tiny_wan as tw
import torch
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.schedule import schedule_preset
from test_nodes_common import FRAMES, HEIGHT, WIDTH, pack, tiny_models  # noqa: F401

pytestmark = requires_comfy


def _sample(comfy, model):  # noqa: F811
    latent = tw.empty_latent(tw.WAN21_T2V, FRAMES, HEIGHT, WIDTH)
    positive, negative = tw.make_conditioning(comfy, tw.WAN21_T2V, latent, seed=0)
    return tw.sample_tiny(comfy, model, latent, positive, negative, steps=2, cfg=3.0, seed=0)


def test_torch_compile_model_node_keeps_a_patched_model_working(comfy, pack, tiny_models):  # noqa: F811
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    torch._dynamo.reset()
    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], schedule=schedule_preset("balanced"),
                                          routing=routing_preset("alternating", 2, 2), backend="reference", block=64)
    eager = _sample(comfy, patched)
    eager_calls = len(pack.run.last_run(patched).telemetry.calls)
    compiled = TorchCompileModel.execute(patched, "inductor").result[0]
    t0 = time.perf_counter()
    out = _sample(comfy, compiled)
    print(f"\nTorchCompileModel (inductor, CPU) on the patched tiny Wan: {time.perf_counter() - t0:.1f} s with compile")
    last = pack.run.last_run(compiled).telemetry
    assert len(last.calls) == eager_calls > 0
    assert last.backends() == ["reference"]
    # under compile the per-call counters are not written (a write would put them under the graph's guards):
    # the records come from each model call's plans, made outside the trace
    assert last.prologue == {} and last.passthrough == {}
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


def _pin_free_memory(comfy, monkeypatch):  # noqa: F811
    """ComfyUI's CPU attention (sub-quadratic, the one the calls SparseFlow passes on reach here) reads the free
    host memory and dynamo guards on the number it got, so a run recompiles whenever free memory moved (seen in CI
    as {1: 18, 3: 19} on either tree, depending on the machine's load). On a GPU ComfyUI runs PyTorch attention,
    which reads none. Pinned to what it was at the start, so a recompile here is SparseFlow's."""
    real = comfy.model_management.get_free_memory
    pinned = real(torch.device("cpu"), True)

    def get_free_memory(dev=None, torch_free_too=False):
        return pinned if torch_free_too else pinned[0]

    monkeypatch.setattr(comfy.model_management, "get_free_memory", get_free_memory)


def _graphs_per_run(comfy, compiled, runs, before_each=lambda: None) -> dict:  # noqa: F811
    """{steps: dynamo's unique graphs} for a fresh-compiled sampling run of each length in `runs`."""
    from torch._dynamo.utils import counters, guard_failures

    latent = tw.empty_latent(tw.WAN21_T2V, 4, 16, 16)
    positive, negative = tw.make_conditioning(comfy, tw.WAN21_T2V, latent, seed=0)
    graphs = {}
    for steps in runs:
        before_each()
        torch._dynamo.reset()
        counters.clear()
        guard_failures.clear()
        tw.sample_tiny(comfy, compiled, latent, positive, negative, steps=steps, cfg=3.0, seed=0)
        graphs[steps] = counters["stats"]["unique_graphs"]
        # why dynamo recompiled, if it did: printed with the test's output when an assertion below fails
        for code, reasons in guard_failures.items():
            print(f"recompiled {getattr(code, 'co_name', code)} ({steps} steps): {reasons}")
    return graphs


def test_compiled_patched_model_does_not_recompile_when_the_schedule_window_changes(  # noqa: F811
        comfy, pack, tiny_models, monkeypatch):  # noqa: F811
    """The plan reaches the op as a tensor made per model call, so window 0 -> 1 -> 2 reuses one graph."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    from comfyui_sparseflow.sparseflow.schedule import describe

    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], schedule=schedule_preset("balanced"),
                                          routing=routing_preset("alternating", 2, 2), backend="reference", block=64)
    compiled = TorchCompileModel.execute(patched, "inductor").result[0]
    _pin_free_memory(comfy, monkeypatch)
    graphs = _graphs_per_run(comfy, compiled, (1, 6))
    windows = {s.window for s in describe(schedule_preset("balanced"), 6)}
    assert windows == {0, 1, 2}
    last = pack.run.last_run(compiled).telemetry
    assert sorted({c.window for c in last.calls}) == [0, 1, 2] and len(last.calls) == 6 * 2
    assert graphs[6] == graphs[1], f"recompiled as the window changed: {graphs}"


def test_compiled_model_does_not_recompile_when_the_prologue_kernel_is_first_loaded(comfy, pack, tiny_models,  # noqa: F811
                                                                                   monkeypatch):
    """The prologue kernel's first import changes a cache that the traced forward reads; the per-call context
    does it before the trace, so the second model call reuses the first call's graph (seen on the GPU as one
    22 s recompile at step 1 before the context did it)."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    from comfyui_sparseflow.sparseflow import prologue

    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], schedule=schedule_preset("balanced"),
                                          routing=routing_preset("alternating", 2, 2), backend="auto", block=64)
    compiled = TorchCompileModel.execute(patched, "inductor").result[0]
    _pin_free_memory(comfy, monkeypatch)
    # as in a fresh process before every run: nothing imported yet
    graphs = _graphs_per_run(comfy, compiled, (1, 3),
                             before_each=lambda: monkeypatch.setattr(prologue, "_triton_import", {}))
    assert graphs[3] == graphs[1], f"recompiled after the first call: {graphs}"
