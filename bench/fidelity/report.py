"""Tables and the quality-vs-speed plot from evaluate.py's results.json.

    python -m bench.fidelity.report results.json [--plot docs/fidelity_quality_vs_speed.png]

Prints markdown: the settings table, the calibration error table by route, the calibrated maps, the linear
kinds and the full-size calibration time, for docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["FAMILIES", "plot", "points", "tables"]


def _f(x, fmt: str = ".2f") -> str:
    if x is None or x == "":
        return "-"
    if isinstance(x, str):
        return x
    return format(x, fmt)


def tables(res: dict) -> str:
    out = [f"device {res['device']}, torch {res['torch']}, op backend `{res['backend']}`; model "
           f"{res['model']}; train {res.get('train')}; sampling {res['sampling']}", ""]
    t = res.get("timing", {})
    if t:
        out.append(f"dense SDPA per call: {t['tiny_dense_ms']:.3f} ms at {t['tiny_shape']} (model), "
                   f"{t['wan13b_dense_ms']:.3f} ms at {t['wan13b_shape']} (Wan 1.3B)")
        out.append("")
    out.append("| setting | PSNR dB (min) | SSIM | RGB PSNR | motion ratio | frame-diff err | density (model / 1.3B) "
               "| attn speed-up model shape | attn speed-up Wan 1.3B shape |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for s in res["settings"]:
        m = s["metrics"]
        if "psnr" not in m:
            out.append(f"| {s['name']} | {m.get('skipped') or m.get('error')} | | | | | | | |")
            continue
        dens = f"{_f(m.get('density_tiny'))} / {_f(m.get('density_wan13b'))}" if "density_tiny" in m else "-"
        out.append(f"| {s['name']} | {_f(m['psnr'])} ({_f(m['psnr_min'])}) | {_f(m['ssim'], '.4f')} | "
                   f"{_f(m['rgb_psnr'])} | {_f(m['motion_ratio'], '.3f')} | {_f(m['diff_rel_err'], '.3f')} | {dens} | "
                   f"{_f(m.get('speedup_tiny'))}x | {_f(m.get('speedup_wan13b'))}x |")
    cal = res.get("calibration")
    if cal:
        import torch

        err = torch.tensor(cal["errors_rms"])  # (layers, heads, C)
        out += ["", "Per-head relative error by route (RMS over captured steps and samples; cost = fraction of "
                "dense block pairs):", "", "| route | cost | mean | min | max | per head (layer.head=err) |",
                "|---|---|---|---|---|---|"]
        for ci, name in enumerate(cal["candidates"]):
            e = err[..., ci]
            per = " ".join(f"{li}.{h}={float(e[li, h]):.3f}" for li in range(e.shape[0]) for h in range(e.shape[1]))
            out.append(f"| {name} | {cal['costs'][ci]:.3f} | {float(e.mean()):.3f} | {float(e.min()):.3f} | "
                       f"{float(e.max()):.3f} | {per} |")
        for b, mp in cal["maps"].items():
            out += ["", f"Calibrated map, budget {b}:", "```", mp["report"], "```"]
        out.append(f"calibration of the model's map: {res.get('calibration_seconds_tiny', 0):.1f} s over "
                   f"{cal['captures']} captured calls")
    found = res.get("target_search")
    if found:
        out += ["", f"Quality-target search ({found['preview_steps']}-step previews on the calibration seeds; "
                "speed-up = the plans' pair cost, an estimate):", "",
                "| target | sparsity | budget | met | preview PSNR dB | est. attention speed-up |",
                "|---|---|---|---|---|---|"]
        for name, c in found["choices"].items():
            out.append(f"| {name} | {c['sparsity']:g} | {c['budget']:g} | {'yes' if c['met'] else 'NO'} | "
                       f"{_f(c['preview_psnr'])} | {_f(c['est_speedup'])}x |")
    lk = res.get("linear_kinds")
    if lk:
        import torch

        po, fe = torch.tensor(lk["pooled"]), torch.tensor(lk["feature"])
        out += ["", "| linear kind | mean rel. error vs dense | min | max |", "|---|---|---|---|"]
        for name, e in (("pooled", po), ("feature", fe)):
            out.append(f"| {name} | {float(e.mean()):.3f} | {float(e.min()):.3f} | {float(e.max()):.3f} |")
        out.append(f"pooled < feature on {int((po < fe).sum())} of {po.numel()} heads")
    fc = res.get("full_calibration")
    if fc:
        how = f"extrapolated from {fc['layers_done']} layers" if fc["extrapolated"] else "measured"
        out += ["", f"Full-size calibration (Wan 1.3B map {fc['layers']} x {fc['heads']}, L={fc['length']}): "
                f"{fc['seconds_full_map']:.1f} s ({how}), "
                f"{fc['seconds_per_layer_median']:.2f} s per layer (median), candidates {fc['candidates']}"]
    out.append(f"\nstage seconds: {res.get('stage_seconds')}")
    return "\n".join(out)


# group -> (marker, colour, legend label), in drawing order; a setting's group is its family, or its precision
# ("int8-qk", "fp8") for SparseFlow settings below fp16
FAMILIES = {"preset": ("o", "tab:blue", "SparseFlow presets"),
            "calibrated": ("s", "tab:green", "SparseFlow calibrated maps"),
            "target": ("D", "tab:purple", "SparseFlow Calibrate to Target"),
            "int8-qk": ("P", "tab:orange", "SparseFlow int8-qk"),
            "fp8": ("X", "tab:brown", "SparseFlow fp8"),
            "sol_attn": ("^", "tab:red", "core sol_attn"),
            "floor": ("x", "gray", "SparseFlow all-dense (floor)")}


def _group(setting: dict) -> str:
    precision = setting.get("precision", "fp16")
    return setting["family"] if precision == "fp16" else precision


def points(res: dict, key: str) -> dict[str, list[tuple[float, float, str]]]:
    """group -> [(speed-up `key`, PSNR capped at 80 dB, name)] of the settings that have both."""
    return {fam: [(s["metrics"][key], min(s["metrics"]["psnr"], 80.0), s["name"]) for s in res["settings"]
                  if _group(s) == fam and key in s["metrics"] and "psnr" in s["metrics"]]
            for fam in FAMILIES}


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key, title in ((axes[0], "speedup_wan13b", "attention speed-up at the Wan 2.1 1.3B shape (L=32760)"),
                           (axes[1], "speedup_tiny", "attention speed-up at the fidelity model's shape")):
        for fam, pts in points(res, key).items():
            if not pts:
                continue
            marker, color, label = FAMILIES[fam]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=label)
            for x, y, name in pts:
                short = name.replace("sparseflow ", "").replace("sol_attn ", "")
                ax.annotate(short, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axhline(30, color="k", lw=0.8, ls="--")
        ax.axvline(2.5, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR vs dense (dB, final latents, held-out seeds; capped at 80)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"SparseFlow fidelity: quality vs attention speed-up ({res['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results")
    p.add_argument("--plot", default=None)
    a = p.parse_args()
    with open(a.results) as f:
        res = json.load(f)
    print(tables(res))
    if a.plot:
        plot(res, a.plot)
        print(f"plot -> {a.plot}")


if __name__ == "__main__":
    main()
