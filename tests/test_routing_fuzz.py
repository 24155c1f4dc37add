"""Fuzzing the routing-file loader: every corrupted file loads a valid map or raises RoutingFileError, quickly."""

import json
import random
import struct
import time

import torch
from comfyui_sparseflow.sparseflow.routing import RoutingMap
from comfyui_sparseflow.sparseflow.routing_file import RoutingFileError, load_routing, save_routing

LAYERS, HEADS = 5, 7
_DTYPES = ["I8", "U8", "I16", "U16", "I32", "I64", "F16", "BF16", "F32", "F64", "BOOL", "F8_E4M3", "i8", "", 8, None,
           ["I8"]]
_SHAPES = [[], [LAYERS], [HEADS, LAYERS], [LAYERS, HEADS, 1], [0, HEADS], [LAYERS, 0], [-1, HEADS], [2 ** 63, 1],
           [2 ** 64 + 5, HEADS], [LAYERS, 4097], [LAYERS * HEADS, 1], [1, LAYERS * HEADS], [LAYERS, HEADS + 1],
           [LAYERS, "7"], [LAYERS, 7.0], [True, HEADS], None, "5x7", {"0": 5}]


def _valid_bytes(tmp_path) -> bytes:
    g = torch.Generator().manual_seed(1)
    rmap = RoutingMap(
        torch.randint(0, 3, (LAYERS, HEADS), generator=g).to(torch.int8),
        torch.randint(-1, 65, (LAYERS, HEADS), generator=g).to(torch.int16),
        torch.randint(-1, 65, (LAYERS, HEADS), generator=g).to(torch.int16),
        torch.rand(LAYERS, HEADS, generator=g),
        "wan2.2-14b", "calibration", "fuzz seed")
    path = tmp_path / "seed.safetensors"
    save_routing(rmap, path)
    return path.read_bytes()


def _split(data: bytes) -> tuple[int, dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n]), data[8 + n:]


def _with_header(text: str, body: bytes) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + body


def _header_mutations(header: dict, body: bytes) -> list[tuple[str, bytes]]:
    out = []

    def add(name: str, mutate) -> None:
        h = json.loads(json.dumps(header))
        mutate(h)
        out.append((name, _with_header(json.dumps(h), body)))

    tensors = ["routes", "window", "topk", "error"]
    for t in tensors:
        for d in _DTYPES:
            add(f"dtype {t}={d!r}", lambda h, t=t, d=d: h[t].__setitem__("dtype", d))
        for s in _SHAPES:
            add(f"shape {t}={s!r}", lambda h, t=t, s=s: h[t].__setitem__("shape", s))
        begin, end = header[t]["data_offsets"]
        for offs in ([begin, end + 1], [begin - 1, end], [end, begin], [0, len(body) + 1], [-5, end],
                     [begin, 2 ** 64], [begin], [begin, end, end], None, [str(begin), end], [begin + 0.5, end],
                     [len(body), len(body)], [0, 0], [begin + 1, end + 1]):
            add(f"offsets {t}={offs!r}", lambda h, t=t, o=offs: h[t].__setitem__("data_offsets", o))
        add(f"delete {t}", lambda h, t=t: h.pop(t))
        add(f"entry {t} extra key", lambda h, t=t: h[t].__setitem__("extra", 1))
        add(f"entry {t} not object", lambda h, t=t: h.__setitem__(t, "routes"))
        add(f"rename {t}", lambda h, t=t: h.__setitem__(t.upper(), h.pop(t)))
    for key in ["format", "format_version", "family", "layers", "heads", "made_by", "notes"]:
        add(f"metadata delete {key}", lambda h, k=key: h["__metadata__"].pop(k))
        for value in (None, 1, "", "x" * 1000, ["a"], "wan2.1", "1", "sparseflow.routing", "\u00e9\u4e2d"):
            add(f"metadata {key}={value!r}"[:60], lambda h, k=key, v=value: h["__metadata__"].__setitem__(k, v))
    add("metadata delete", lambda h: h.pop("__metadata__"))
    add("metadata list", lambda h: h.__setitem__("__metadata__", ["format"]))
    add("metadata extra key", lambda h: h["__metadata__"].__setitem__("author", "me"))
    add("extra tensor", lambda h: h.__setitem__("bias", dict(h["routes"])))
    text = json.dumps(header)
    for name, bad in [("duplicate routes", text.replace('"topk"', '"routes"')),
                      ("duplicate metadata", text.replace('"notes"', '"family"')),
                      ("array", "[]"), ("number", "12345"), ("string", '"routes"'), ("null", "null"),
                      ("empty object", "{}"), ("empty", ""), ("spaces", " " * 64), ("leading space", " " + text),
                      ("trailing spaces", text + " " * 7), ("trailing garbage", text + "}"), ("truncated", text[:-1]),
                      ("NaN", text.replace("[0,", "[NaN,", 1).replace("[0, ", "[NaN, ", 1)),
                      ("Infinity", text.replace('"shape": [5', '"shape": [Infinity', 1)),
                      ("deep nesting", "{" + '"a":' + "[" * 200_000 + "]" * 200_000 + "}"),
                      ("huge int", text.replace('"shape": [5', '"shape": [' + "9" * 5000, 1)),
                      ("lone surrogate", text.replace('"notes": "', '"notes": "\\ud800', 1)),
                      ("raw surrogate", text.replace('"notes": "', '"notes": "\ud800', 1)),
                      ("nul byte", text.replace("routes", "rou\u0000tes", 1))]:
        out.append((f"json {name}", _with_header(bad, body)))
    return out


