"""Custom ComfyUI types and schema helpers shared by the SparseFlow nodes.

Custom types after core `_io.Custom` (COMFY_NOTES §6); they carry plain frozen data from `sparseflow/`
(`Schedule`, `RoutingMap`). Newest-only io features (`advanced=`, `search_aliases`) are feature-detected
so the same node classes load on ComfyUI 0.3.64.
"""

from __future__ import annotations

import dataclasses
import inspect

from comfy_api.latest import io

__all__ = ["CATEGORY", "RoutingType", "ScheduleType", "advanced", "schema"]

CATEGORY = "model/patch/sparseflow"

ScheduleType = io.Custom("SPARSEFLOW_SCHEDULE")
RoutingType = io.Custom("SPARSEFLOW_ROUTING")


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def advanced(input_cls: type) -> dict:
    """`{"advanced": True}` where the io input class takes it (newest ComfyUI), else `{}`."""
    return {"advanced": True} if _accepts(input_cls.__init__, "advanced") else {}


def schema(**kwargs) -> io.Schema:
    """`io.Schema(...)` with SparseFlow's category and experimental flag; drops fields this ComfyUI lacks."""
    kwargs.setdefault("category", CATEGORY)
    kwargs.setdefault("is_experimental", True)
    fields = {f.name for f in dataclasses.fields(io.Schema)} if dataclasses.is_dataclass(io.Schema) else None
    if fields is None:
        fields = set(inspect.signature(io.Schema).parameters)
    return io.Schema(**{k: v for k, v in kwargs.items() if k in fields})
