/**
 * SparseFlow routing grid, the widget: one RoutingGrid per Routing/Patch node holds what the grid shows (the base
 * map, the node's overrides, the last run's ui payload and run report), draws it in requestAnimationFrame and
 * turns a click on a head into a new "routing_overrides" value. The overrides live in that Python-declared STRING
 * widget only (saved in the workflow JSON and API prompts); everything else here is view state.
 */

import { addStyle, el, fitCanvas } from "./grid_dom.js";
import { legendItems, paintDensity, paintGrid } from "./grid_draw.js";
import { shapeFromModel, upstream, widget } from "./grid_graph.js";
import {
  DEFAULT_PRESET,
  PRESETS,
  ROUTE_NAMES,
  applyOverrides,
  cellAt,
  cycleOverride,
  gridLayout,
  parseOverrides,
  presetRoutes,
  serializeOverrides,
  splitKey,
} from "./routing_math.js";

export const OVERRIDES = "routing_overrides";
const CHROME_PX = 22 + 18 + 12; // legend row, status line, padding
const REPORT_PX = 64;

export const live = new Set(); // grids on the canvas, for report dispatch and cross-node redraws

export function redrawAll() {
  for (const grid of live) grid.schedule();
}

export class RoutingGrid {
  constructor(app, node) {
    this.app = app;
    this.node = node;
    this.result = null; // last run's ui payload: {layers, heads, routes, error, ...}
    this.runOverrides = null; // the overrides when that payload arrived
    this.runText = ""; // the node's ui "text" of the last run
    this.report = null; // last "sparseflow.report" detail for this node
    this.hover = null;
    this.frame = 0;
    this.view = null; // what the last draw showed: {layout, base, routes, overrides}
    this.build();
  }

  build() {
    addStyle();
    this.root = el("div", "sf-grid");
    this.legend = el("div", "sf-legend");
    this.canvas = el("canvas", "sf-canvas");
    this.status = el("div", "sf-status");
    this.reportBox = el("div", "sf-report");
    this.reportText = el("div", "sf-report-text");
    this.bars = el("canvas", "sf-bars");
    this.reportBox.append(this.reportText, this.bars);
    this.root.append(this.legend, this.canvas, this.status, this.reportBox);
    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerleave", () => { this.hover = null; this.schedule(); });
    this.root.addEventListener("wheel", (e) => this.app.canvas?.processMouseWheel?.(e), { passive: true });
    this.resizer = new ResizeObserver(() => this.schedule());
    this.resizer.observe(this.canvas);
    this.resizer.observe(this.bars);
  }

  /** The base map before this node's overrides: {routes, note} (routes null when it is not known yet). */
  base() {
    const pre = this.preRunBase();
    const r = this.result;
    if (!r?.routes || (pre.live && pre.routes)) return pre;
    let routes = r.base_routes;
    if (!routes) {
      // the payload's routes already carry the overrides the run used: put the base back under those heads
      routes = r.routes.map((row) => row.slice());
      const same = pre.routes && pre.routes.length === routes.length && pre.routes[0].length === routes[0].length;
      for (const key of Object.keys(this.runOverrides ?? {})) {
        const [l, h] = splitKey(key);
        if (same && l < routes.length && h < routes[l].length) routes[l][h] = pre.routes[l][h];
      }
    }
    return { routes, note: "map of the last run" };
  }

  /** The base as known without a run: preset widgets, the upstream Routing node's grid, or the model name. */
  preRunBase() {
    const { node } = this;
    if (widget(node, "layers") && widget(node, "heads")) {
      const layers = Number(widget(node, "layers").value);
      const heads = Number(widget(node, "heads").value);
      const preset = String(widget(node, "preset")?.value ?? DEFAULT_PRESET);
      const file = String(widget(node, "file")?.value ?? "none");
      let routes;
      try {
        routes = presetRoutes(PRESETS.includes(preset) ? preset : DEFAULT_PRESET, layers, heads);
      } catch (e) {
        return { routes: null, note: e.message };
      }
      const note = !["none", ""].includes(file) ? `file ${file} is read when the node runs` : `preset ${preset}`;
      return { routes, note };
    }
    const source = upstream(node, "routing");
    if (source) {
      const routes = source.sparseflowGrid?.effective().routes;
      if (routes) return { routes, note: `from ${source.title}`, live: true };
      return { routes: null, note: `routing comes from ${source.title}: known after a run` };
    }
    const shape = shapeFromModel(node);
    if (shape) return { routes: presetRoutes(DEFAULT_PRESET, ...shape), note: `${DEFAULT_PRESET} preset, ${shape[0]}x${shape[1]} from the model name` };
    return { routes: null, note: "model size is known after a run" };
  }

  overrides() {
    return parseOverrides(String(widget(this.node, OVERRIDES)?.value ?? ""));
  }

