"""Schema test of every workflows/*.json against the node definitions a real ComfyUI serves at /object_info.

Each workflow must use only core nodes and this pack's, give every widget a value of the right kind in the
order the frontend serialises them (object_info `input_order`), connect links between slots of matching type,
link every required socket, name the Comfy-Org repackaged model files (with the download metadata ComfyUI's own
templates carry), and hold routing overrides that sparseflow.routing.parse_overrides accepts and that fit the
map. The server comes from tests/browser/comfy_server.py (this pack in a temp --base-directory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from browser.comfy_server import shared_server
from comfy_env import REQUIRE_ENV, comfy_path, missing_reason, requires_comfy
from comfyui_sparseflow.sparseflow.routing import parse_overrides

pytestmark = requires_comfy  # run once per ComfyUI tree (dev.sh: pytest -m comfyui)

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
EXPECTED = {
    "wan2.1_t2v_1.3B_sparseflow", "wan2.1_i2v_14B_sparseflow", "wan2.2_ti2v_5B_sparseflow",
    "wan2.2_t2v_14B_sparseflow", "wan2.1_t2v_1.3B_calibrate_then_save", "wan2.1_t2v_1.3B_compare",
    "wan2.1_t2v_1.3B_quality_target",
}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Comfy-Org repackaged file names (Wan_2.1_ComfyUI_repackaged / Wan_2.2_ComfyUI_Repackaged), by folder
OFFICIAL_FILES = {
    "diffusion_models": {"wan2.1_t2v_1.3B_fp16.safetensors", "wan2.1_i2v_720p_14B_fp16.safetensors",
                         "wan2.2_ti2v_5B_fp16.safetensors", "wan2.2_t2v_high_noise_14B_fp16.safetensors",
                         "wan2.2_t2v_low_noise_14B_fp16.safetensors"},
    "text_encoders": {"umt5_xxl_fp8_e4m3fn_scaled.safetensors"},
    "vae": {"wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"},
    "clip_vision": {"clip_vision_h.safetensors"},
}
MODEL_WIDGETS = {("UNETLoader", "unet_name"): "diffusion_models", ("CLIPLoader", "clip_name"): "text_encoders",
                 ("VAELoader", "vae_name"): "vae", ("CLIPVisionLoader", "clip_name"): "clip_vision"}
SHAPES = {"1.3B": (30, 12), "5B": (30, 24), "14B": (40, 40)}


@pytest.fixture(scope="module")
def object_info() -> dict:
    if comfy_path() is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(missing_reason())
        pytest.skip(missing_reason())
    return shared_server().object_info()


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _widget_names(spec: dict) -> list[tuple[str, list]]:
    """(name, spec) of each widget input in the frontend's order (required then optional, input_order)."""
    out = []
    for group in ("required", "optional"):
        for name in spec.get("input_order", {}).get(group, []):
            entry = spec["input"][group][name]
            kind = entry[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                out.append((name, entry))
    return out


def _expected_values(spec: dict) -> list[tuple[str, list | None]]:
    """Widget slots as serialised: control_after_generate and image-upload add a value after their input."""
    slots = []
    for name, entry in _widget_names(spec):
        slots.append((name, entry))
        opts = entry[1] if len(entry) > 1 else {}
        if opts.get("control_after_generate"):
            slots.append(("control_after_generate", None))
        if opts.get("image_upload"):
            slots.append(("upload", None))
    return slots


def _check_value(where: str, name: str, entry: list, value, node_type: str) -> None:
    kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options", [])
        folder = MODEL_WIDGETS.get((node_type, name))
        if folder:
            assert value in OFFICIAL_FILES[folder], f"{where}: {value!r} is not a Comfy-Org repackaged {folder} file"
        else:
            assert value in options, f"{where}: {value!r} not in {options[:12]}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an int"
        assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {value} outside [min, max]"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} not a number"
        assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {value} outside [min, max]"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a bool"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a str"


def test_workflows_folder_holds_the_expected_workflows_each_with_a_screenshot():
    assert {p.stem for p in WORKFLOWS} == EXPECTED
    from PIL import Image

    for path in WORKFLOWS:
        jpg = path.with_suffix(".jpg")
        assert jpg.is_file(), f"{jpg.name} is missing (make it with tests/browser/update_workflow_jpgs.py)"
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.width >= 1000 and im.height >= 400, f"{jpg.name}: {im.format} {im.size}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_matches_object_info(path: Path, object_info: dict):
    wf = _load(path)
    assert wf.get("version") == 0.4 and isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "node ids are not unique"
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for node in wf["nodes"]:
        where = f"{path.stem} #{node['id']} {node['type']}"
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in object_info, f"{where}: unknown to the server"
        spec = object_info[node["type"]]
        module = spec["python_module"]
        assert module in ("nodes", "custom_nodes.SparseFlow") or module.startswith("comfy_extras."), \
            f"{where}: from {module}, neither core nor this pack"
        slots = _expected_values(spec)
        values = node.get("widgets_values") or []
        assert len(values) == len(slots), f"{where}: {len(values)} widget values for {[s[0] for s in slots]}"
        for (name, entry), value in zip(slots, values):
            if entry is not None:
                _check_value(f"{where}.{name}", name, entry, value, node["type"])
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, entry in spec["input"].get("required", {}).items():
            if not (isinstance(entry[0], list) or entry[0] in WIDGET_TYPES):
                assert name in linked, f"{where}: required input {name} is not connected"
        for (ntype, wname), folder in MODEL_WIDGETS.items():
            if node["type"] == ntype:
                file = values[[s[0] for s in slots].index(wname)]
                meta = node.get("properties", {}).get("models", [])
                assert any(m["name"] == file and m["directory"] == folder
                           and m["url"].startswith("https://huggingface.co/Comfy-Org/") for m in meta), \
                    f"{where}: no download metadata for {file}"
    for link_id, src, src_slot, dst, dst_slot, ltype in wf["links"]:
        out_type = object_info[nodes[src]["type"]]["output"][src_slot]
        assert out_type == ltype or ltype == "*", f"link {link_id}: output type {out_type} != {ltype}"
        dst_input = nodes[dst]["inputs"][dst_slot]
        assert dst_input["link"] == link_id, f"link {link_id}: target slot does not point back"
        dspec = object_info[nodes[dst]["type"]]["input"]
        entry = {**dspec.get("required", {}), **dspec.get("optional", {})}[dst_input["name"]]
        assert entry[0] in (ltype, "*"), f"link {link_id}: {ltype} into {dst_input['name']} ({entry[0]})"


def _widgets(node: dict) -> dict:
    """Widget values by name, for nodes whose widgets all have input slots (the SparseFlow ones)."""
    names = [i["name"] for i in node.get("inputs", []) if "widget" in i]
    assert len(names) == len(node["widgets_values"]), f"#{node['id']}: widget slots {names}"
    return dict(zip(names, node["widgets_values"]))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_routing_overrides_parse_and_fit_the_model(path: Path):
    wf = _load(path)
    by_type = {}
    for n in wf["nodes"]:
        by_type.setdefault(n["type"], []).append(n)
    assert by_type.get("SparseFlowPatch"), "every workflow patches its model(s)"
    unets = [n["widgets_values"][0] for n in by_type["UNETLoader"]]
    size = next(k for k in SHAPES if any(f"_{k}_" in u for u in unets))
    for n in by_type.get("SparseFlowRouting", []):
        w = _widgets(n)
        assert (w["layers"], w["heads"]) == SHAPES[size], f"Routing #{n['id']}: {w['layers']}x{w['heads']} for {size}"
        assert w["file"] == "none" and parse_overrides(w["routing_overrides"]) == {}
    for n in by_type["SparseFlowPatch"]:
        assert parse_overrides(_widgets(n)["routing_overrides"]) == {}
    if "wan2.2_t2v_14B" in path.stem:
        assert len(by_type["KSamplerAdvanced"]) == 2 and len(by_type["SparseFlowPatch"]) == 2
        assert {"wan2.2_t2v_high_noise_14B_fp16.safetensors", "wan2.2_t2v_low_noise_14B_fp16.safetensors"} <= set(unets)
    if "calibrate" in path.stem:
        assert by_type.get("SparseFlowCalibrate") and by_type.get("SparseFlowSaveRouting")
    if "quality_target" in path.stem:  # Calibrate to Target feeds Patch's routing and its sparsity widget
        (search,) = by_type["SparseFlowCalibrateToTarget"]
        (patch,) = by_type["SparseFlowPatch"]
        fed = {link[4]: (link[1], link[2]) for link in wf["links"] if link[3] == patch["id"]}
        names = [i["name"] for i in patch["inputs"]]
        assert fed[names.index("routing")] == (search["id"], 0) and fed[names.index("sparsity")] == (search["id"], 1)
