"""Routing maps: presets, overrides, in-memory validation, safetensors round trip and rejected files."""

import json
import math
import pickle
import struct

import pytest
import torch
from comfyui_sparseflow.sparseflow.routing import (
    DEFAULT_ROUTING,
    DENSE,
    EDGE_WINDOW,
    LINEAR,
    ROUTING_PRESETS,
    SPARSE,
    RoutingMap,
    parse_overrides,
    routing_preset,
    routing_to_json,
    summary,
    with_overrides,
)
from comfyui_sparseflow.sparseflow.routing_file import RoutingFileError, load_routing, save_routing

LAYERS, HEADS = 6, 8


def _calibrated_map() -> RoutingMap:
    g = torch.Generator().manual_seed(0)
    routes = torch.randint(0, 3, (LAYERS, HEADS), generator=g).to(torch.int8)
    window = torch.randint(-1, 65, (LAYERS, HEADS), generator=g).to(torch.int16)
    topk = torch.randint(-1, 65, (LAYERS, HEADS), generator=g).to(torch.int16)
    error = torch.rand(LAYERS, HEADS, generator=g)
    return RoutingMap(routes, window, topk, error, "wan2.1", "calibration", "seed 0, 4 prompts")


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "wan21_cal.safetensors"
    save_routing(_calibrated_map(), path)
    return path


# -- presets -------------------------------------------------------------------------------------------------


def test_heuristic_preset_has_dense_ends_and_every_third_head_linear():
    m = routing_preset("heuristic", 40, 40, "wan2.1")
    assert m.head_routes(0) == (DENSE,) * 40 and m.head_routes(39) == (DENSE,) * 40
    assert m.head_routes(5)[:6] == (SPARSE, SPARSE, LINEAR, SPARSE, SPARSE, LINEAR)
    # 38 middle layers x (13 linear + 27 sparse) heads
    assert m.counts() == {"dense": 80, "sparse": 38 * 27, "linear": 38 * 13}
    assert m.made_by == "preset:heuristic" and m.family == "wan2.1" and m.error is None
    assert m.head_window(3) == (-1,) * 40 and m.head_topk(3) == (-1,) * 40


def test_default_preset_routes_the_edge_layers_sparse_at_a_fixed_window():
    """heuristic_sparse_edges (the default): heuristic's middle layers; its first and last layers sparse in every
    head at EDGE_WINDOW, the only heads whose window does not follow the schedule."""
    assert DEFAULT_ROUTING == "heuristic_sparse_edges" and EDGE_WINDOW == 2
    m = routing_preset(DEFAULT_ROUTING, 40, 40, "wan2.1")
    base = routing_preset("heuristic", 40, 40, "wan2.1")
    assert m.head_routes(0) == (SPARSE,) * 40 and m.head_routes(39) == (SPARSE,) * 40
    assert torch.equal(m.routes[1:39], base.routes[1:39])
    assert m.head_window(0) == (2,) * 40 and m.head_window(39) == (2,) * 40
    assert (m.window[1:39] == -1).all() and (m.topk == -1).all()
    assert m.counts() == {"dense": 0, "sparse": 38 * 27 + 80, "linear": 38 * 13}
    assert m.made_by == "preset:heuristic_sparse_edges" and m.family == "wan2.1" and m.error is None
    assert routing_preset(DEFAULT_ROUTING, 1, 4).head_window(0) == (2,) * 4  # one layer: first and last


@pytest.mark.parametrize("name, counts", [
    ("all_sparse", {"dense": 0, "sparse": 15, "linear": 0}),
    ("all_linear", {"dense": 0, "sparse": 0, "linear": 15}),
    ("all_dense", {"dense": 15, "sparse": 0, "linear": 0}),
    ("alternating", {"dense": 0, "sparse": 9, "linear": 6}),
    ("heuristic", {"dense": 10, "sparse": 4, "linear": 1}),  # layers 0 and 2 dense; layer 1: head 2 linear
    ("heuristic_sparse_edges", {"dense": 0, "sparse": 14, "linear": 1}),  # layers 0 and 2 all sparse
])
def test_preset_counts(name, counts):
    m = routing_preset(name, 3, 5)
    assert m.counts() == counts
    assert (m.layers, m.heads) == (3, 5)
    assert name in ROUTING_PRESETS


