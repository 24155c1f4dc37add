"""Setup shared by the kernel bench and its config sweep (bench/bench_attention.py, bench/bench_sweep.py).

The Wan shapes, the environment every JSON row carries, the timing (triton.testing.do_bench quantiles), the bf16
and int8 matmul peaks measured in the same run, and the one input factory (Liger's bench setup, Triton 06).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import torch
import triton
import triton.testing

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(_REPO / "tests"), str(_REPO / "bench")) if p not in sys.path]  # pack loader, peers
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.sparseflow.geometry import Geometry  # noqa: E402

__all__ = ["BLOCK", "D", "SHAPES", "bench", "environment", "fp8_peak", "int8_peak", "make_inputs", "matmul_peak"]

SHAPES = {  # name: (batch, heads, geometry); D = 128
    "wan13b_480p": (1, 12, Geometry(21, 30, 52)),
    "wan13b_480p_b2": (2, 12, Geometry(21, 30, 52)),
    "wan14b_720p": (1, 40, Geometry(21, 45, 80)),
    "wan22_5b_720p": (1, 24, Geometry(31, 22, 40)),
}
BLOCK = 128
D = 128


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--verify", "-q", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "uncommitted"
    except Exception:  # noqa: BLE001
        commit = "unknown"
    # the device tool's copy of the tree can carry a stale .git: $SPARSEFLOW_COMMIT, when set, wins
    commit = os.environ.get("SPARSEFLOW_COMMIT") or commit
    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit, "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def bench(fn, rep_ms: float = 300.0) -> tuple[float, float, float]:
    p20, p50, p80 = triton.testing.do_bench(fn, warmup=50, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    return p20, p50, p80


def matmul_peak() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = triton.testing.do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return 2 * 8192 ** 3 / ms / 1e9


def int8_peak() -> float:
    """int8 matmul peak (tera-ops/s) of torch._int_mm at 8192^3, int32 out; 0 where it does not run."""
    try:
        a, b = (torch.randint(-127, 128, (8192, 8192), device="cuda", dtype=torch.int8) for _ in range(2))
        ms = triton.testing.do_bench(lambda: torch._int_mm(a, b), warmup=100, rep=500, return_mode="median")
        return 2 * 8192 ** 3 / ms / 1e9
    except Exception:  # noqa: BLE001 - a device or build without int8 matmul: no int8 peak
        return 0.0


def fp8_peak() -> float:
    """e4m3 matmul peak (TFLOP/s) of torch._scaled_mm at 8192^3, fp32 scales, bf16 out; 0 where it does not run."""
    try:
        a = torch.randn(8192, 8192, device="cuda").to(torch.float8_e4m3fn)
        b = torch.randn(8192, 8192, device="cuda").to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
        one = torch.ones((), device="cuda")
        ms = triton.testing.do_bench(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16), warmup=100,
                                     rep=500, return_mode="median")
        return 2 * 8192 ** 3 / ms / 1e9
    except Exception:  # noqa: BLE001 - a device or build without e4m3 matmul: no fp8 peak
        return 0.0


def make_inputs(batch: int, heads: int, geometry: Geometry, seed: int = 0):
    """(B, L, H*D) bf16 q, k, v (ComfyUI's layout, for SparseFlow) and (B, H, L, D) contiguous copies (peers)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    comfy = [torch.randn(batch, geometry.length, heads * D, device="cuda", generator=g, dtype=torch.bfloat16)
             for _ in range(3)]
    bhld = [x.view(batch, geometry.length, heads, D).transpose(1, 2).contiguous() for x in comfy]
    return comfy, bhld
