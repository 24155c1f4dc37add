"""Render a routing map as a PNG (layers x heads grid coloured by route), with no imaging dependency.

The colours match the web widget (web/js/routing_math.js): dense grey, sparse blue, linear orange.
"""

from __future__ import annotations

import struct
import zlib

import torch

__all__ = ["ROUTE_COLORS", "encode_png", "routing_png"]

ROUTE_COLORS = {0: (150, 150, 150), 1: (52, 120, 246), 2: (245, 145, 40)}
_GRID = (30, 30, 30)


def encode_png(rgb: torch.Tensor) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (8-bit RGB, no filter)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].contiguous().numpy().tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def routing_png(routes: torch.Tensor, cell: int = 16) -> bytes:
    """PNG of a (layers, heads) route-code table: one row per layer, one column per head."""
    layers, heads = routes.shape
    img = torch.empty(layers * cell + 1, heads * cell + 1, 3, dtype=torch.uint8)
    img[:] = torch.tensor(_GRID, dtype=torch.uint8)
    for layer in range(layers):
        for head in range(heads):
            color = torch.tensor(ROUTE_COLORS[int(routes[layer, head])], dtype=torch.uint8)
            img[layer * cell + 1:(layer + 1) * cell, head * cell + 1:(head + 1) * cell] = color
    return encode_png(img)
