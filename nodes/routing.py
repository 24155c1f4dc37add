"""Routing-map nodes: SparseFlow Routing (preset or file + per-head overrides) and SparseFlow Save Routing.

Maps are `sparseflow.routing.RoutingMap`s; files live in `models/sparseflow/` (registered with folder_paths,
`.safetensors` only) and are read with the core's defensive loader (no pickle, ever).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

from comfy_api.latest import io

from ..sparseflow.routing import (
    DEFAULT_ROUTING,
    EDGE_WINDOW,
    FAMILIES,
    MAX_DIM,
    ROUTING_PRESETS,
    RoutingMap,
    parse_overrides,
    routing_preset,
    routing_to_json,
    summary,
    with_overrides,
)
from ..sparseflow.routing_file import load_routing, save_routing
from .types import RoutingType, schema

__all__ = ["FOLDER", "SparseFlowRouting", "SparseFlowSaveRouting", "build_routing", "register_folder",
           "routing_files", "checked_filename"]

log = logging.getLogger("sparseflow.nodes")

FOLDER = "sparseflow"
NO_FILE = "none"
MAX_NAME = 120
_ALLOWED = f"letters, digits, spaces, '.', '_', '-' (at most {MAX_NAME} characters)"
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def register_folder() -> None:
    """Register `models/sparseflow` with folder_paths, `.safetensors` only (keeps paths added by yaml)."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths = list(folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0])
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, {".safetensors"})


def routing_files() -> list[str]:
    import folder_paths

    if FOLDER not in folder_paths.folder_names_and_paths:
        register_folder()
    return folder_paths.get_filename_list(FOLDER)


def build_routing(preset: str, file: str, layers: int, heads: int, overrides: str, family: str = "generic"
                  ) -> RoutingMap:
    """A file's map (its shape wins) or the preset at layers x heads, plus the overrides."""
    import folder_paths

    if file and file != NO_FILE:
        rmap = load_routing(folder_paths.get_full_path_or_raise(FOLDER, file))
    else:
        rmap = routing_preset(preset, layers, heads, family)
    return with_overrides(rmap, parse_overrides(overrides))


def checked_filename(name: str) -> str:
    """The file name for `name`, with ".safetensors" added; never a rewrite of it.

    Allowed: letters and digits of any script, spaces, '.', '_', '-', at most 120 characters, not starting with
    '.' or ending with '.' or a space. Anything else raises ValueError naming it, so two different names are two
    different files (a name is NFC-normalised first: two spellings of one accented letter are one name).
    """
    what = "SparseFlow Save Routing: filename"
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} is empty; allowed: {_ALLOWED}")
    name = unicodedata.normalize("NFC", name.strip())
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    shown = name if len(name) <= 60 else f"{name[:60]}..."
    if "/" in name or "\\" in name or ".." in name:
        raise ValueError(f"{what} '{shown}' contains a path separator or '..'; allowed: a plain file name (it is "
                         "saved in models/sparseflow)")
    bad = sorted({c for c in name if not (c.isalnum() or c in " ._-")})
    if bad:
        raise ValueError(f"{what} '{shown}' contains {', '.join(repr(c) for c in bad[:5])}; allowed: {_ALLOWED}")
    if len(name) > MAX_NAME:
        raise ValueError(f"{what} has {len(name)} characters; allowed: at most {MAX_NAME}")
    if not name or name.startswith(".") or name.endswith((".", " ")) or name.split(".")[0].upper() in _RESERVED:
        raise ValueError(f"{what} '{shown}' is not usable on every system (a leading or trailing '.', or a "
                         f"reserved device name); allowed: {_ALLOWED}")
    return name + ".safetensors"


def save_routing_file(rmap: RoutingMap, filename: str, overwrite: bool = False) -> Path:
    """Write `rmap` to the first models/sparseflow folder under a sanitised name; refuses to overwrite unless asked."""
    import folder_paths

    if FOLDER not in folder_paths.folder_names_and_paths:
        register_folder()
    folder = Path(folder_paths.get_folder_paths(FOLDER)[0]).resolve()
    path = (folder / checked_filename(filename)).resolve()
    if path.parent != folder:
        raise ValueError(f"SparseFlow Save Routing: '{filename}' would leave {folder}")
    try:
        return save_routing(rmap, path, overwrite=overwrite)
    except FileExistsError:
        raise FileExistsError(f"SparseFlow Save Routing: '{path.name}' already exists in {folder}; choose another "
                              "filename or turn on overwrite") from None


