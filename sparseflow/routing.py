"""Per-(layer, head) routing maps: which attention route each head takes, presets, overrides and files.

A `RoutingMap` assigns every self-attention head of a model one route of docs/spec.md §4 (dense, sparse,
linear) and optional per-head window/topk (-1 = take the schedule's value). Maps come from presets,
calibration (`sparseflow/calibrate.py`) or `.safetensors` files (`sparseflow/routing_file.py`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .plan import DENSE, LINEAR, ROUTE_NAMES, SPARSE

__all__ = [
    "DEFAULT_ROUTING", "DENSE", "EDGE_WINDOW", "FAMILIES", "LINEAR", "ROUTE_NAMES", "ROUTING_PRESETS",
    "DuplicateKeyError", "RoutingMap", "SPARSE", "parse_overrides", "routing_preset", "routing_to_json", "summary",
    "unique_keys", "with_overrides",
]

log = logging.getLogger("sparseflow.routing")

FAMILIES = ("wan2.1", "wan2.2-5b", "wan2.2-14b", "generic")
ROUTING_PRESETS = ("all_sparse", "all_linear", "all_dense", "alternating", "heuristic", "heuristic_sparse_edges")
EDGE_WINDOW = 2  # heuristic_sparse_edges: the fixed temporal window (latent frames) of the first and last layers
DEFAULT_ROUTING = "heuristic_sparse_edges"
FORMAT = "sparseflow.routing"  # the file format's name (sparseflow/routing_file.py), also in the widget payload
# Layers and heads of a map, at most: Wan 2.1 / 2.2 have at most 40 x 40; 128 leaves margin for other DiTs while
# a full map stays small (128 x 128: a ~0.3 MB widget payload, kept in ComfyUI's history on every run).
MAX_DIM = 128
MAX_PARAM = 64
_INHERIT = -1  # window/topk value meaning "take the schedule's value"
_TENSORS = {"routes": ("I8", torch.int8, 1), "window": ("I16", torch.int16, 2), "topk": ("I16", torch.int16, 2),
            "error": ("F32", torch.float32, 4)}
_OVERRIDE_KEY = re.compile(r"^([0-9]{1,4})\.([0-9]{1,4})$", re.ASCII)  # ASCII digits only, as the widget writes
_SHOWN = 40  # characters of a user's key or value quoted in an error message


def _quote(value: object) -> str:
    """repr of a user's key or value for an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _check_fields(routes: object, window: object, topk: object, error: object, family: object,
                  where: str, exc: type[ValueError]) -> None:
    """Raise `exc("<where>: <problem>; <allowed>")` for the first problem found in a map's fields."""
    for name, value in (("routes", routes), ("window", window), ("topk", topk), ("error", error)):
        if value is None and name == "error":
            continue
        want = _TENSORS[name][1]
        if not isinstance(value, torch.Tensor):
            raise exc(f"{where}: {name} is a {type(value).__name__}; allowed: a {want} tensor")
        if value.dtype != want:
            raise exc(f"{where}: {name} has dtype {value.dtype}; allowed: {want}")
        if value.dim() != 2:
            raise exc(f"{where}: {name} has shape {tuple(value.shape)}; allowed: 2-D (layers, heads)")
    shape = tuple(routes.shape)
    if not (1 <= shape[0] <= MAX_DIM and 1 <= shape[1] <= MAX_DIM):
        raise exc(f"{where}: routes has shape {shape}; allowed: layers and heads in [1, {MAX_DIM}] (Wan has at most "
                  "40 x 40)")
    for name, value in (("window", window), ("topk", topk), ("error", error)):
        if value is not None and tuple(value.shape) != shape:
            raise exc(f"{where}: {name} has shape {tuple(value.shape)} but routes has {shape}; allowed: equal shapes")
    bad = (routes != DENSE) & (routes != SPARSE) & (routes != LINEAR)
    if bad.any():
        layer, head = bad.nonzero()[0].tolist()
        raise exc(f"{where}: routes[{layer}, {head}] = {int(routes[layer, head])}; "
                  "allowed route codes: 0 dense, 1 sparse, 2 linear")
    for name, value in (("window", window), ("topk", topk)):
        bad = (value < _INHERIT) | (value > MAX_PARAM)
        if bad.any():
            layer, head = bad.nonzero()[0].tolist()
            raise exc(f"{where}: {name}[{layer}, {head}] = {int(value[layer, head])}; "
                      f"allowed: -1 (schedule's value) or 0..{MAX_PARAM}")
    if error is not None and not torch.isfinite(error).all():
        layer, head = (~torch.isfinite(error)).nonzero()[0].tolist()
        raise exc(f"{where}: error[{layer}, {head}] = {float(error[layer, head])}; allowed: finite values")
    if family not in FAMILIES:
        raise exc(f"{where}: family {family!r} is unknown; allowed: {', '.join(FAMILIES)}")


