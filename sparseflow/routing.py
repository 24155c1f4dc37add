"""Per-(layer, head) routing maps: which attention route each head takes, presets, overrides and files.

A `RoutingMap` assigns every self-attention head of a model one route of docs/spec.md §4 (dense, sparse,
linear) and optional per-head window/topk (-1 = take the schedule's value). Maps come from presets,
calibration (`sparseflow/calibrate.py`) or `.safetensors` files. Files are parsed defensively: the header is
checked byte by byte before safetensors sees it, and pickle-based formats are never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sparseflow.plan import DENSE, LINEAR, ROUTE_NAMES, SPARSE

__all__ = [
    "DEFAULT_ROUTING", "DENSE", "FAMILIES", "LINEAR", "ROUTE_NAMES", "ROUTING_PRESETS", "RoutingFileError",
    "RoutingMap", "SPARSE", "load_routing", "parse_overrides", "routing_preset", "routing_to_json", "save_routing",
    "summary", "with_overrides",
]

log = logging.getLogger("sparseflow.routing")

FAMILIES = ("wan2.1", "wan2.2-5b", "wan2.2-14b", "generic")
ROUTING_PRESETS = ("all_sparse", "all_linear", "all_dense", "alternating", "heuristic")
DEFAULT_ROUTING = "heuristic"
FORMAT = "sparseflow.routing"
FORMAT_VERSION = "1"
MAX_DIM = 4096
MAX_PARAM = 64
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
_INHERIT = -1  # window/topk value meaning "take the schedule's value"
_TENSORS = {"routes": ("I8", torch.int8, 1), "window": ("I16", torch.int16, 2), "topk": ("I16", torch.int16, 2),
            "error": ("F32", torch.float32, 4)}
_REQUIRED_TENSORS = ("routes", "window", "topk")
_METADATA_KEYS = ("format", "format_version", "family", "layers", "heads", "made_by", "notes")
_OVERRIDE_KEY = re.compile(r"^(\d{1,4})\.(\d{1,4})$")


class RoutingFileError(ValueError):
    """A routing file that cannot be used; the message names the file, what is wrong and what is allowed."""


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
        raise exc(f"{where}: routes has shape {shape}; allowed: layers and heads in [1, {MAX_DIM}]")
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
            raise ValueError(f"{what}: {name} must be an int in [1, {MAX_DIM}], got {value!r}")


def routing_preset(name: str, layers: int, heads: int, family: str = "generic") -> RoutingMap:
    """A preset map; window and topk are -1 (the schedule's values) everywhere.

    - all_sparse / all_linear / all_dense: every head on that route.
    - alternating: in every layer even heads sparse, odd heads linear.
    - heuristic (default): layer 0 and the last layer dense, since the first and last blocks do the global
      mixing in and out of the token space; in other layers heads 0, 1 of every 3 sparse and head 2 linear
      (head h is linear iff h % 3 == 2).
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
    return RoutingMap(routes, full, full.clone(), None, family, f"preset:{name}")


def _parse_override_item(key: object, value: object) -> tuple[int, int, int]:
    if not isinstance(key, str) or not (m := _OVERRIDE_KEY.match(key)):
        raise ValueError(f"routing override key {key!r} is malformed; allowed: 'layer.head' like '3.7'")
    if value not in ROUTE_NAMES:
        raise ValueError(f"routing override {key!r}: route {value!r} is unknown; allowed: {', '.join(ROUTE_NAMES)}")
    return int(m.group(1)), int(m.group(2)), ROUTE_NAMES.index(value)


def parse_overrides(text: str) -> dict[str, str]:
    """Overrides from the node's JSON text: an object {"layer.head": "route"}; "" gives {}; arrays are rejected."""
    if not isinstance(text, str):
        raise ValueError(f"routing overrides must be JSON text, got {type(text).__name__}")
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"routing overrides: not valid JSON ({e}); allowed: an object like {{\"3.7\": \"dense\"}}") \
            from None
    if not isinstance(data, dict):
        raise ValueError(f"routing overrides must be a JSON object like {{\"3.7\": \"dense\"}}, "
                         f"got a JSON {type(data).__name__}")
    for key, value in data.items():
        _parse_override_item(key, value)
    return dict(data)


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
    for key, value in overrides.items():
        layer, head, code = _parse_override_item(key, value)
        if layer >= rmap.layers or head >= rmap.heads:
            raise ValueError(f"routing override {key!r} is out of range; the map has layers 0..{rmap.layers - 1} "
                             f"and heads 0..{rmap.heads - 1}")
        routes[layer, head] = code
    error = None if rmap.error is None else rmap.error.clone()
    made_by = rmap.made_by if rmap.made_by.endswith("+overrides") else f"{rmap.made_by}+overrides"
    return RoutingMap(routes, rmap.window.clone(), rmap.topk.clone(), error, rmap.family, made_by, rmap.notes)


