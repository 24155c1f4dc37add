/**
 * SparseFlow compare plot: PSNR per frame as a small bar chart on the SparseFlow Compare and Compare Results
 * nodes, drawn from the run's ui payload "sparseflow_compare" (nodes/compare.py, sparseflow/compare.py).
 * Frames with NaN/inf are red bars at full height, identical frames ("inf") grey bars at full height.
 *
 * Follows routing_grid.js: `app` from window.comfyAPI, a canvas DOM widget that is not serialised, results
 * through onExecuted, DPR-aware drawing in requestAnimationFrame, text through textContent only, cleanup in
 * onRemoved. Plain ES module, no build step.
 */

import { chain } from "./node_hooks.js";

// ---- begin math (no DOM) ----

const NODE_CLASSES = new Set(["SparseFlowCompare", "SparseFlowCompareResults"]);
const WIDGET_NAME = "sparseflow_compare_plot";

/** A payload number: a float, or the strings "inf" / "nan" (JSON has neither). */
export function value(v) {
  if (v === "inf") return Infinity;
  if (v === "nan" || v === null || v === undefined) return NaN;
  return Number(v);
}

/** The series to draw: pixel PSNR when present, else latent; the first video of a batch. */
export function series(payload) {
  const space = payload?.pixel ? "pixel" : "latent";
  const q = payload?.[space];
  if (!q || !Array.isArray(q.psnr) || !Array.isArray(q.psnr[0])) return null;
  return {
    space,
    psnr: q.psnr[0].map(value),
    nonfinite: (q.nonfinite?.[0] ?? []).map(Number),
    overall: value(q.psnr_overall),
    videos: q.psnr.length,
  };
}

/** Bars in a w x h box: each frame's x, width, height and kind ("ok", "same", "bad"); the dB range drawn. */
export function bars(psnr, nonfinite, w, h) {
  const finite = psnr.filter((p) => Number.isFinite(p));
  const hi = finite.length ? Math.max(...finite) : 1;
  const lo = finite.length ? Math.min(0, Math.min(...finite)) : 0;
  const span = Math.max(hi - lo, 1e-6);
  const step = psnr.length ? w / psnr.length : w;
  const width = Math.max(1, step * 0.8);
  return {
    lo,
    hi,
    items: psnr.map((p, i) => {
      const bad = Number.isNaN(p) || (nonfinite[i] ?? 0) > 0;
      const kind = bad ? "bad" : p === Infinity ? "same" : "ok";
      const frac = kind === "ok" ? (p - lo) / span : 1;
      return { x: i * step + (step - width) / 2, width, height: Math.max(1, frac * h), kind };
    }),
  };
}

export function dbText(v) {
  if (v === Infinity) return "identical";
  return Number.isFinite(v) ? `${v.toFixed(2)} dB` : "NaN";
}

// ---- end math ----

const COLORS = { ok: "#4a9eda", same: "#8a8a8a", bad: "#e0443e", axis: "#666", text: "#ccc" };

class ComparePlot {
  constructor(node) {
    this.node = node;
    this.payload = null;
    this.frame = 0;
    this.root = document.createElement("div");
    this.root.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;gap:2px;";
    this.status = document.createElement("div");
    this.status.style.cssText = "font:11px sans-serif;color:#ccc;white-space:nowrap;overflow:hidden;";
    this.status.textContent = "PSNR per frame appears here after a run.";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "width:100%;flex:1;min-height:60px;";
    this.root.append(this.status, this.canvas);
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  dispose() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.root.remove();
  }

  draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, this.canvas.clientWidth), h = Math.max(1, this.canvas.clientHeight);
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const s = series(this.payload);
    if (!s) return;
    const bad = s.nonfinite.reduce((a, b) => a + b, 0);
    const speed = value(this.payload.speedup);
    const parts = [`${s.space} PSNR ${dbText(s.overall)}`];
    if (Number.isFinite(speed)) parts.push(`speed-up ${speed.toFixed(2)}x`);
    if (bad) parts.push(`${bad} NaN/inf values`);
    if (s.videos > 1) parts.push(`video 1 of ${s.videos}`);
    this.status.textContent = parts.join(" · ");
    this.status.style.color = bad ? COLORS.bad : COLORS.text;
    const pad = 14;
    const { lo, hi, items } = bars(s.psnr, s.nonfinite, w, h - pad);
    for (const b of items) {
      ctx.fillStyle = COLORS[b.kind];
      ctx.fillRect(b.x, h - pad - b.height, b.width, b.height);
    }
    ctx.fillStyle = COLORS.axis;
    ctx.fillRect(0, h - pad, w, 1);
    ctx.fillStyle = COLORS.text;
    ctx.font = "10px sans-serif";
    ctx.textBaseline = "bottom";
    ctx.fillText(`frames 0-${s.psnr.length - 1}; bars ${lo.toFixed(0)}-${hi.toFixed(1)} dB`, 2, h);
  }
}

function attach(node) {
  const plot = new ComparePlot(node);
  const dom = node.addDOMWidget(WIDGET_NAME, "sparseflow-compare-plot", plot.root, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => 110,
  });
  dom.serialize = false;
  chain(node, "onExecuted", (message) => {
    const payload = message?.sparseflow_compare?.[0];
    if (payload && typeof payload === "object") plot.payload = payload;
    plot.schedule();
  });
  chain(node, "onResize", () => plot.schedule());
  chain(node, "onRemoved", () => plot.dispose());
  node.setSize([Math.max(node.size[0], 320), Math.max(node.size[1], node.computeSize()[1])]);
  plot.schedule();
}

const comfy = globalThis.window?.comfyAPI;
if (comfy?.app?.app) {
  comfy.app.app.registerExtension({
    name: "SparseFlow.ComparePlot",
    nodeCreated(node) {
      if (NODE_CLASSES.has(node.comfyClass)) attach(node);
    },
  });
}