class SparseFlowRouting(io.ComfyNode):
    """Preset or file + overrides -> SPARSEFLOW_ROUTING."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="SparseFlowRouting",
            display_name="SparseFlow Routing",
            description=("Which attention route each (layer, head) takes: sparse (temporal window), linear (own "
                         "frame) or dense. A preset or a map file from models/sparseflow, plus per-head changes in "
                         "the grid. Connect to SparseFlow Patch."),
            inputs=[
                io.Combo.Input("preset", options=list(ROUTING_PRESETS), default=DEFAULT_ROUTING,
                               tooltip="heuristic_sparse_edges (default): 2 of every 3 heads sparse, 1 linear; the "
                                       "first and last layer sparse in every head at a fixed window of "
                                       f"{EDGE_WINDOW} latent frames. heuristic: the same with the first and last "
                                       "layer dense (slower, the default before 2026-12). all_sparse / all_linear / "
                                       "all_dense; alternating: even heads sparse, odd linear. Used when no file is "
                                       "chosen."),
                io.Combo.Input("file", options=[NO_FILE, *routing_files()], default=NO_FILE,
                               tooltip="A routing map from models/sparseflow (SparseFlow Calibrate + Save Routing). "
                                       "Its layers x heads win over the widgets below."),
                io.Int.Input("layers", default=30, min=1, max=MAX_DIM, step=1,
                             tooltip=f"Transformer blocks of the model: 30 Wan 2.1 1.3B / 2.2 5B, 40 Wan 14B "
                                     f"(at most {MAX_DIM})."),
                io.Int.Input("heads", default=12, min=1, max=MAX_DIM, step=1,
                             tooltip=f"Attention heads per block: 12 Wan 1.3B, 24 Wan 2.2 5B, 40 Wan 14B (at most "
                                     f"{MAX_DIM})."),
                io.Combo.Input("family", options=list(FAMILIES), default="generic",
                               tooltip="Model family recorded in the map (a mismatch only warns)."),
                io.String.Input("routing_overrides", default="{}", multiline=False,
                                tooltip='Per-head routes set in the grid, JSON {"layer.head": "dense"|"sparse"|'
                                        '"linear"}, applied on top of the preset or file.'),
            ],
            outputs=[RoutingType.Output(tooltip="Connect to the routing input of SparseFlow Patch.")],
        )

    @classmethod
    def execute(cls, *, preset: str, file: str, layers: int, heads: int, family: str,
                routing_overrides: str) -> io.NodeOutput:
        rmap = build_routing(preset, file, layers, heads, routing_overrides, family)
        base = build_routing(preset, file, layers, heads, "{}", family)
        return io.NodeOutput(rmap, ui={"sparseflow_routing": [routing_to_json(rmap, base)], "text": [summary(rmap)]})


class SparseFlowSaveRouting(io.ComfyNode):
    """SPARSEFLOW_ROUTING -> models/sparseflow/<name>.safetensors."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="SparseFlowSaveRouting",
            display_name="SparseFlow Save Routing",
            description=("Saves a routing map (e.g. from SparseFlow Calibrate) as models/sparseflow/<filename>"
                         ".safetensors, so SparseFlow Routing can load it and workflows can share it."),
            inputs=[
                RoutingType.Input("routing", tooltip="The map to save."),
                io.String.Input("filename", default="sparseflow_routing",
                                tooltip="File name: letters, digits, spaces, '.', '_', '-', at most 120 characters; "
                                        "'.safetensors' is added. Anything else is refused, never rewritten."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name (off: saving fails instead)."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, *, routing: RoutingMap, filename: str, overwrite: bool) -> io.NodeOutput:
        path = save_routing_file(routing, filename, overwrite)
        return io.NodeOutput(ui={"text": [f"saved {path.name}: {summary(routing)}"]})
