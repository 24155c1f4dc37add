"""Shared set-up of the node tests: import this repository as the package ComfyUI would load, plus tiny models.

ComfyUI's root has a top-level `nodes` module, so our `nodes/` package is reached as `comfyui_sparseflow.nodes`
(the repo root imported as a package under that name, as ComfyUI imports a custom-node folder). The tests
in this file check the import path itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import tiny_wan as tw
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from pack_package import PACKAGE, REPO, load_pack_package

FRAMES, HEIGHT, WIDTH = 3, 8, 8  # 48 tokens: one 64/128 block
BIG = (4, 16, 16)  # 256 tokens: 4 blocks of 64 over 4 frames, so sparse and linear differ from dense


def load_pack() -> SimpleNamespace:
    """Import the repo root as package `comfyui_sparseflow` (after ComfyUI) and return its node modules."""
    import comfy_env

    comfy_env.import_comfy()
    load_pack_package()
    mods = {name: importlib.import_module(f"{PACKAGE}.nodes.{name}")
            for name in ("types", "config", "context", "decide", "run", "override", "hook", "prologue",
                         "fused_block", "patch", "unpatch", "schedule", "routing", "calibrate", "calibrate_target",
                         "compare", "extension")}
    return SimpleNamespace(**mods)


@pytest.fixture(scope="session")
def pack(comfy) -> SimpleNamespace:  # noqa: F811
    return load_pack()


@pytest.fixture(scope="session")
def tiny_models(comfy, tmp_path_factory) -> dict:  # noqa: F811
    """Each tiny Wan variant loaded once per session through ComfyUI's loader: {variant: ModelPatcher}."""
    directory = tmp_path_factory.mktemp("tiny_wan_nodes")
    return {v: tw.load_tiny_wan(comfy, v, directory) for v in tw.VARIANTS}


def sample_big(comfy, model, variant=tw.WAN21_T2V, batch=1, steps=2):  # noqa: F811
    """Sample a tiny Wan at the BIG latent (4 frames of 16x16) with CFG 3, seed 0; returns the latent."""
    latent = tw.empty_latent(variant, *BIG, batch=batch)
    positive, negative = tw.make_conditioning(comfy, variant, latent, seed=0)
    return tw.sample_tiny(comfy, model, latent, positive, negative, steps=steps, cfg=3.0, seed=0)


def patch_small(pack, model, **kw):  # noqa: F811
    """SparseFlow on a 2x2 tiny Wan with 64-token blocks; routing 'alternating' and the reference backend unless
    given."""
    from comfyui_sparseflow.sparseflow.routing import routing_preset

    kw.setdefault("routing", routing_preset("alternating", 2, 2))
    kw.setdefault("backend", "reference")
    return pack.patch.apply_sparseflow(model, block=64, **kw)


def last_run(pack, model):  # noqa: F811
    """The telemetry of the patched model's last sampling run (None before its first)."""
    report = pack.run.last_run(model)
    return None if report is None else report.telemetry


def expected_forward(comfy) -> ModuleType:  # noqa: F811
    """The version module (nodes/forwards/) that must match the ComfyUI tree under test: newest ComfyUI's Wan forward
    passes q/k/v in AttentionTensorContainers, 0.3.64's does not."""
    from comfyui_sparseflow.nodes.forwards import comfy_0364, comfy_newest

    return comfy_newest if hasattr(comfy.attention, "AttentionTensorContainer") else comfy_0364


def fresh_forward_checks(monkeypatch) -> None:
    """Forget the behaviour check's cached answers for this test (restored after it)."""
    from comfyui_sparseflow.nodes.forwards import probe

    monkeypatch.setattr(probe, "_cache", {})


def model_snapshot(model) -> dict:
    """What patching could change on a ModelPatcher: options (by repr/identity), wrappers, callbacks, patches."""
    def flat(obj, prefix=""):
        out = {}
        if isinstance(obj, dict):
            for k, v in obj.items():
                out.update(flat(v, f"{prefix}/{k!r}"))
        elif isinstance(obj, (list, tuple)):
            out[prefix] = (type(obj).__name__, len(obj), tuple(id(x) for x in obj))
        else:
            out[prefix] = id(obj)
        return out

    return {
        "model_options": flat(model.model_options),
        "wrappers": flat(model.wrappers),
        "callbacks": flat(model.callbacks),
        "patches": flat(model.patches),
        "object_patches": flat(model.object_patches),
        "model": id(model.model),
    }


pytestmark = requires_comfy