def _variants(data: bytes) -> list[tuple[str, bytes]]:
    n, header, body = _split(data)
    rng = random.Random(20250101)
    out: list[tuple[str, bytes]] = [("original", data)]
    # -- seeded random byte flips: anywhere, in the header, in the data
    for i in range(150):
        b = bytearray(data)
        lo, hi = [(0, len(data)), (8, 8 + n), (8 + n, len(data))][i % 3]
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        out.append((f"flip {i}", bytes(b)))
    # -- truncations in every region: length field, header, each tensor, last byte
    cuts = set(range(0, 9)) | set(range(8, 8 + n + 1, 13)) | {8 + n - 1, 8 + n, 8 + n + 1, len(data) - 1}
    for entry in (v for k, v in header.items() if k != "__metadata__"):
        begin, end = entry["data_offsets"]
        cuts |= {8 + n + begin + 1, 8 + n + (begin + end) // 2, 8 + n + end - 1}
    out += [(f"truncate {c}", data[:c]) for c in sorted(cuts) if c < len(data)]
    # -- header length field: huge, "negative" as u64, off by one, zero
    for value in (2 ** 64 - 1, 2 ** 63, 2 ** 64 - n, 2 ** 32 + n, 2 ** 20 + 1, len(data), n + 1, n - 1, 0, 1, 2):
        out.append((f"header length {value}", struct.pack("<Q", value) + data[8:]))
    out.append(("appended byte", data + b"\0"))
    out.append(("appended tensor-sized", data + body))
    out += _header_mutations(header, body)
    return out


def test_every_corrupted_routing_file_loads_valid_or_raises_routing_file_error(tmp_path):
    variants = _variants(_valid_bytes(tmp_path))
    assert len(variants) >= 200, len(variants)
    path = tmp_path / "fuzz.safetensors"
    outcomes = {"valid": 0, "rejected": 0}
    failures = []
    slowest = (0.0, "")
    start = time.perf_counter()
    for name, blob in variants:
        path.write_bytes(blob)
        t0 = time.perf_counter()
        try:
            rmap = load_routing(path)
        except RoutingFileError as e:
            outcomes["rejected"] += 1
            if "routing file 'fuzz.safetensors': " not in str(e):
                failures.append(f"{name}: message lacks the file name: {e}")
        except Exception as e:  # noqa: BLE001 - any other exception is the failure under test
            failures.append(f"{name}: {type(e).__name__}: {e}"[:300])
        else:
            outcomes["valid"] += 1
            try:
                rmap.validate(name)
                assert (rmap.layers, rmap.heads) == tuple(rmap.routes.shape)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{name}: loaded an invalid map: {e}"[:300])
        dt = time.perf_counter() - t0
        slowest = max(slowest, (dt, name))
    total = time.perf_counter() - start
    assert not failures, f"{len(failures)} of {len(variants)} variants failed:\n" + "\n".join(failures[:20])
    assert total < 20.0, f"{len(variants)} loads took {total:.1f}s; slowest {slowest[1]} {slowest[0]:.2f}s"
    # The fuzzer exercises both outcomes: the original and benign flips load, corruptions are refused.
    assert outcomes["valid"] >= 1 and outcomes["rejected"] >= 200, outcomes
