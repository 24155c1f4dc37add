"""Launch shapes of the int8-qk pre-pass (kernels/quant.py `PrepassLaunch`) at Wan shapes, one GPU: the k-sum pass
(`k_mean`: tokens per program, rows per load, warps) and the quantize pass (`quantize_with_mean`: 4 or 8 warps), bf16
inputs in ComfyUI's (B, L, H*D) layout viewed (B, H, L, D) as the launcher passes them, spec block 128. With
--target-tiers, also the whole int8-qk op on issue 16's target case (Wan 1.3B, every head sparse, window 0 + anchor
frame 0) with each named launch tier forced, against torch SDPA in ComfyUI 0.3.64's backend order
(bench/bench_attention.py's `sdpa_default` row and its `window0+anchor0` whole-op rows).

Reports ms (triton do_bench median), GB/s of the bytes each pass must move (k-sum: k once; quantize: q and k in, int8
q and k out), and whether the output equals the shipped shape's bit for bit (the quantize pass must; the k-sum's
span and rows change the order of its fp32 additions, so its mean may differ in the last bits).

    python3 bench/sweep_quant_passes.py [--out DIR] [--target-tiers a100,consumer]   # writes DIR/sweep_quant.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the pack loader, as tests load it
__import__("pack_package").load_pack_package()

from comfyui_sparseflow.kernels import quant  # noqa: E402
from comfyui_sparseflow.sparseflow.inputs import to_bhld  # noqa: E402

SHAPES = {"1.3b": (12, 32760), "14b": (40, 75600)}  # heads, tokens (480p x 81f, 720p x 81f); batch 1, D 128
SUM_SHAPES = [(256, 32, 4), (512, 32, 4), (1024, 32, 4), (256, 64, 4), (512, 64, 8), (256, 32, 8)]
QUANT_WARPS = (4, 8)
BLOCK, D = 128, 128


def _bench(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100)


def sweep(name: str, heads: int, length: int) -> list[str]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.randn(1, length, heads * D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    qb, kb = to_bhld(q, heads), to_bhld(k, heads)
    shipped = quant.PREPASS_LAUNCH
    out = [f"## {name}: B=1, H={heads}, L={length}, D={D}, bf16; shipped {shipped}"]

    sum_bytes = k.numel() * k.element_size()
    mean0 = quant.k_mean(kb, shipped)
    out.append("| k-sum span / rows / warps | ms | GB/s | mean bit for bit |")
    out.append("|---|---|---|---|")
    for span, rows, warps in SUM_SHAPES:
        launch = quant.PrepassLaunch(sum_span=span, sum_rows=rows, sum_warps=warps)
        same = torch.equal(quant.k_mean(kb, launch), mean0)
        ms = _bench(lambda launch=launch: quant.k_mean(kb, launch))
        mark = " (shipped)" if (span, rows, warps) == (shipped.sum_span, shipped.sum_rows, shipped.sum_warps) else ""
        out.append(f"| {span} / {rows} / {warps}{mark} | {ms:.4f} | {sum_bytes / ms / 1e6:.0f} | {same} |")

    quant_bytes = 2 * sum_bytes + 2 * q.numel()  # q, k in; int8 q, k out (scales negligible)
    ref = quant.quantize_with_mean(qb, kb, mean0, BLOCK, shipped)
    out.append("| quantize warps | ms | GB/s | bit for bit with the shipped shape |")
    out.append("|---|---|---|---|")
    for warps in QUANT_WARPS:
        launch = quant.PrepassLaunch(warps=warps)
        got = quant.quantize_with_mean(qb, kb, mean0, BLOCK, launch)
        same = all(torch.equal(getattr(got, n), getattr(ref, n)) for n in ("q8", "k8", "q_scale", "k_scale"))
        ms = _bench(lambda launch=launch: quant.quantize_with_mean(qb, kb, mean0, BLOCK, launch))
        mark = " (shipped)" if warps == shipped.warps else ""
        out.append(f"| {warps}{mark} | {ms:.4f} | {quant_bytes / ms / 1e6:.0f} | {same} |")
    ms = _bench(lambda: quant.quantize_qk(qb, kb, BLOCK))
    out.append(f"whole pre-pass with the shipped shapes (quantize_qk: k-sum, torch's sum of the spans, quantize): "
               f"{ms:.4f} ms")
    return out


def target_case(tiers: list[str]) -> list[str]:
    """The whole int8-qk op (ops.attention, triton backend) on Wan 1.3B window 0 + anchor 0, every head sparse, once
    per forced launch tier, and SDPA (cuDNN -> Flash -> MemEfficient -> Math) on the same inputs."""
    import os

    from bench_setup import SHAPES as OP_SHAPES
    from bench_setup import bench, make_inputs
    from comfyui_sparseflow.kernels import configs
    from comfyui_sparseflow.sparseflow import ops
    from comfyui_sparseflow.sparseflow.plan import INT8_QK, SPARSE, uniform_plan
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, heads, g = OP_SHAPES["wan13b_480p"]
    comfy, bhld = make_inputs(batch, heads, g)
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def sdpa():
        with sdpa_kernel(order, set_priority=True):
            return torch.nn.functional.scaled_dot_product_attention(*bhld)

    base = bench(sdpa)[1]
    plan = uniform_plan(g, heads, route=SPARSE, window=0, anchors=(0,), block=BLOCK).with_precision(INT8_QK)
    out = [f"## issue 16's target case, whole op int8-qk (Wan 1.3B window 0 + anchor 0, every head sparse); "
           f"prepass {quant.PREPASS_LAUNCH}", "| tier | ms p20 / p50 / p80 | x SDPA default |", "|---|---|---|",
           f"| SDPA default | {base:.4f} | 1.0 |"]
    for tier in tiers:
        os.environ[configs.TIER_ENV] = tier
        fn = lambda: ops.attention(*comfy, plan, heads=heads, backend="triton")  # noqa: E731
        fn()
        p20, p50, p80 = bench(fn)
        out.append(f"| {tier} | {p20:.4f} / {p50:.4f} / {p80:.4f} | {base / p50:.2f} |")
        print(out[-1], flush=True)
    os.environ.pop(configs.TIER_ENV, None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for sweep_quant.txt")
    ap.add_argument("--target-tiers", default="", help="comma-separated launch tiers to time the whole op with")
    ap.add_argument("--skip-sweep", action="store_true", help="only the --target-tiers part")
    args = ap.parse_args()
    lines = [f"# {torch.cuda.get_device_name()}, torch {torch.__version__}"]

    def save() -> None:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "sweep_quant.txt").write_text("\n".join(lines) + "\n")

    for name, (heads, length) in ({} if args.skip_sweep else SHAPES).items():
        part = sweep(name, heads, length)
        lines += part
        print("\n".join(part), flush=True)
        save()
    if args.target_tiers:
        lines += target_case(args.target_tiers.split(","))
        save()


if __name__ == "__main__":
    main()