def test_pack_imports_as_a_package_beside_comfyuis_own_nodes_module(pack):
    import nodes as comfy_nodes

    assert Path(comfy_nodes.__file__).resolve().parent != REPO  # ComfyUI's nodes.py still wins
    assert pack.patch.__name__ == f"{PACKAGE}.nodes.patch"
    assert isinstance(pack.hook, ModuleType)


def test_extension_lists_the_seven_nodes_and_registers_the_safetensors_only_folder(pack):
    import asyncio

    import folder_paths

    nodes = asyncio.run(pack.extension.SparseFlowExtension().get_node_list())
    ids = [n.GET_SCHEMA().node_id for n in nodes]
    assert ids == ["SparseFlowPatch", "SparseFlowSchedule", "SparseFlowRouting", "SparseFlowCalibrate",
                   "SparseFlowCalibrateToTarget", "SparseFlowSaveRouting", "SparseFlowCompare",
                   "SparseFlowCompareResults"]
    paths, exts = folder_paths.folder_names_and_paths["sparseflow"]
    assert exts == {".safetensors"}
    assert paths[0] == str(Path(folder_paths.models_dir) / "sparseflow")


def test_every_node_input_has_a_tooltip_and_every_widget_a_default(pack):
    for node in pack.extension.NODES:
        s = node.GET_SCHEMA()
        assert s.category == "model/patch/sparseflow" and s.is_experimental and s.description and s.display_name
        info = node.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, (kind, opts) in info.get(group, {}).items():
                assert opts.get("tooltip"), f"{s.node_id}.{name} has no tooltip"
                if kind in ("INT", "FLOAT"):
                    assert {"default", "min", "max", "step"} <= set(opts), f"{s.node_id}.{name}: {opts}"
                if kind in ("INT", "FLOAT", "STRING", "BOOLEAN") or isinstance(kind, list) or kind == "COMBO":
                    assert "default" in opts, f"{s.node_id}.{name} has no default"


def test_every_node_has_a_help_page(pack):
    for node in pack.extension.NODES:
        page = REPO / "web" / "docs" / f"{node.GET_SCHEMA().node_id}.md"
        assert page.is_file() and page.read_text().startswith(f"# {node.GET_SCHEMA().display_name}")


def test_prepare_state_reinstalls_the_override_in_newest_comfyuis_live_model_options(pack, tiny_models):
    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], backend="reference")
    config = patched.model_options["transformer_options"][pack.config.SPARSEFLOW_KEY]

    def other(func, q, k, v, heads, **kwargs):
        return func(q, k, v, heads=heads, **kwargs)

    live = {"transformer_options": {pack.config.SPARSEFLOW_KEY: config, "optimized_attention_override": other}}
    pack.hook.on_prepare_state(patched, None, live)  # newest: fn(patcher, timestep, model_options)
    installed = live["transformer_options"]["optimized_attention_override"]
    assert installed._sparseflow and installed._sparseflow_previous is other
    pack.hook.on_prepare_state(patched, None)  # 0.3.64: fn(patcher, timestep) must not fail
    pack.hook.on_prepare_state(patched, None, live)
    assert live["transformer_options"]["optimized_attention_override"] is installed  # idempotent


def test_clones_of_a_patched_model_share_only_the_frozen_config_and_report_their_own_runs(comfy, pack,  # noqa: F811
                                                                                         tiny_models):
    """Newest ComfyUI's clone() shares the objects in model_options: what is kept there is the frozen PatchConfig;
    each sampling run gets its own state (OUTER_SAMPLE wrapper), and each clone its own last-run report."""
    from dataclasses import FrozenInstanceError

    patched = pack.patch.apply_sparseflow(tiny_models[tw.WAN21_T2V], backend="reference")
    clone = patched.clone()
    key = pack.config.SPARSEFLOW_KEY
    config = patched.model_options["transformer_options"][key]
    assert isinstance(config, pack.config.PatchConfig)
    assert clone.model_options["transformer_options"][key] is config
    with pytest.raises(FrozenInstanceError):
        config.layers = 3
    sample_big(comfy, clone, steps=2)
    assert pack.run.last_run(patched) is None and last_run(pack, clone).steps() == [0, 1]
    sample_big(comfy, patched, steps=3)
    assert last_run(pack, patched).steps() == [0, 1, 2] and last_run(pack, clone).steps() == [0, 1]
    for m in (patched, clone):  # no run state is left in either model's options
        assert pack.run.RUN_KEY not in m.model_options["transformer_options"]