def test_alternating_puts_even_heads_sparse_and_odd_heads_linear():
    m = routing_preset("alternating", 2, 5)
    assert m.head_routes(1) == (SPARSE, LINEAR, SPARSE, LINEAR, SPARSE)
    assert m.route_of(1, 3) == "linear" and m.route_of(0, 4) == "sparse"


def test_single_layer_heuristic_is_all_dense():
    assert routing_preset("heuristic", 1, 4).counts() == {"dense": 4, "sparse": 0, "linear": 0}


def test_preset_errors_name_the_input():
    with pytest.raises(ValueError, match="all_sparse.*heuristic.*got 'fastest'"):
        routing_preset("fastest", 4, 4)
    with pytest.raises(ValueError, match=r"heads must be an int in \[1, 128\] \(Wan has at most 40 layers and 40 "
                                         r"heads\), got 0"):
        routing_preset("all_sparse", 4, 0)
    with pytest.raises(ValueError, match="family 'sdxl' is unknown; allowed: wan2.1"):
        routing_preset("all_sparse", 4, 4, family="sdxl")
    with pytest.raises(ValueError, match="layer must be an int in \\[0, 3\\]"):
        routing_preset("all_sparse", 4, 4).head_routes(4)


# -- in-memory validation --------------------------------------------------------------------------------------


def test_in_memory_validation_names_field():
    ok = routing_preset("all_sparse", 2, 3)
    r, w, k = ok.routes, ok.window, ok.topk
    with pytest.raises(ValueError, match="'<memory>'.*routes has dtype torch.int32; allowed: torch.int8"):
        RoutingMap(r.int(), w, k, None, "generic", "x")
    with pytest.raises(ValueError, match="window has shape \\(2, 4\\) but routes has \\(2, 3\\)"):
        RoutingMap(r, torch.zeros(2, 4, dtype=torch.int16), k, None, "generic", "x")
    with pytest.raises(ValueError, match="routes\\[1, 2\\] = 5; allowed route codes"):
        bad = r.clone()
        bad[1, 2] = 5
        RoutingMap(bad, w, k, None, "generic", "x")
    with pytest.raises(ValueError, match="topk\\[0, 0\\] = -2; allowed: -1"):
        RoutingMap(r, w, torch.full((2, 3), -2, dtype=torch.int16), None, "generic", "x")
    with pytest.raises(ValueError, match="error\\[0, 1\\] = inf; allowed: finite"):
        RoutingMap(r, w, k, torch.tensor([[0.0, math.inf, 0.0], [0.0, 0.0, 0.0]]), "generic", "x")
    m = routing_preset("all_sparse", 2, 3)
    m.routes[0, 0] = 9  # in-place change after construction is caught by validate(source)
    with pytest.raises(ValueError, match="routing map 'my.json': routes\\[0, 0\\] = 9"):
        m.validate("my.json")


# -- overrides -------------------------------------------------------------------------------------------------


def test_overrides_replace_only_named_heads_and_keep_the_rest():
    base = _calibrated_map()
    base_routes = base.routes.clone()
    m = with_overrides(base, {"3.7": "dense", "0.0": "linear", "5.1": "sparse"})
    assert m.route_of(3, 7) == "dense" and m.route_of(0, 0) == "linear" and m.route_of(5, 1) == "sparse"
    changed = (m.routes != base.routes).nonzero().tolist()
    assert all(tuple(c) in {(3, 7), (0, 0), (5, 1)} for c in changed)
    assert torch.equal(m.window, base.window) and torch.equal(m.error, base.error)
    assert m.made_by == "calibration+overrides" and m.family == base.family
    assert with_overrides(base, {}) is base
    assert torch.equal(base.routes, base_routes)  # the base map is not modified


@pytest.mark.parametrize("overrides, match", [
    ({"6.0": "dense"}, "override '6.0' is out of range; the map has layers 0..5 and heads 0..7"),
    ({"0.8": "dense"}, "override '0.8' is out of range"),
    ({"3": "dense"}, "key '3' is malformed; allowed: 'layer.head'"),
    ({"a.b": "dense"}, "key 'a.b' is malformed"),
    ({"-1.2": "dense"}, "key '-1.2' is malformed"),
    ({"1.2": "fast"}, "override '1.2': route 'fast' is unknown; allowed: dense, sparse, linear"),
    ({"1.2": 1}, "override '1.2': route 1 is unknown"),
])
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        with_overrides(_calibrated_map(), overrides)


