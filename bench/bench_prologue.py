"""Time Wan's QK RMSNorm + RoPE: ComfyUI 0.3.64's code path against SparseFlow's fused prologue, one GPU.

ComfyUI's path is written out as 0.3.64 runs it on CUDA (comfy/rmsnorm.py `rms_norm` = torch's rms_norm with
the weight cast to the input dtype, `.view(b, s, n, d)`, comfy/ldm/flux/math.py `apply_rope1`), for q and for
k; the fused path is `sparseflow.prologue.norm_rope_qk` (kernels/norm_rope.py). Shapes: the CFG batch (B=2)
of Wan 2.1 1.3B 480p x 81f, Wan 2.2 5B 720p x 121f and Wan 2.1 14B 720p x 81f, fp16 (ComfyUI's default
weight dtype for Wan on an H100). Reports ms (do_bench median), the bytes the fused kernel must move (q, k
read and written, RoPE table read once) as GB/s, a device-to-device copy's GB/s measured in the same run, and
the relative difference of the two outputs.

    python3 bench/bench_prologue.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pack loader, as tests load it
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.sparseflow.prologue import norm_rope_qk  # noqa: E402

SHAPES = {  # name: (tokens L, model dim C, head_dim)
    "wan13b_480p": (32760, 1536, 128),
    "wan5b_720p": (27280, 3072, 128),
    "wan14b_720p": (75600, 5120, 128),
}


def comfy_path(q_lin, k_lin, wq, wk, freqs, eps, n, d):
    """0.3.64's WanSelfAttention q/k code on CUDA (torch >= 2.4 rms_norm)."""
    b, s = q_lin.shape[:2]

    def one(x, w):
        y = torch.nn.functional.rms_norm(x, w.shape, weight=w.to(x.dtype), eps=eps).view(b, s, n, d)
        x_ = y.to(dtype=freqs.dtype).reshape(*y.shape[:-1], -1, 1, 2)
        x_out = freqs[..., 0] * x_[..., 0]
        x_out.addcmul_(freqs[..., 1], x_[..., 1])
        return x_out.reshape(*y.shape).type_as(y)

    return one(q_lin, wq), one(k_lin, wk)


def rope_freqs(length: int, head_dim: int, device) -> torch.Tensor:
    ang = torch.rand(1, length, 1, head_dim // 2, device=device, dtype=torch.float32) * 2 * math.pi
    c, s = torch.cos(ang), torch.sin(ang)
    return torch.stack([c, -s, s, c], dim=-1).reshape(1, length, 1, head_dim // 2, 2, 2)


def main() -> None:
    import triton

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--shapes", default=",".join(SHAPES))
    a = p.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    buf = torch.empty(2 * 2**30 // 2, dtype=torch.float16, device=dev)
    dst = torch.empty_like(buf)
    copy_ms = triton.testing.do_bench(lambda src=buf, out=dst: out.copy_(src), warmup=50, rep=300)
    copy_gbs = 2 * buf.numel() * 2 / copy_ms / 1e6
    buf = dst = None
    rows = []
    for name in a.shapes.split(","):
        length, c, d = SHAPES[name]
        n = c // d
        q_lin, k_lin = (torch.randn(2, length, c, device=dev, dtype=torch.float16) for _ in range(2))
        wq, wk = (torch.rand(c, device=dev, dtype=torch.float16) + 0.5 for _ in range(2))
        freqs = rope_freqs(length, d, dev)
        ref = comfy_path(q_lin, k_lin, wq, wk, freqs, 1e-6, n, d)
        out = norm_rope_qk(q_lin, k_lin, wq, wk, freqs, 1e-6, d, backend="triton")
        rel = max(float((o.float().view(r.shape) - r.float()).norm() / r.float().norm()) for o, r in zip(out, ref))
        t_comfy = triton.testing.do_bench(lambda q=q_lin, k=k_lin: comfy_path(q, k, wq, wk, freqs, 1e-6, n, d),
                                          warmup=50, rep=300)
        t_fused = triton.testing.do_bench(lambda q=q_lin, k=k_lin: norm_rope_qk(q, k, wq, wk, freqs, 1e-6, d,
                                                                               backend="triton"),
                                          warmup=50, rep=300)
        moved = 2 * (2 * 2 * length * c * 2) + freqs.numel() * 4  # q, k read + written (fp16), table once
        rows.append({"shape": name, "B": 2, "L": length, "C": c, "comfyui_ms": t_comfy, "fused_ms": t_fused,
                     "speedup": t_comfy / t_fused, "fused_GBps": moved / t_fused / 1e6, "copy_GBps": copy_gbs,
                     "rel_diff": rel})
        print(json.dumps(rows[-1]), flush=True)
        q_lin = k_lin = ref = out = None
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    print("\n| shape | ComfyUI 0.3.64 q+k norm + RoPE ms | fused ms | speed-up | fused GB/s (copy GB/s) | rel. diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} (B=2, L={r['L']}, C={r['C']}) | {r['comfyui_ms']:.3f} | {r['fused_ms']:.3f} | "
              f"{r['speedup']:.1f}x | {r['fused_GBps']:.0f} ({r['copy_GBps']:.0f}) | {r['rel_diff']:.1e} |")
    print(json.dumps(env))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "prologue.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
