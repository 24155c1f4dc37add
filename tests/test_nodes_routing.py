"""SparseFlow Schedule, Routing and Save Routing nodes through their V3 `execute`, in real ComfyUI (CPU)."""

from __future__ import annotations

import json

import pytest
import tiny_wan as tw
from comfy_env import comfy, requires_comfy  # noqa: F401  (comfy is a fixture)
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE
from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.routing_file import load_routing
from comfyui_sparseflow.sparseflow.schedule import describe, schedule_preset
from test_nodes_common import pack, tiny_models  # noqa: F401

pytestmark = requires_comfy


@pytest.fixture
def models_dir(pack, tmp_path, monkeypatch):  # noqa: F811
    """Point the registered models/sparseflow folder at a temp dir for one test."""
    import folder_paths

    folder = tmp_path / "sparseflow"
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sparseflow", ([str(folder)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("sparseflow", None)
    yield folder
    folder_paths.filename_list_cache.pop("sparseflow", None)


def test_schedule_node_gives_presets_and_custom_sliders(pack):  # noqa: F811
    node = pack.schedule.SparseFlowSchedule
    args = dict(progress_mode="steps", early_window=0, late_window=2, dense_from=1.0, topk=0, compensation=True,
                keyframes="")
    out = node.execute(preset="quality", **args)
    assert out.result[0].keyframes == schedule_preset("quality").keyframes
    assert "D" in out.ui["text"][0]
    custom = node.execute(preset="custom", **{**args, "early_window": 1, "late_window": 3, "dense_from": 0.8})
    steps = describe(custom.result[0], 6)  # progress 0, .2, .4, .6, .8, 1
    assert [s.window for s in steps[:4]] == [1, 2, 2, 3] and [s.dense for s in steps] == [False] * 4 + [True] * 2
    js = node.execute(preset="custom", **{**args, "progress_mode": "sigma",
                                          "keyframes": '{"keyframes": [{"progress": 0, "window": 5}]}'})
    assert js.result[0].progress_mode == "sigma" and js.result[0].at(0.5).window == 5
    with pytest.raises(ValueError, match="unknown key 'windw'"):
        node.execute(preset="custom", **{**args, "keyframes": '{"keyframes": [{"progress": 0, "windw": 5}]}'})


def test_routing_node_applies_grid_overrides_and_reports_the_map_to_the_ui(pack, models_dir):  # noqa: F811
    node = pack.routing.SparseFlowRouting
    out = node.execute(preset="all_sparse", file="none", layers=3, heads=4, family="wan2.1",
                       routing_overrides='{"0.1": "dense", "2.3": "linear"}')
    rmap = out.result[0]
    assert (rmap.layers, rmap.heads) == (3, 4)
    assert rmap.route_of(0, 1) == "dense" and rmap.route_of(2, 3) == "linear" and rmap.route_of(1, 1) == "sparse"
    payload = out.ui["sparseflow_routing"][0]
    json.dumps(out.ui)  # the UI payload must be JSON
    assert payload["layers"] == 3 and payload["heads"] == 4 and payload["routes"][0][1] == DENSE
    assert payload["base_routes"][0][1] == SPARSE and payload["base_routes"][2][3] == SPARSE  # before the overrides
    with pytest.raises(ValueError, match="must be a JSON object"):
        node.execute(preset="all_sparse", file="none", layers=3, heads=4, family="wan2.1", routing_overrides="[]")
    with pytest.raises(ValueError, match="out of range"):
        node.execute(preset="all_sparse", file="none", layers=3, heads=4, family="wan2.1",
                     routing_overrides='{"3.0": "dense"}')