def test_parse_overrides_accepts_objects_only():
    assert parse_overrides("") == {} and parse_overrides("  \n") == {}
    assert parse_overrides('{"3.7": "dense", "0.1": "linear"}') == {"3.7": "dense", "0.1": "linear"}
    with pytest.raises(ValueError, match="must be a JSON object.*got a JSON list"):
        parse_overrides('[["3.7", "dense"]]')
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_overrides('{"3.7": dense}')
    with pytest.raises(ValueError, match="key '3,7' is malformed"):
        parse_overrides('{"3,7": "dense"}')


# -- files: round trip ---------------------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_identical(good_file):
    src = _calibrated_map()
    m = load_routing(good_file, expect_family="wan2.1", expect_shape=(LAYERS, HEADS))
    for name in ("routes", "window", "topk", "error"):
        a, b = getattr(m, name), getattr(src, name)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
        assert a.view(torch.uint8).tolist() == b.view(torch.uint8).tolist(), name
    assert (m.family, m.made_by, m.notes) == (src.family, src.made_by, src.notes)


def test_round_trip_without_error_and_metadata_strings(tmp_path):
    src = routing_preset("heuristic", 4, 6, "wan2.2-5b")
    path = save_routing(src, tmp_path / "sub" / "h.safetensors")
    header, _ = _split(path.read_bytes())
    assert header["__metadata__"] == {"format": "sparseflow.routing", "format_version": "1", "family": "wan2.2-5b",
                                      "layers": "4", "heads": "6", "made_by": "preset:heuristic", "notes": ""}
    assert set(header) == {"__metadata__", "routes", "window", "topk"}
    m = load_routing(path)
    assert m.error is None and torch.equal(m.routes, src.routes) and m.made_by == "preset:heuristic"


def test_save_refuses_to_overwrite_unless_asked(good_file):
    before = good_file.read_bytes()
    other = routing_preset("all_dense", LAYERS, HEADS)
    with pytest.raises(FileExistsError, match="'wan21_cal.safetensors' already exists.*overwrite=True"):
        save_routing(other, good_file)
    assert good_file.read_bytes() == before
    save_routing(other, good_file, overwrite=True)
    assert load_routing(good_file).counts()["dense"] == LAYERS * HEADS
    assert sorted(p.name for p in good_file.parent.iterdir()) == ["wan21_cal.safetensors"]  # no temp file left


def test_save_refuses_other_extensions(tmp_path):
    with pytest.raises(ValueError, match="extension '.pt' is not allowed"):
        save_routing(_calibrated_map(), tmp_path / "map.pt")


def test_json_and_summary_describe_the_map():
    m = _calibrated_map()
    data = routing_to_json(m)
    json.dumps(data, allow_nan=False)
    assert (data["layers"], data["heads"]) == (LAYERS, HEADS)
    assert data["routes"] == m.routes.tolist() and len(data["error"]) == LAYERS and len(data["error"][0]) == HEADS
    assert data["counts"] == m.counts() and routing_to_json(routing_preset("all_dense", 2, 2))["error"] is None
    text = summary(m)
    assert "wan2.1" in text and f"{LAYERS}x{HEADS}" in text and "calibration" in text
    assert all(f"{k} {v} " in text for k, v in m.counts().items())


# -- files: rejected -----------------------------------------------------------------------------------------

_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return "owned"


class _Evil:
    def __reduce__(self):
        return (_record_unpickling, ())


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt", "evil.pth", "evil.bin", "evil.safetensors"])
def test_pickle_files_are_rejected_without_unpickling(tmp_path, name):
    payload = pickle.dumps({"routes": _Evil()})
    assert pickle.loads(payload)["routes"] == "owned" and _UNPICKLED  # the payload really runs code when unpickled
    _UNPICKLED.clear()
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(RoutingFileError) as info:
        load_routing(path)
    assert f"routing file '{name}'" in str(info.value)
    if not name.endswith(".safetensors"):
        assert "never loaded" in str(info.value)
    assert not _UNPICKLED


def _set(header: dict, path: list, value) -> dict:
    node = header
    for key in path[:-1]:
        node = node[key]
    if value is _DEL:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return header


_DEL = object()


def _raw(text: str, body: bytes) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _patch_body(header: dict, body: bytes, tensor: str, index: int, packed: bytes) -> bytes:
    begin = header[tensor]["data_offsets"][0] + index * len(packed)
    return body[:begin] + packed + body[begin + len(packed):]


