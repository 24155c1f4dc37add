"""The markdown table bench/e2e_comfy.py prints and the results index quotes: one row per configuration."""

from __future__ import annotations

from .timing import Breakdown

__all__ = ["table"]


def _f(x, fmt: str) -> str:
    if x is None:
        return ""
    return format(x, fmt[:-1]) + "%" if fmt.endswith("%") else format(x, fmt)


def table(info: dict, rows: list[dict], reference: dict | None = None) -> str:
    lines = [f"### {info['model']} ({info['class']}, {info['video']}, latent {tuple(info['latent'])}, "
             f"{info['tokens']} tokens, {info['layers']} layers x {info['heads']} heads; "
             f"ComfyUI {info.get('comfyui_tree', '?')})",
             "",
             "s/step: " + ("mean of all steps, after an untimed warm-up sampling"
                           if any(r.get("timed_steps") == "all" for r in rows) else
                           "mean of steps 1.. (step 0 holds compile/autotune)"),
             *(["", f"speed-up, peak vs default and rel. err: against the default run saved in {reference['file']} "
                    f"(a separate run: {reference['gpu']}, commit {reference['commit']}, {reference['timestamp']}; "
                    f"default {reference['s_per_step']:.3f} s/step, peak {_f(reference['peak_gib'], '.1f')} GiB)"]
               if reference else []),
             "",
             "| configuration | s/step | steady s/step | total s | speed-up | peak GiB | peak vs default "
             "| first-step overhead s | calibration s | rel. err vs default |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['config']} | {r.get('status')}: {r.get('error', '')[:120]} ||||||||")
            continue
        lines.append("| " + " | ".join([
            r["config"], _f(r.get("s_per_step"), ".3f"), _f(r.get("steady_s_per_step"), ".3f"), _f(r["total_s"], ".1f"),
            _f(r.get("speedup"), ".2f") + "x",
            _f(r.get("peak_gib"), ".1f"), _f(r.get("peak_vs_default_pct"), "+.1f%"),
            _f(r.get("first_step_overhead_s"), ".1f"), _f(r.get("calibration_s"), ".1f"),
            _f(r.get("rel_err"), ".3g")]) + " |")
    notes = []
    for r in rows:
        if r.get("sparseflow_summary"):
            notes.append(f"- {r['config']}: {r['sparseflow_summary']}")
        if r.get("sol_attn_calls"):
            notes.append(f"- {r['config']}: self-attention calls sparse {r['sol_attn_calls']['sparse']}, dense "
                         f"{r['sol_attn_calls']['dense']} (sigma window {r['sol_attn_sigma_window']})")
        if r.get("calibration"):
            notes.append(f"- {r['config']}: " + "; ".join(r["calibration"]))
        if r.get("patched_s") is not None:
            cost = (f"; total = {r['vs_default_plus_sparseflow']:.2f} x (default + sparseflow totals), total - "
                    f"sparseflow total = {r['minus_sparseflow_vs_default']:.2f} x default total"
                    if "vs_default_plus_sparseflow" in r else "")
            notes.append(f"- {r['config']}: patched run {r['patched_s']:.1f} s, dense run {r['dense_s']:.1f} s, "
                         f"report {r['report_s']:.2f} s{cost}; latent PSNR {r['psnr_latent']:.2f} dB, dense run vs "
                         f"default rel. err {_f(r.get('dense_rel_err_vs_default'), '.3g')}")
        if r.get("dynamo"):
            notes.append(f"- {r['config']}: dynamo counters so far in the process {r['dynamo']}")
    if notes:
        lines += [""] + notes
    bd = [r for r in rows if r.get("breakdown_s")]
    if bd:
        parts = Breakdown.PARTS
        lines += ["", "Step-time breakdown (ms per model call = per step, CFG batch of 2; mean of the timed steps):",
                  "",
                  "| configuration | forward | " + " | ".join(parts) + " |",
                  "|---|---|" + "---|" * len(parts)]
        for r in bd:
            b = r["breakdown_s"]
            lines.append(f"| {r['config']} | {b['forward'] * 1e3:.0f} | "
                         + " | ".join(f"{b[p] * 1e3:.0f} ({100 * b[p] / b['forward']:.0f}%)" for p in parts) + " |")
    return "\n".join(lines)
