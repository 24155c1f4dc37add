"""Launch shapes of the block passes' kernels at Wan shapes, one GPU: the fused QK prologue (kernels/norm_rope.py,
in place) and the residual add + LayerNorm kernel (kernels/residual_norm.py: norm1 modulated, add + norm2
modulated, the FFN pieces' gated add), CFG batch B=2, fp16, for BLOCK_T in (1, 2, 4) and 4 / 8 / 16 warps.
Reports ms (triton do_bench median), GB/s of the bytes each pass must move, and whether the output equals the
shipped launch shape's bit for bit (a different warp count may sum the norm's squares in another order).

    python3 bench/sweep_block_passes.py [--out DIR]     # writes DIR/sweep_passes.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pack loader, as tests load it
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.kernels import norm_rope as nr  # noqa: E402
from comfyui_sparseflow.kernels import residual_norm as rn  # noqa: E402

SHAPES = {"1.3b": (32760, 1536), "5b": (27280, 3072), "14b": (75600, 5120)}  # tokens L, model dim C
BLOCK_TS, WARPS = (1, 2, 4), (4, 8, 16)


def _bench(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100)


def sweep_norm_rope(name: str, length: int, c: int, gen: torch.Generator) -> list[str]:
    import triton

    dev = "cuda"
    q, k = (torch.randn(2, length, c, device=dev, dtype=torch.float16, generator=gen) for _ in range(2))
    wq, wk = ((torch.rand(c, device=dev, dtype=torch.float16, generator=gen) + 0.5) for _ in range(2))
    ang = torch.rand(1, length, 1, 64, device=dev, generator=gen) * 6.28
    cos, sin = torch.cos(ang), torch.sin(ang)
    freqs = torch.stack([cos, -sin, sin, cos], -1).reshape(1, length, 1, 64, 2, 2)
    oq, ok = torch.empty_like(q), torch.empty_like(k)
    rows = 2 * length

    def run(bt, bc, w):
        nr._norm_rope_kernel[(triton.cdiv(rows, bt),)](
            q, k, wq, wk, freqs, oq, ok, q.stride(0), q.stride(1), k.stride(0), k.stride(1), oq.stride(0),
            oq.stride(1), freqs.stride(0), freqs.stride(1), rows, length, 1e-6, C=c, HALF_D=64, F_BATCHED=False,
            PER_HEAD=True, BLOCK_T=bt, BLOCK_C=bc, num_warps=w)

    bt0, bc0, w0 = nr.launch_shape(c)
    run(bt0, bc0, w0)
    ref = (oq.clone(), ok.clone())
    out = []
    for bt in BLOCK_TS:
        for w in WARPS:
            run(bt, bc0, w)
            same = torch.equal(oq, ref[0]) and torch.equal(ok, ref[1])
            t = _bench(lambda bt=bt, w=w: run(bt, bc0, w))
            tag = " (shipped)" if (bt, w) == (bt0, w0) else ""
            out.append(f"norm_rope {name} BLOCK_T={bt} warps={w}{tag}: {t:.4f} ms, {8 * rows * c / t / 1e6:.0f} GB/s, "
                       f"same={same}")
            print(out[-1], flush=True)
    return out


def sweep_add_norm(name: str, length: int, c: int, gen: torch.Generator) -> list[str]:
    import triton

    dev = "cuda"
    x, y = (torch.randn(2, length, c, device=dev, dtype=torch.float16, generator=gen) for _ in range(2))
    e = (torch.randn(2, 1, 6, c, device=dev, generator=gen) * 0.3).half().unbind(2)  # per-batch rows, token stride 0
    s_out, n_out = torch.empty_like(x), torch.empty_like(x)
    rows = 2 * length
    kinds = {  # name: (pointers x..n, y strides, gate strides, shift strides, scale strides, flags, tensors moved)
        "norm1": ((x, x, x, x, x, e[0], e[1], x, n_out), (0, 0), (0, 0), (e[0].stride(0), 0), (e[1].stride(0), 0),
                  dict(HAS_Y=False, HAS_GATE=False, NORM=True, AFFINE=False, MODULATE=True), 2),
        "add_norm2": ((x, y, x, x, x, e[3], e[4], s_out, n_out), y.stride()[:2], (0, 0), (e[3].stride(0), 0),
                      (e[4].stride(0), 0), dict(HAS_Y=True, HAS_GATE=False, NORM=True, AFFINE=False, MODULATE=True), 4),
        "gated_add": ((x, y, e[5], x, x, x, x, s_out, x), y.stride()[:2], (e[5].stride(0), 0), (0, 0), (0, 0),
                      dict(HAS_Y=True, HAS_GATE=True, NORM=False, AFFINE=False, MODULATE=False), 3),
    }
    out = []
    for kind, (ptrs, ys, gs, shs, scs, flags, moved) in kinds.items():
        def run(bt, w, ptrs=ptrs, ys=ys, gs=gs, shs=shs, scs=scs, flags=flags):
            rn._add_norm_kernel[(triton.cdiv(rows, bt),)](
                *ptrs, x.stride(0), x.stride(1), x.stride(2), *ys, *gs, *shs, *scs, x.stride(0), x.stride(1),
                rows, length, 1e-6, C=c, BLOCK_T=bt, BLOCK_C=triton.next_power_of_2(c), num_warps=w, **flags)

        bt0, _, w0 = rn.launch_shape(c)
        run(bt0, w0)
        ref = (s_out.clone(), n_out.clone())
        for bt in BLOCK_TS:
            for w in WARPS:
                run(bt, w)
                same = torch.equal(s_out, ref[0]) and torch.equal(n_out, ref[1])
                t = _bench(lambda bt=bt, w=w, run=run: run(bt, w))
                tag = " (shipped)" if (bt, w) == (bt0, w0) else ""
                out.append(f"add_norm {kind} {name} BLOCK_T={bt} warps={w}{tag}: {t:.4f} ms, "
                           f"{moved * rows * c * 2 / t / 1e6:.0f} GB/s, same={same}")
                print(out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    a = p.parse_args()
    lines = [f"# {torch.cuda.get_device_name()}; shipped = kernels' launch_shape at this commit"]
    for name, (length, c) in SHAPES.items():
        gen = torch.Generator(device="cuda").manual_seed(0)
        lines += sweep_norm_rope(name, length, c, gen) + sweep_add_norm(name, length, c, gen)
    Path(a.out, "sweep_passes.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