# Each case: (id, mutation of (header, body) -> bytes, regex the message must match after the file name).
_CORRUPTIONS = [
    ("missing_tensor", lambda h, b: _join(_set(h, ["topk"], _DEL), b), "tensor 'topk' is missing"),
    ("extra_tensor", lambda h, b: _join(_set(h, ["bias"], dict(h["routes"])), b), "unexpected tensor 'bias'"),
    ("wrong_dtype", lambda h, b: _join(_set(h, ["routes", "dtype"], "U8"), b), "tensor 'routes' has dtype 'U8'"),
    ("dtype_swap", lambda h, b: _join(_set(h, ["error", "dtype"], "F16"), b), "tensor 'error' has dtype 'F16'"),
    ("rank_3", lambda h, b: _join(_set(h, ["routes", "shape"], [LAYERS, HEADS, 1]), b),
     "tensor 'routes' has shape .*allowed: 2-D"),
    ("shapes_differ", lambda h, b: _join(_set(h, ["window", "shape"], [HEADS, LAYERS]), b),
     "tensor 'window' has shape \\[8, 6\\] but another tensor has \\[6, 8\\]"),
    ("zero_layers", lambda h, b: _join(_set(h, ["routes", "shape"], [0, HEADS]), b),
     "tensor 'routes' has shape \\[0, 8\\]; allowed: layers and heads in \\[1, 128\\]"),
    ("huge_heads", lambda h, b: _join(_set(h, ["error", "shape"], [LAYERS, 5000]), b),
     "tensor 'error' has shape \\[6, 5000\\]"),
    ("offsets_past_end", lambda h, b: _join(_set(h, ["routes", "data_offsets"], [len(b) - 10, len(b) + 38]), b),
     "tensor 'routes' has data_offsets .*allowed: 0 <= begin <= end"),
    ("offsets_overlap", lambda h, b: _join(_set(h, ["routes", "data_offsets"], [0, 48]), b),
     "tensor 'error' data_offsets \\[0, 192\\] overlaps the previous tensor"),
    ("offsets_gap", lambda h, b: _join(_set(h, ["topk", "data_offsets"], h["window"]["data_offsets"]), b),
     "tensor 'topk' data_offsets \\[288, 384\\] leaves a gap at byte 192"),
    ("offsets_wrong_size", lambda h, b: _join(_set(h, ["topk", "data_offsets"], [0, 4]), b),
     "tensor 'topk' has data_offsets \\[0, 4\\] spanning 4 bytes"),
    ("trailing_bytes", lambda h, b: _join(h, b + b"\0" * 16), "tensors cover 432 of 448 data bytes"),
    ("metadata_missing", lambda h, b: _join(_set(h, ["__metadata__"], _DEL), b), "metadata is missing"),
    ("metadata_key_missing", lambda h, b: _join(_set(h, ["__metadata__", "made_by"], _DEL), b),
     "metadata 'made_by' is missing"),
    ("format_mismatch", lambda h, b: _join(_set(h, ["__metadata__", "format"], "kohya.lora"), b),
     "metadata format is 'kohya.lora'; allowed: 'sparseflow.routing'"),
    ("version_unsupported", lambda h, b: _join(_set(h, ["__metadata__", "format_version"], "2"), b),
     "metadata format_version '2' is unsupported"),
    ("family_unknown", lambda h, b: _join(_set(h, ["__metadata__", "family"], "flux"), b),
     "metadata family 'flux' is unknown; allowed: wan2.1"),
    ("layers_mismatch", lambda h, b: _join(_set(h, ["__metadata__", "layers"], "7"), b),
     "metadata layers is '7' but the tensors have 6"),
    ("metadata_not_str", lambda h, b: _join(_set(h, ["__metadata__", "notes"], 3), b), "metadata 'notes' is 3"),
    ("nan_error", lambda h, b: _join(h, _patch_body(h, b, "error", 5, struct.pack("<f", math.nan))),
     "error\\[0, 5\\] = nan; allowed: finite"),
    ("inf_error", lambda h, b: _join(h, _patch_body(h, b, "error", 9, struct.pack("<f", -math.inf))),
     "error\\[1, 1\\] = -inf"),
    ("route_code_3", lambda h, b: _join(h, _patch_body(h, b, "routes", 10, b"\x03")),
     "routes\\[1, 2\\] = 3; allowed route codes: 0 dense, 1 sparse, 2 linear"),
    ("window_65", lambda h, b: _join(h, _patch_body(h, b, "window", 0, struct.pack("<h", 65))),
     "window\\[0, 0\\] = 65; allowed: -1 .* or 0..64"),
    ("topk_minus_2", lambda h, b: _join(h, _patch_body(h, b, "topk", 47, struct.pack("<h", -2))),
     "topk\\[5, 7\\] = -2"),
    ("header_len_huge", lambda h, b: struct.pack("<Q", 2 ** 64 - 1) + _join(h, b)[8:],
     "header length 18446744073709551615 is larger than 1048576"),
    ("header_len_past_end", lambda h, b: struct.pack("<Q", 4096) + _join(h, b)[8:],
     "header length 4096 runs past the end"),
    ("short_file", lambda h, b: b"\x10\0\0", "file is 3 bytes, shorter than the 8-byte header length"),
    ("empty_file", lambda h, b: b"", "file is 0 bytes"),
    ("not_utf8", lambda h, b: struct.pack("<Q", 4) + b'{"\xff}' + b, "header is not valid UTF-8"),
    ("not_json", lambda h, b: struct.pack("<Q", 9) + b'{"a": 1,}' + b, "header is not valid JSON"),
    ("json_array", lambda h, b: struct.pack("<Q", 2) + b"[]" + b, "header does not start with '\\{'"),
    ("duplicate_key", lambda h, b: _raw(json.dumps(h).replace('"routes"', '"topk"'), b),
     "header is not valid JSON \\(duplicate key 'topk'\\)"),
    ("nan_constant", lambda h, b: _raw(json.dumps(h).replace('"shape": [6, 8]', '"shape": [NaN, 8]', 1), b),
     "header is not valid JSON \\(constant NaN is not JSON\\)"),
    ("lone_surrogate", lambda h, b: _raw(json.dumps(h).replace('"notes": "', '"notes": "\\ud800', 1), b),
     "header holds a string that is not valid Unicode"),
    ("entry_not_object", lambda h, b: _join(_set(h, ["routes"], [1, 2]), b), "tensor 'routes' entry is malformed"),
    ("offsets_float", lambda h, b: _join(_set(h, ["routes", "data_offsets"], [0.0, 48.0]), b),
     "tensor 'routes' has data_offsets \\[0.0, 48.0\\]; allowed: \\[begin, end\\] integers"),
]


