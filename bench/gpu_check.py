"""Quick GPU check of the op's dispatch: all-dense calls (SDPA) and a heuristic-routed call vs ComfyUI's SDPA default.

Run on the GPU machine: `python3 bench/gpu_check.py`. Prints one line per row (median ms, triton.testing.do_bench).
"""

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pack loader, as tests load it
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.sparseflow import ops  # noqa: E402
from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan  # noqa: E402

G = Geometry(21, 30, 52)  # Wan 2.1 1.3B 480p x 81f
H = 12


def main() -> None:
    for b in (1, 2):
        q, k, v = (torch.randn(b, G.length, H * 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sdpa = triton.testing.do_bench(lambda: ops._sdpa_dense(q, k, v, H), return_mode="median")
        rows = {"all-dense": AttentionPlan(G, (DENSE,) * H, (0,) * H, (0,) * H)}
        routes = tuple(LINEAR if h % 3 == 2 else SPARSE for h in range(H))
        for w in (0, 1, 2):
            rows[f"heuristic layer, window {w}"] = AttentionPlan(G, routes, (w,) * H, (0,) * H, compensation=True)
        for name, plan in rows.items():
            ms = triton.testing.do_bench(lambda: ops.attention(q, k, v, plan, heads=H, backend="triton"),
                                         return_mode="median")
            print(f"B={b} {name:28s} {ms:8.3f} ms   SDPA default {sdpa:8.3f} ms   speed-up {sdpa / ms:5.2f}x")


if __name__ == "__main__":
    main()