def save_routing(rmap: RoutingMap, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `rmap` as a .safetensors routing file (atomic: temp file in the same folder, then os.replace).

    Refuses to replace an existing file unless `overwrite` is True (FileExistsError).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"routing file '{path.name}': extension {path.suffix!r} is not allowed; use .safetensors")
    rmap.validate()
    if path.exists() and not overwrite:
        raise FileExistsError(f"routing file '{path.name}' already exists in {path.parent}; "
                              "choose another name or pass overwrite=True to replace it")
    tensors = {"routes": rmap.routes, "window": rmap.window, "topk": rmap.topk}
    if rmap.error is not None:
        tensors["error"] = rmap.error
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": rmap.family,
                "layers": str(rmap.layers), "heads": str(rmap.heads), "made_by": rmap.made_by, "notes": rmap.notes}
    data = save(tensors, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("saved routing %s (%dx%d, %s) to %s", rmap.family, rmap.layers, rmap.heads, rmap.made_by, path)
    return path


def _read_header(data: bytes, fail) -> tuple[dict, int]:
    """Parse and check the safetensors header of `data`; returns (header, data start). `fail(msg)` raises."""
    if len(data) < 8:
        fail(f"file is {len(data)} bytes, shorter than the 8-byte header length; allowed: a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        fail(f"header length {n} is larger than {MAX_HEADER_BYTES} bytes; allowed: at most {MAX_HEADER_BYTES}")
    if 8 + n > len(data):
        fail(f"header length {n} runs past the end of the {len(data)}-byte file; allowed: a header inside the file")
    raw = data[8:8 + n]
    if not raw.startswith(b"{"):
        fail("header does not start with '{'; allowed: a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"header is not valid UTF-8 ({e.reason} at byte {e.start}); allowed: UTF-8 JSON")

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    def no_constants(name: str) -> None:
        raise ValueError(f"constant {name} is not JSON")

    try:
        header = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        fail(f"header is not valid JSON ({str(e)[:200]}); allowed: a JSON object without duplicate keys")
    if not isinstance(header, dict):
        fail(f"header is a JSON {type(header).__name__}; allowed: a JSON object")
    try:  # Python's json accepts escaped lone surrogates ("\\ud800"); safetensors' parser does not
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as e:
        fail(f"header holds a string that is not valid Unicode ({str(e)[:100]}); allowed: UTF-8 JSON")
    return header, 8 + n


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entries(header: dict, data_len: int, fail) -> tuple[int, int]:
    """Check tensor entries and offsets against the data section; returns the common (layers, heads)."""
    names = set(header) - {"__metadata__"}
    for name in _REQUIRED_TENSORS:
        if name not in names:
            fail(f"tensor {name!r} is missing; allowed tensors: routes, window, topk and optional error")
    extra = sorted(names - set(_TENSORS))
    if extra:
        fail(f"unexpected tensor {extra[0]!r}; allowed tensors: routes, window, topk and optional error")
    shape = None
    spans = []
    for name in sorted(names):
        entry = header[name]
        code, _, itemsize = _TENSORS[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            fail(f"tensor {name!r} entry is malformed; allowed: an object with dtype, shape and data_offsets")
        if entry["dtype"] != code:
            fail(f"tensor {name!r} has dtype {entry['dtype']!r}; allowed: {code}")
        dims = entry["shape"]
        if not isinstance(dims, list) or len(dims) != 2 or not all(_is_int(d) for d in dims):
            fail(f"tensor {name!r} has shape {dims!r}; allowed: 2-D [layers, heads]")
        if not all(1 <= d <= MAX_DIM for d in dims):
            fail(f"tensor {name!r} has shape {dims!r}; allowed: layers and heads in [1, {MAX_DIM}]")
        if shape is None:
            shape = tuple(dims)
        elif tuple(dims) != shape:
            fail(f"tensor {name!r} has shape {dims!r} but another tensor has {list(shape)}; allowed: equal shapes")
        offsets = entry["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            fail(f"tensor {name!r} has data_offsets {offsets!r}; allowed: [begin, end] integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            fail(f"tensor {name!r} has data_offsets {offsets!r}; allowed: 0 <= begin <= end <= {data_len}")
        if end - begin != dims[0] * dims[1] * itemsize:
            fail(f"tensor {name!r} has data_offsets {offsets!r} spanning {end - begin} bytes; allowed: "
                 f"{dims[0] * dims[1] * itemsize} bytes for shape {dims} {code}")
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap at byte {pos}"
            fail(f"tensor {name!r} data_offsets {[begin, end]} {what}; allowed: tensors covering the data exactly")
        pos = end
    if pos != data_len:
        fail(f"tensors cover {pos} of {data_len} data bytes; allowed: tensors covering the data exactly")
    return shape


def _check_metadata(header: dict, shape: tuple[int, int], fail) -> dict[str, str]:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        fail("metadata is missing; allowed: __metadata__ with format 'sparseflow.routing' and format_version '1'")
    for key, value in meta.items():
        if not isinstance(value, str):
            fail(f"metadata {key!r} is {value!r}; allowed: string values")
    for key in _METADATA_KEYS:
        if key not in meta:
            fail(f"metadata {key!r} is missing; allowed: metadata {', '.join(_METADATA_KEYS)}")
    if meta["format"] != FORMAT:
        fail(f"metadata format is {meta['format']!r}; allowed: {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        fail(f"metadata format_version {meta['format_version']!r} is unsupported; allowed: {FORMAT_VERSION!r}")
    for key, size in (("layers", shape[0]), ("heads", shape[1])):
        if meta[key] != str(size):
            fail(f"metadata {key} is {meta[key]!r} but the tensors have {size}; allowed: matching values")
    if meta["family"] not in FAMILIES:
        fail(f"metadata family {meta['family']!r} is unknown; allowed: {', '.join(FAMILIES)}")
    return meta


def load_routing(path: str | os.PathLike, expect_family: str | None = None,
                 expect_shape: tuple[int, int] | None = None) -> RoutingMap:
    """Read a routing file written by `save_routing`, raising RoutingFileError for anything else.

    Checks extension, size, header length, header JSON, tensor names/dtypes/shapes/offsets, metadata and
    values by reading bytes before safetensors parses them; torch.load and pickle are never used.
    `expect_family` / `expect_shape` (layers, heads) must match the file's when given.
    """
    path = Path(path)

    def fail(msg: str):
        raise RoutingFileError(f"routing file '{path.name}': {msg}")

    if path.suffix.lower() != ".safetensors":
        fail(f"extension {path.suffix!r} is not allowed; only .safetensors routing files are loaded "
             "(pickle, .pt, .pth and .ckpt files are never loaded)")
    if not path.exists():
        fail(f"file not found in {path.parent}; allowed: an existing .safetensors file")
    if not path.is_file():
        fail("is not a regular file; allowed: an existing .safetensors file")
    if path.stat().st_size > MAX_FILE_BYTES:
        fail(f"file is {path.stat().st_size} bytes; allowed: at most {MAX_FILE_BYTES} bytes (16 MiB)")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        fail(f"file is larger than {MAX_FILE_BYTES} bytes; allowed: at most 16 MiB")
    header, start = _read_header(data, fail)
    shape = _check_entries(header, len(data) - start, fail)
    meta = _check_metadata(header, shape, fail)
    if expect_family is not None and meta["family"] != expect_family:
        fail(f"family is {meta['family']!r} but the model is {expect_family!r}; allowed: a map made for "
             f"{expect_family!r}")
    if expect_shape is not None and shape != tuple(expect_shape):
        fail(f"shape is {shape[0]}x{shape[1]} (layers x heads) but the model has "
             f"{expect_shape[0]}x{expect_shape[1]}; allowed: a map of the model's shape")

    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as e:  # noqa: BLE001 - anything safetensors refuses is a bad file, never a crash
        fail(f"safetensors could not read it ({e}); allowed: a file written by save_routing")
    if {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()} != {
            k: (_TENSORS[k][1], shape) for k in header if k != "__metadata__"}:
        fail("safetensors returned other tensors than the header declares; allowed: a file written by save_routing")
    routes, window, topk, error = (tensors.get(n) for n in ("routes", "window", "topk", "error"))
    _check_fields(routes, window, topk, error, meta["family"], f"routing file '{path.name}'", RoutingFileError)
    rmap = RoutingMap(routes, window, topk, error, meta["family"], meta["made_by"], meta["notes"])
    log.info("loaded routing %s from %s", summary(rmap), path)
    return rmap


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
