"""Run telemetry summary and the routing PNG."""

import struct
import zlib

import torch
from comfyui_sparseflow.sparseflow.render import ROUTE_COLORS, routing_png
from comfyui_sparseflow.sparseflow.telemetry import CallRecord, RunTelemetry


def _rec(step, layer, window, pairs, routes=(1, 2), dense=False):
    return CallRecord(step=step, progress=step / 3, layer=layer, window=window, topk=0, dense_step=dense,
                      routes=routes, pairs=pairs, dense_pairs=100, backend="reference")


def test_summary_reports_steps_density_routes_savings_backend():
    t = RunTelemetry()
    for step, window in enumerate((0, 1)):
        for layer in range(2):
            t.record(_rec(step, layer, window, pairs=20 + 10 * step))
    t.note_passthrough("cross-attention")
    assert t.density_per_step() == {0: 0.2, 1: 0.3}
    assert t.step_params() == {0: (0, 0, False), 1: (1, 0, False)}
    assert t.route_counts() == {"dense": 0, "sparse": 2, "linear": 2}
    text = t.summary()
    assert "2 steps" in text and "[0.20 0.30]" in text and "saved 75%" in text and "reference" in text
    assert "cross-attention x1" in text and "precision" not in text
    t.precision = "int8-qk"
    assert ", precision int8-qk (sparse, linear and mixed calls)" in t.summary()
    t.reset()
    assert t.summary().startswith("SparseFlow: no self-attention call")


def test_routing_png_is_a_valid_png_with_route_colours():
    routes = torch.tensor([[0, 1, 2], [2, 1, 0]], dtype=torch.int8)
    data = routing_png(routes, cell=4)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (3 * 4 + 1, 2 * 4 + 1)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + idat_len])
    row = raw[1 + 2 * (1 + w * 3):][: w * 3]  # third scanline (inside row 0 of cells), after its filter byte
    assert tuple(row[3 * 1:3 * 2]) == ROUTE_COLORS[0]
    assert tuple(row[3 * 5:3 * 6]) == ROUTE_COLORS[1]
    assert tuple(row[3 * 9:3 * 10]) == ROUTE_COLORS[2]


def test_flops_saved_counts_the_pooled_reads_density_only_exact_pairs():
    t = RunTelemetry()
    t.record(CallRecord(step=0, progress=0.0, layer=0, window=0, topk=0, dense_step=False, routes=(1, 2), pairs=20,
                        dense_pairs=100, backend="triton", cost=30))
    assert t.density_per_step() == {0: 0.2}
    assert abs(t.flops_saved() - 0.7) < 1e-12
