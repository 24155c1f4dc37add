"""Check and time every peer provider of bench/peers.py on the GPU machine, one table.

`python3 bench/peers_check.py [--length 32760] [--heads 12] [--density 0.1] [--only sage,flex]` checks every
available provider on a small shape (L = 4040 by default: not a multiple of 64 or 128, so padding paths run)
against an fp32 SDPA reference (masked for the block-mask peers) and times each one at the given shape with
triton.testing.do_bench (median); full-size outputs of one group (dense / masked) are compared with the group's
first peer.
"""

from __future__ import annotations

import math

import torch

if __package__ in (None, ""):  # run as a script: its folder, bench/, is first on the path
    from peers import BLOCK, DENSE_PEERS, MASKED_PEERS, PROVIDERS, available, random_block_mask, reference
else:
    from .peers import BLOCK, DENSE_PEERS, MASKED_PEERS, PROVIDERS, available, random_block_mask, reference


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm())


def main() -> None:
    import argparse

    import triton.testing

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--length", type=int, default=32760)
    p.add_argument("--check-length", type=int, default=4040)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--only", default="", help="comma-separated provider names")
    a = p.parse_args()
    names = a.only.split(",") if a.only else list(PROVIDERS)
    reasons = available()
    dev = torch.device("cuda")
    rows = []

    def inputs(n: int, seed: int):
        g = torch.Generator(device=dev).manual_seed(seed)
        qkv = [torch.randn(a.batch, a.heads, n, 128, device=dev, generator=g).to(torch.bfloat16) for _ in range(3)]
        nb = math.ceil(n / BLOCK)
        return qkv, random_block_mask(a.batch, a.heads, nb, nb, a.density, seed=seed, device=dev)

    (qs, ks, vs), ms = inputs(a.check_length, 1)
    ref_dense, ref_masked = reference(qs, ks, vs), reference(qs, ks, vs, ms)
    (q, k, v), m = inputs(a.length, 2)
    anchors: dict[str, tuple[str, torch.Tensor]] = {}      # first full-size output per group, for agreement
    for name in names:
        if reasons[name] is not None:
            rows.append((name, "skip", "", "", "", reasons[name]))
            continue
        err = agree = ms_med = ""
        notes = []
        try:
            out = PROVIDERS[name](qs, ks, vs, ms)()
            err = f"{_rel_err(out, ref_masked if name in MASKED_PEERS else ref_dense):.2e}"
        except Exception as e:  # noqa: BLE001 - report every failing peer, keep going
            notes.append(f"check: {type(e).__name__}: {str(e)[:160]}")
        try:
            fn = PROVIDERS[name](q, k, v, m)
            out = fn()
            torch.cuda.synchronize()
            group = "dense" if name in DENSE_PEERS else "masked" if name in MASKED_PEERS else name
            if group in anchors:
                agree = f"{_rel_err(out, anchors[group][1]):.2e} vs {anchors[group][0]}"
            else:
                anchors[group] = (name, out)
            ms_med = f"{triton.testing.do_bench(fn, warmup=100, rep=500, return_mode='median'):.3f}"
        except Exception as e:  # noqa: BLE001
            notes.append(f"time: {type(e).__name__}: {str(e)[:160]}")
        rows.append((name, "FAIL" if notes else "ok", err, ms_med, agree, "; ".join(notes)))
        torch.cuda.empty_cache()
    print(f"\npeers: B={a.batch} H={a.heads} L={a.length} D=128 bf16, density {a.density} at block {BLOCK}; "
          f"rel err at L={a.check_length} vs fp32 SDPA (masked for {', '.join(MASKED_PEERS)}; dense otherwise); "
          f"agreement at full L with the group's first peer; {torch.cuda.get_device_name()} torch {torch.__version__}")
    print(f"{'provider':<22}{'status':<7}{'rel err':>10}{'median ms':>11}  {'agree @L':<28}note")
    for r in rows:
        print(f"{r[0]:<22}{r[1]:<7}{r[2]:>10}{r[3]:>11}  {r[4]:<28}{r[5]}")


if __name__ == "__main__":
    main()