@pytest.mark.parametrize("mutate, match", [c[1:] for c in _CORRUPTIONS], ids=[c[0] for c in _CORRUPTIONS])
def test_corrupted_file_is_rejected_naming_file_and_field(good_file, mutate, match):
    header, body = _split(good_file.read_bytes())
    good_file.write_bytes(mutate(header, body))
    with pytest.raises(RoutingFileError, match="^routing file 'wan21_cal.safetensors': " + match):
        load_routing(good_file)


def test_file_level_problems_are_named(tmp_path, good_file):
    with pytest.raises(RoutingFileError, match="routing file 'nope.safetensors': file not found"):
        load_routing(tmp_path / "nope.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(RoutingFileError, match="routing file 'dir.safetensors': is not a regular file"):
        load_routing(tmp_path / "dir.safetensors")
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)
    with pytest.raises(RoutingFileError, match="'big.safetensors': file is 16777217 bytes; allowed: at most"):
        load_routing(big)
    with pytest.raises(RoutingFileError, match="'wan21_cal.safetensors': family is 'wan2.1' but the model is "
                                               "'wan2.2-14b'"):
        load_routing(good_file, expect_family="wan2.2-14b")
    with pytest.raises(RoutingFileError, match="shape is 6x8 \\(layers x heads\\) but the model has 40x40"):
        load_routing(good_file, expect_shape=(40, 40))
    assert issubclass(RoutingFileError, ValueError)


def test_the_widgets_js_mirror_lists_the_same_presets_and_default():
    """web/js/routing_math.js draws the grid before a run from its own copy of the presets: the names and the
    default must be Python's (the routes themselves are checked under node in tests/browser/routing_math.test.mjs)."""
    import re
    from pathlib import Path

    js = (Path(__file__).resolve().parents[1] / "web" / "js" / "routing_math.js").read_text()
    listed = re.search(r"export const PRESETS = \[([^\]]*)\]", js).group(1)
    assert tuple(re.findall(r'"([a-z_]+)"', listed)) == ROUTING_PRESETS
    assert re.search(r'export const DEFAULT_PRESET = "([a-z_]+)"', js).group(1) == DEFAULT_ROUTING
