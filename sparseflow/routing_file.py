"""Routing map files: `.safetensors` only, written atomically and read defensively.

`save_routing` writes a `RoutingMap` (tensors routes / window / topk [/ error] plus string metadata: format,
version, family, shape, origin, notes). `load_routing` checks the extension, size, header length, header JSON,
tensor names / dtypes / shapes / offsets, metadata and values by reading bytes before safetensors parses them,
and raises `RoutingFileError` naming the file, the problem and what is allowed; pickle-based formats
(.pt / .pth / .ckpt, torch.load) are never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import uuid
from pathlib import Path

from .routing import _TENSORS, FAMILIES, FORMAT, MAX_DIM, RoutingMap, _check_fields, summary, unique_keys

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_FILE_BYTES", "MAX_HEADER_BYTES", "RoutingFileError", "load_routing",
           "save_routing"]

log = logging.getLogger("sparseflow.routing")

FORMAT_VERSION = "1"
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
_REQUIRED_TENSORS = ("routes", "window", "topk")
_METADATA_KEYS = ("format", "format_version", "family", "layers", "heads", "made_by", "notes")


class RoutingFileError(ValueError):
    """A routing file that cannot be used; the message names the file, what is wrong and what is allowed."""


def save_routing(rmap: RoutingMap, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `rmap` as a .safetensors routing file, atomically: readers see the old file or the whole new one.

    The bytes go to a temp file of a unique name in the same folder (so threads and processes saving at once
    never share one), then replace the target (overwrite) or are linked to its name, which fails when that
    name exists: of several concurrent saves of one name without overwrite exactly one succeeds, the others
    raise FileExistsError.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"routing file '{path.name}': extension {path.suffix!r} is not allowed; use .safetensors")
    rmap.validate()
    if path.exists() and not overwrite:
        raise _exists(path)
    tensors = {"routes": rmap.routes, "window": rmap.window, "topk": rmap.topk}
    if rmap.error is not None:
        tensors["error"] = rmap.error
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": rmap.family,
                "layers": str(rmap.layers), "heads": str(rmap.heads), "made_by": rmap.made_by, "notes": rmap.notes}
    data = save(tensors, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_new(tmp, data)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path, data)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("saved routing %s (%dx%d, %s) to %s", rmap.family, rmap.layers, rmap.heads, rmap.made_by, path)
    return path


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(f"routing file '{path.name}' already exists in {path.parent}; "
                           "choose another name or pass overwrite=True to replace it")


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) and write `data` to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _link_new(tmp: Path, path: Path, data: bytes) -> None:
    """Give the written `tmp` the name `path` unless that name exists (FileExistsError); a file system without
    hard links gets an exclusive create of `path` instead (exclusive still, but not atomic for readers)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:
        try:
            _write_new(path, data)
        except FileExistsError:
            raise _exists(path) from None
        except BaseException:
            path.unlink(missing_ok=True)  # ours, part-written
            raise


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

    def no_constants(name: str) -> None:
        raise ValueError(f"constant {name} is not JSON")

    try:
        header = json.loads(text, object_pairs_hook=unique_keys, parse_constant=no_constants)
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