  /** The map this node passes on: base plus its overrides. */
  effective() {
    const base = this.base();
    const { overrides, error } = this.overrides();
    if (!base.routes) return { routes: null, base, overrides, error, outside: [] };
    const { routes, outside } = applyOverrides(base.routes, overrides);
    return { routes, base, overrides, error, outside };
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    const eff = this.effective();
    const { ctx, w, h } = fitCanvas(this.canvas);
    this.legend.replaceChildren(...legendItems(eff.routes, eff.overrides, Boolean(this.result?.error)));
    if (!eff.routes) {
      this.view = null;
      this.setStatus(eff.base.note, false);
      return;
    }
    const layers = eff.routes.length, heads = eff.routes[0].length;
    const layout = gridLayout(w, h, layers, heads);
    const err = this.result?.error && this.result.error.length === layers ? this.result.error : null;
    paintGrid(ctx, layout, { routes: eff.routes, overrides: eff.overrides, err, hover: this.hover });
    const dpr = this.canvas.width / w;
    this.view = { layout, dpr, base: eff.base.routes, routes: eff.routes, overrides: eff.overrides, err };
    this.drawStatus(eff);
    this.drawReport();
    this.grow();
  }

  setStatus(text, isError) {
    this.status.textContent = text;
    this.status.classList.toggle("sf-error", Boolean(isError));
  }

  drawStatus(eff) {
    if (eff.error) return this.setStatus(eff.error, true);
    if (eff.outside.length) {
      return this.setStatus(`${eff.outside.length} override(s) outside the ${eff.routes.length}x${eff.routes[0].length} map: ` +
        eff.outside.slice(0, 4).join(", "), true);
    }
    if (this.hover && this.view) {
      const [l, hd] = this.hover;
      if (l < eff.routes.length && hd < eff.routes[0].length) {
        const now = ROUTE_NAMES[eff.routes[l][hd]], was = ROUTE_NAMES[eff.base.routes[l][hd]];
        const err = this.view.err ? `, calibration error ${Number(this.view.err[l][hd]).toPrecision(3)}` : "";
        return this.setStatus(`layer ${l}, head ${hd}: ${now}${now === was ? "" : ` (base ${was})`}${err}`, false);
      }
    }
    this.setStatus(`${eff.routes.length} layers x ${eff.routes[0].length} heads, ${eff.base.note}; click a head to change its route`, false);
  }

  drawReport() {
    const rep = this.report;
    const text = [this.runText, rep?.text].filter(Boolean).map(String).join("\n");
    this.reportBox.classList.toggle("sf-on", Boolean(text || rep));
    this.reportText.textContent = text;
    this.bars.style.display = rep ? "" : "none";
    if (!rep) return;
    const { ctx, w, h } = fitCanvas(this.bars);
    paintDensity(ctx, w, h, rep.density_per_step);
  }

  /** Event position in the canvas's CSS pixels; the DOM widget may be scaled by the canvas zoom. */
  localPoint(e) {
    const r = this.canvas.getBoundingClientRect();
    const sx = r.width / (this.canvas.clientWidth || 1), sy = r.height / (this.canvas.clientHeight || 1);
    return [(e.clientX - r.left) / sx, (e.clientY - r.top) / sy];
  }

  onPointerMove(e) {
    if (!this.view) return;
    const hit = cellAt(this.view.layout, ...this.localPoint(e));
    if (String(hit) !== String(this.hover)) {
      this.hover = hit;
      this.schedule();
    }
  }

  onPointerDown(e) {
    if (e.button !== 0 || !this.view) return;
    e.preventDefault();
    e.stopPropagation();
    const hit = cellAt(this.view.layout, ...this.localPoint(e));
    if (!hit) return;
    const eff = this.effective();
    if (eff.error || !eff.routes) return this.setStatus(eff.error ?? eff.base.note, true);
    this.write(cycleOverride(eff.overrides, eff.base.routes, hit[0], hit[1]));
    this.hover = hit;
  }

  /** Store overrides in the node's widget (workflow JSON and API prompt) and redraw dependent grids. */
  write(overrides) {
    const w = widget(this.node, OVERRIDES);
    if (!w) return;
    const text = serializeOverrides(overrides);
    w.value = text;
    w.callback?.(text, this.app.canvas, this.node);
    this.node.setDirtyCanvas?.(true, true);
    redrawAll();
  }

  /** Client coordinates of a cell's centre (for tests and tooling), or null before the first draw. */
  cellCenter(layer, head) {
    if (!this.view) return null;
    const { layout } = this.view;
    const r = this.canvas.getBoundingClientRect();
    const s = r.width / (this.canvas.clientWidth || 1);
    return {
      x: r.left + (layout.left + (head + 0.5) * layout.cw) * s,
      y: r.top + (layout.top + (layer + 0.5) * layout.ch) * s,
    };
  }

  /** Height the widget asks for at the node's width: every layer row at least 5 px, up to 12 px. */
  minHeight() {
    const routes = this.view?.routes ?? this.base().routes;
    const layers = routes ? routes.length : 4, heads = routes ? routes[0].length : 12;
    const { ch } = gridLayout(this.node.size[0] - 28, 1e6, layers, heads);
    return CHROME_PX + 14 + layers * Math.max(5, ch) + (this.report || this.runText ? REPORT_PX : 0);
  }

  /** Grow the node when the grid needs more room than it has (a new shape, a report). */
  grow() {
    const need = this.node.computeSize()[1];
    if (this.node.size[1] < need) {
      this.node.setSize([this.node.size[0], need]);
      this.node.setDirtyCanvas?.(true, true);
    }
  }

  dispose() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.resizer.disconnect();
    live.delete(this);
  }
}