@dataclass(frozen=True, eq=False)
class RoutingMap:
    """Route, window and topk per (layer, head); `error` is calibration's relative error of the chosen route.

    `routes` is int8 (codes DENSE/SPARSE/LINEAR), `window`/`topk` int16 with -1 = the schedule's value.
    Construction validates every field (ValueError naming it).
    """

    routes: torch.Tensor
    window: torch.Tensor
    topk: torch.Tensor
    error: torch.Tensor | None
    family: str
    made_by: str
    notes: str = ""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def layers(self) -> int:
        return int(self.routes.shape[0])

    @property
    def heads(self) -> int:
        return int(self.routes.shape[1])

    def validate(self, source: str = "<memory>") -> None:
        """Raise ValueError naming `source` and the field for any invalid field (shapes, dtypes, codes, ranges)."""
        where = f"routing map {source!r}"
        _check_fields(self.routes, self.window, self.topk, self.error, self.family, where, ValueError)
        for name in ("made_by", "notes"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{where}: {name} must be a str, got {getattr(self, name)!r}")

    def counts(self) -> dict[str, int]:
        """Number of heads on each route, keyed by route name."""
        return {name: int((self.routes == code).sum()) for code, name in enumerate(ROUTE_NAMES)}

    def _check_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or not 0 <= layer < self.layers:
            raise ValueError(f"routing map: layer must be an int in [0, {self.layers - 1}], got {layer!r}")

    def route_of(self, layer: int, head: int) -> str:
        self._check_layer(layer)
        if not isinstance(head, int) or not 0 <= head < self.heads:
            raise ValueError(f"routing map: head must be an int in [0, {self.heads - 1}], got {head!r}")
        return ROUTE_NAMES[int(self.routes[layer, head])]

    def head_routes(self, layer: int) -> tuple[int, ...]:
        self._check_layer(layer)
        return tuple(int(r) for r in self.routes[layer].tolist())

    def head_window(self, layer: int) -> tuple[int, ...]:
        """Per-head window of `layer`; -1 means the schedule's window."""
        self._check_layer(layer)
        return tuple(int(w) for w in self.window[layer].tolist())

    def head_topk(self, layer: int) -> tuple[int, ...]:
        """Per-head topk of `layer`; -1 means the schedule's topk."""
        self._check_layer(layer)
        return tuple(int(k) for k in self.topk[layer].tolist())


def _check_shape(layers: object, heads: object, what: str) -> None:
    for name, value in (("layers", layers), ("heads", heads)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIM:
            raise ValueError(f"{what}: {name} must be an int in [1, {MAX_DIM}] (Wan has at most 40 layers and 40 "
                             f"heads), got {_quote(value)}")


def routing_preset(name: str, layers: int, heads: int, family: str = "generic") -> RoutingMap:
    """A preset map; window and topk are -1 (the schedule's values) everywhere, except the edge layers of
    heuristic_sparse_edges.

    - all_sparse / all_linear / all_dense: every head on that route.
    - alternating: in every layer even heads sparse, odd heads linear.
    - heuristic: layer 0 and the last layer dense, since the first and last blocks do the global mixing in and
      out of the token space; in other layers heads 0, 1 of every 3 sparse and head 2 linear (head h is linear
      iff h % 3 == 2). The default until ef13fc0.
    - heuristic_sparse_edges (DEFAULT_ROUTING): heuristic with the first and last layers sparse at a fixed window
      of EDGE_WINDOW latent frames (every head) instead of dense. The two dense layers took about 10 % of a Wan
      1.3B model call's GPU time; on the small trained model of docs/fidelity.md the sparse edges lost no quality
      with the `balanced` and `quality` schedules (docs/performance.md, "The current defaults").
    """
    if name not in ROUTING_PRESETS:
        raise ValueError(f"routing preset must be one of {ROUTING_PRESETS}, got {name!r}")
    _check_shape(layers, heads, f"routing preset {name!r}")
    routes = torch.full((layers, heads), SPARSE, dtype=torch.int8)
    if name == "all_linear":
        routes.fill_(LINEAR)
    elif name == "all_dense":
        routes.fill_(DENSE)
    elif name == "alternating":
        routes[:, 1::2] = LINEAR
    elif name == "heuristic":
        routes[:, 2::3] = LINEAR
        routes[0] = DENSE
        routes[-1] = DENSE
    full = torch.full((layers, heads), _INHERIT, dtype=torch.int16)
    window = full.clone()
    if name == "heuristic_sparse_edges":
        routes[:, 2::3] = LINEAR
        for layer in (0, layers - 1):
            routes[layer] = SPARSE
            window[layer] = EDGE_WINDOW
    return RoutingMap(routes, window, full, None, family, f"preset:{name}")


def _parse_override_item(key: object, value: object) -> tuple[int, int, int]:
    if not isinstance(key, str) or not (m := _OVERRIDE_KEY.match(key)):
        raise ValueError(f"routing override key {_quote(key)} is malformed; allowed: 'layer.head' in ASCII digits "
                         "like '3.7'")
    if not isinstance(value, str) or value not in ROUTE_NAMES:
        raise ValueError(f"routing override {key!r}: route {_quote(value)} is unknown; allowed: "
                         f"{', '.join(ROUTE_NAMES)}")
    return int(m.group(1)), int(m.group(2)), ROUTE_NAMES.index(value)


class DuplicateKeyError(ValueError):
    """A JSON object that names one key twice (`unique_keys`)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {_quote(key)}")
        self.key = key


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json `object_pairs_hook`: a key given twice raises DuplicateKeyError (json.loads would keep the last one
    silently). Used for override text and for routing file headers."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def parse_overrides(text: str) -> dict[str, str]:
    """Overrides from the node's JSON text: an object {"layer.head": "route"}; "" gives {}; arrays are rejected,
    and so is a head named twice (the same key twice, or two spellings such as '3.7' and '03.7')."""
    if not isinstance(text, str):
        raise ValueError(f"routing overrides must be JSON text, got {type(text).__name__}")
    if not text.strip():
        return {}
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKeyError as e:
        raise ValueError(f"routing overrides: key {_quote(e.key)} is given twice; allowed: each 'layer.head' "
                         "once") from None
    except RecursionError:
        raise ValueError("routing overrides: not valid JSON (nested too deeply); allowed: an object like "
                         "{\"3.7\": \"dense\"}") from None
    except ValueError as e:
        raise ValueError(f"routing overrides: not valid JSON ({e}); allowed: an object like "
                         "{\"3.7\": \"dense\"}") from None
    if not isinstance(data, dict):
        raise ValueError(f"routing overrides must be a JSON object like {{\"3.7\": \"dense\"}}, "
                         f"got a JSON {type(data).__name__}")
    _override_items(data)
    return dict(data)


def _override_items(overrides: Mapping[str, str]) -> list[tuple[str, int, int, int]]:
    """(key, layer, head, route code) per override; two keys naming one head ('3.7', '03.7') are an error."""
    items, seen = [], {}
    for key, value in overrides.items():
        layer, head, code = _parse_override_item(key, value)
        if (layer, head) in seen:
            raise ValueError(f"routing overrides: {seen[layer, head]!r} and {key!r} name the same head; allowed: "
                             "each head once")
        seen[layer, head] = key
        items.append((key, layer, head, code))
    return items


def with_overrides(rmap: RoutingMap, overrides: Mapping[str, str]) -> RoutingMap:
    """A copy of `rmap` with the routes named by `overrides` ({"layer.head": route name}) replaced.

    Window, topk and error are kept; for an overridden head `error` still describes the calibrated route.
    """
    if not isinstance(overrides, Mapping):
        raise ValueError(f"routing overrides must be a mapping of 'layer.head' to route name, got "
                         f"{type(overrides).__name__}")
    if not overrides:
        return rmap
    routes = rmap.routes.clone()
    for key, layer, head, code in _override_items(overrides):
        if layer >= rmap.layers or head >= rmap.heads:
            raise ValueError(f"routing override {key!r} is out of range; the map has layers 0..{rmap.layers - 1} "
                             f"and heads 0..{rmap.heads - 1}")
        routes[layer, head] = code
    error = None if rmap.error is None else rmap.error.clone()
    made_by = rmap.made_by if rmap.made_by.endswith("+overrides") else f"{rmap.made_by}+overrides"
    return RoutingMap(routes, rmap.window.clone(), rmap.topk.clone(), error, rmap.family, made_by, rmap.notes)


def summary(rmap: RoutingMap) -> str:
    """One human-readable line: family, shape, heads per route (with share), mean error, origin."""
    total = rmap.layers * rmap.heads
    parts = ", ".join(f"{name} {n} ({100.0 * n / total:.1f}%)" for name, n in rmap.counts().items())
    err = "" if rmap.error is None else f", mean error {float(rmap.error.double().mean()):.3g}"
    notes = f" - {rmap.notes}" if rmap.notes else ""
    return f"routing {rmap.family} {rmap.layers}x{rmap.heads} (layers x heads): {parts}{err}; made by {rmap.made_by}" \
           f"{notes}"


def routing_to_json(rmap: RoutingMap, base: RoutingMap | None = None) -> dict:
    """Plain-list form for the web widget and node UI payloads (JSON-serialisable; error floats are finite).

    `base` is the map before per-head overrides (the widget cycles a clicked head back to it); default `rmap`.
    """
    return {
        "format": FORMAT,
        "family": rmap.family,
        "layers": rmap.layers,
        "heads": rmap.heads,
        "route_names": list(ROUTE_NAMES),
        "routes": rmap.routes.tolist(),
        "base_routes": (base if base is not None else rmap).routes.tolist(),
        "window": rmap.window.tolist(),
        "topk": rmap.topk.tolist(),
        "error": None if rmap.error is None else [[float(x) for x in row] for row in rmap.error.tolist()],
        "counts": rmap.counts(),
        "made_by": rmap.made_by,
        "notes": rmap.notes,
    }