def test_save_routing_takes_names_as_given_and_never_overwrites_unless_asked(pack, models_dir):  # noqa: F811
    save = pack.routing.SparseFlowSaveRouting
    rmap = routing_preset("alternating", 2, 2, "wan2.1")
    out = save.execute(routing=rmap, filename=" my map v1 ", overwrite=False)
    path = models_dir / "my map v1.safetensors"
    assert path.is_file() and "my map v1.safetensors" in out.ui["text"][0]
    assert load_routing(path).routes.tolist() == rmap.routes.tolist()
    assert pack.routing.checked_filename("a.safetensors") == "a.safetensors"
    for bad in ("../evil", "sub/dir", "..", "a\\b", "   ", "my map:v1", ".hidden", "CON", "x" * 121):
        with pytest.raises(ValueError):
            save.execute(routing=rmap, filename=bad, overwrite=False)
    assert sorted(p.name for p in models_dir.iterdir()) == ["my map v1.safetensors"]
    other = routing_preset("all_linear", 2, 2, "wan2.1")
    with pytest.raises(FileExistsError, match="already exists"):
        save.execute(routing=other, filename="my map v1", overwrite=False)
    assert load_routing(path).routes.tolist() == rmap.routes.tolist()  # untouched
    save.execute(routing=other, filename="my map v1", overwrite=True)
    assert (load_routing(path).routes == LINEAR).all()


def test_names_that_differ_are_different_files_and_bad_ones_are_named(pack, models_dir):  # noqa: F811
    """Names once collided after cleaning: non-ASCII letters became '_' and names were cut at 120 characters."""
    save = pack.routing.SparseFlowSaveRouting
    names = ["résumé", "rèsumè", "карта 1", "x" * 119 + "a", "x" * 119 + "b"]
    for i, name in enumerate(names):
        save.execute(routing=routing_preset("all_sparse", 1, i + 1, "wan2.1"), filename=name, overwrite=False)
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(f"{n}.safetensors" for n in names)
    assert pack.routing.checked_filename("re\u0301sume\u0301") == "résumé.safetensors"  # one name, NFC
    with pytest.raises(ValueError, match="has 121 characters; allowed: at most 120"):
        pack.routing.checked_filename("y" * 121)
    with pytest.raises(ValueError, match="contains ':', '\\?'; allowed: letters, digits, spaces"):
        pack.routing.checked_filename("a:b?")


def test_routing_node_caps_layers_and_heads_at_what_models_have(pack):  # noqa: F811
    node = pack.routing.SparseFlowRouting
    spec = node.INPUT_TYPES()["required"]
    assert spec["layers"][1]["max"] == spec["heads"][1]["max"] == 128
    assert "at most 128" in spec["layers"][1]["tooltip"]
    with pytest.raises(ValueError, match="layers must be an int in \\[1, 128\\] \\(Wan has at most 40"):
        node.execute(preset="heuristic", file="none", layers=4096, heads=4096, family="generic",
                     routing_overrides="{}")
    out = node.execute(preset="heuristic", file="none", layers=128, heads=128, family="generic",
                       routing_overrides="{}")
    assert len(json.dumps(out.ui)) < 600_000  # the largest map's payload: was 235 MB at 4096 x 4096


def test_routing_node_loads_a_saved_file_whose_shape_wins_and_patch_applies_it(comfy, pack, models_dir,  # noqa: F811
                                                                                 tiny_models):  # noqa: F811
    rmap = routing_preset("all_sparse", 2, 2, "wan2.1")
    pack.routing.save_routing_file(rmap, "tiny", overwrite=False)
    schema_files = pack.routing.SparseFlowRouting.INPUT_TYPES()["required"]["file"]
    assert "tiny.safetensors" in schema_files[1]["options"]
    out = pack.routing.SparseFlowRouting.execute(preset="heuristic", file="tiny.safetensors", layers=30, heads=12,
                                                 family="generic", routing_overrides='{"1.0": "dense"}')
    loaded = out.result[0]
    assert (loaded.layers, loaded.heads) == (2, 2) and loaded.route_of(1, 0) == "dense"

    patch = pack.patch.SparseFlowPatch
    res = patch.execute(model=tiny_models[tw.WAN21_T2V], sparsity=0.5, window=-1, anchor_frames=1,
                        linear_kind="pooled", backend="reference", block_size="64",
                        routing_overrides='{"0.0": "linear"}', routing=loaded, schedule=None)
    patched = res.result[0]
    applied = res.ui["sparseflow_routing"][0]["routes"]
    assert applied == [[LINEAR, SPARSE], [DENSE, SPARSE]]
    assert "backend reference" in res.ui["text"][0]
    tw.sample_variant(comfy, patched, tw.WAN21_T2V, steps=2)
    tel = pack.run.last_run(patched).telemetry
    assert tel.route_counts() == {"dense": 1, "sparse": 2, "linear": 1}
