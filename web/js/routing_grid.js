/**
 * SparseFlow routing grid: a layers x heads map, coloured by attention route, on the SparseFlow Routing and
 * Patch nodes. Clicking a head cycles its route; the edits live in the node's Python-declared STRING widget
 * "routing_overrides" (a JSON object {"layer.head": route}), so they are saved in the workflow JSON and in
 * API prompts. After a run the grid shades each head by its calibration error (ui "sparseflow_routing") and
 * the Patch node shows the per-step density of the "sparseflow.report" websocket event.
 *
 * Follows KJNodes' canvas widgets (state in a node widget, view state on the node, `app` from window.comfyAPI);
 * the pure grid math is fenced off in routing_math.js. Plain ES module, no build step; text goes through
 * textContent only; the canvas is DPR-aware and redrawn in requestAnimationFrame.
 */

import {
  DENSE,
  PRESETS,
  ROUTE_COLORS,
  ROUTE_NAMES,
  SPARSE,
  applyOverrides,
  cellAt,
  countRoutes,
  cycleOverride,
  errorShade,
  gridLayout,
  parseOverrides,
  presetRoutes,
  serializeOverrides,
  splitKey,
  wanShapeFromName,
} from "./routing_math.js";



const NODE_CLASSES = new Set(["SparseFlowRouting", "SparseFlowPatch"]);
const OVERRIDES = "routing_overrides";
const WIDGET_NAME = "sparseflow_routing_grid";
const SHAPE_WIDGETS = ["layers", "heads", "preset", "file"];
const CHROME_PX = 22 + 18 + 12; // legend row, status line, padding
const REPORT_PX = 64;
const live = new Set(); // states of grids on the canvas, for report dispatch and cross-node redraws

const rgb = (c, a = 1) => `rgba(${c[0]},${c[1]},${c[2]},${a})`;
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const widget = (node, name) => node.widgets?.find((w) => w.name === name);

function addStyle() {
  if (document.getElementById("sparseflow-grid-style")) return;
  const style = el("style");
  style.id = "sparseflow-grid-style";
  style.textContent = `
.sf-grid{display:flex;flex-direction:column;gap:3px;font:11px sans-serif;color:var(--input-text,#ddd);
  box-sizing:border-box;padding:2px 4px;overflow:hidden}
.sf-legend{display:flex;flex-wrap:wrap;gap:8px;align-items:center;min-height:16px}
.sf-sw{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:-1px;border-radius:2px}
.sf-canvas{flex:1 1 auto;min-height:20px;width:100%;cursor:pointer;touch-action:none}
.sf-status{min-height:14px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;opacity:.85}
.sf-status.sf-error{color:#ff8a80;opacity:1}
.sf-report{display:none;flex-direction:column;gap:2px}
.sf-report.sf-on{display:flex}
.sf-report-text{white-space:pre-wrap;max-height:34px;overflow:auto;opacity:.9}
.sf-bars{height:22px;width:100%}`;
  document.head.appendChild(style);
}

/** Follow an input link upstream: the origin node of `node`'s input `name`, or null. */
function upstream(app, node, name) {
  const input = node.inputs?.find((i) => i.name === name);
  if (input?.link == null) return null;
  const link = app.graph?.links?.get?.(input.link) ?? app.graph?.links?.[input.link];
  return link ? app.graph.getNodeById(link.origin_id) : null;
}

/** [layers, heads] from the model loader feeding `node` (through pass-through nodes), or null. */
function shapeFromModel(app, node) {
  let cur = node;
  for (let hops = 0; cur && hops < 16; hops++) {
    for (const w of cur.widgets ?? []) {
      if (["unet_name", "ckpt_name", "model_name"].includes(w.name)) return wanShapeFromName(String(w.value));
    }
    cur = upstream(app, cur, "model");
  }
  return null;
}

class RoutingGrid {
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
    const { app, node } = this;
    if (widget(node, "layers") && widget(node, "heads")) {
      const layers = Number(widget(node, "layers").value);
      const heads = Number(widget(node, "heads").value);
      const preset = String(widget(node, "preset")?.value ?? "heuristic");
      const file = String(widget(node, "file")?.value ?? "none");
      let routes;
      try {
        routes = presetRoutes(PRESETS.includes(preset) ? preset : "heuristic", layers, heads);
      } catch (e) {
        return { routes: null, note: e.message };
      }
      const note = !["none", ""].includes(file) ? `file ${file} is read when the node runs` : `preset ${preset}`;
      return { routes, note };
    }
    const source = upstream(app, node, "routing");
    if (source) {
      const routes = source.sparseflowGrid?.effective().routes;
      if (routes) return { routes, note: `from ${source.title}`, live: true };
      return { routes: null, note: `routing comes from ${source.title}: known after a run` };
    }
    const shape = shapeFromModel(app, node);
    if (shape) return { routes: presetRoutes("heuristic", ...shape), note: `heuristic preset, ${shape[0]}x${shape[1]} from the model name` };
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

  /** Size a canvas's backing store to its CSS box times devicePixelRatio; returns its CSS size. */
  fit(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, canvas.clientWidth), h = Math.max(1, canvas.clientHeight);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  draw() {
    const eff = this.effective();
    const { ctx, w, h } = this.fit(this.canvas);
    this.drawLegend(eff);
    if (!eff.routes) {
      this.view = null;
      this.setStatus(eff.base.note, false);
      return;
    }
    const layers = eff.routes.length, heads = eff.routes[0].length;
    const layout = gridLayout(w, h, layers, heads);
    const err = this.result?.error && this.result.error.length === layers ? this.result.error : null;
    const maxErr = err ? Math.max(0, ...err.flat().filter(Number.isFinite)) : 0;
    const { cw, ch } = layout, gx = cw >= 6 ? 1 : 0, gy = ch >= 6 ? 1 : 0;
    ctx.font = "9px sans-serif";
    ctx.fillStyle = "rgba(200,200,200,0.8)";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = (n, px) => [1, 2, 5, 10, 20, 50, 100].find((k) => k * px >= 12) ?? 200;
    for (let l = 0; l < layers; l += every(layers, ch)) ctx.fillText(String(l), layout.left - 3, layout.top + (l + 0.5) * ch);
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (let hd = 0; hd < heads; hd += every(heads, cw) * (cw < 12 ? 2 : 1)) {
      ctx.fillText(String(hd), layout.left + (hd + 0.5) * cw, layout.top - 1);
    }
    for (let l = 0; l < layers; l++) {
      for (let hd = 0; hd < heads; hd++) {
        const x = layout.left + hd * cw, y = layout.top + l * ch;
        ctx.fillStyle = rgb(ROUTE_COLORS[eff.routes[l][hd]]);
        ctx.fillRect(x, y, cw - gx, ch - gy);
        const shade = err ? errorShade(err[l][hd], maxErr) : 0;
        if (shade > 0) {
          ctx.fillStyle = `rgba(0,0,0,${shade})`;
          ctx.fillRect(x, y, cw - gx, ch - gy);
        }
        if (`${l}.${hd}` in eff.overrides && ch >= 5) {
          // edited heads get a white corner mark, so a shared workflow shows what was changed by hand
          const m = Math.max(3, Math.min(cw, ch) * 0.5);
          ctx.fillStyle = "rgba(255,255,255,0.95)";
          ctx.beginPath();
          ctx.moveTo(x, y);
          ctx.lineTo(x + m, y);
          ctx.lineTo(x, y + m);
          ctx.fill();
        }
      }
    }
    if (this.hover && this.hover[0] < layers && this.hover[1] < heads) {
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1;
      ctx.strokeRect(layout.left + this.hover[1] * cw + 0.5, layout.top + this.hover[0] * ch + 0.5, cw - 1, ch - 1);
    }
    const dpr = this.canvas.width / w;
    this.view = { layout, dpr, base: eff.base.routes, routes: eff.routes, overrides: eff.overrides, err };
    this.drawStatus(eff);
    this.drawReport();
    this.grow();
  }

  drawLegend(eff) {
    const parts = [];
    const counts = eff.routes ? countRoutes(eff.routes) : null;
    ROUTE_NAMES.forEach((name, code) => {
      const item = el("span");
      const sw = el("span", "sf-sw");
      sw.style.background = rgb(ROUTE_COLORS[code]);
      item.append(sw, document.createTextNode(counts ? `${name} ${counts[name]}` : name));
      parts.push(item);
    });
    const edited = Object.keys(eff.overrides).length;
    parts.push(el("span", null, `edited ${edited}`));
    if (this.result?.error) parts.push(el("span", null, "darker = higher calibration error"));
    this.legend.replaceChildren(...parts);
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
    const { ctx, w, h } = this.fit(this.bars);
    const d = Array.isArray(rep.density_per_step) ? rep.density_per_step.map(Number) : [];
    ctx.fillStyle = "rgba(255,255,255,0.08)";
    ctx.fillRect(0, 0, w, h);
    if (!d.length) return;
    const bw = w / d.length, pad = bw > 3 ? 0.5 : 0;
    d.forEach((v, i) => {
      const frac = Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 0;
      // a dense step (density 1) is grey like a dense head; sparse steps are blue
      ctx.fillStyle = rgb(frac >= 0.999 ? ROUTE_COLORS[DENSE] : ROUTE_COLORS[SPARSE]);
      ctx.fillRect(i * bw + pad, h * (1 - frac), Math.max(1, bw - 2 * pad), h * frac);
    });
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

function redrawAll() {
  for (const grid of live) grid.schedule();
}

function chain(obj, name, fn) {
  const prev = obj[name];
  obj[name] = function (...args) {
    const r = prev?.apply(this, args);
    fn.apply(this, args);
    return r;
  };
}

function attach(app, node) {
  const store = widget(node, OVERRIDES);
  if (!store) return;
  // the JSON stays in the Python-declared widget (serialised); only the drawing replaces it on screen
  store.hidden = true;
  if (store.computeLayoutSize) store.computeLayoutSize = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 });
  else store.computeSize = () => [0, -4];
  const grid = new RoutingGrid(app, node);
  node.sparseflowGrid = grid;
  live.add(grid);
  const dom = node.addDOMWidget(WIDGET_NAME, "sparseflow-grid", grid.root, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => grid.minHeight(),
  });
  dom.serialize = false;
  for (const name of SHAPE_WIDGETS) {
    const w = widget(node, name);
    if (!w) continue;
    chain(w, "callback", () => {
      grid.result = null; // a new shape or preset makes the last run's map stale
      redrawAll();
    });
  }
  chain(node, "onConfigure", () => { grid.result = null; redrawAll(); });
  chain(node, "onConnectionsChange", () => redrawAll());
  chain(node, "onResize", () => grid.schedule());
  chain(node, "onExecuted", (message) => {
    const payload = message?.sparseflow_routing?.[0];
    if (payload && Array.isArray(payload.routes) && Array.isArray(payload.routes[0])) {
      grid.result = payload;
      grid.runOverrides = grid.overrides().overrides;
    }
    if (Array.isArray(message?.text)) grid.runText = String(message.text[0] ?? "");
    redrawAll();
  });
  chain(node, "onRemoved", () => {
    grid.dispose();
    if (node.sparseflowGrid === grid) delete node.sparseflowGrid;
  });
  node.setSize([Math.max(node.size[0], 320), Math.max(node.size[1], node.computeSize()[1])]);
  grid.schedule();
}

function onReport(event) {
  const detail = event?.detail;
  if (!detail || detail.node == null) return;
  const id = String(detail.node);
  const tail = id.includes(":") ? id.slice(id.lastIndexOf(":") + 1) : id;
  for (const grid of live) {
    const nid = String(grid.node.id);
    if (grid.node.comfyClass === "SparseFlowPatch" && (nid === id || nid === tail)) {
      grid.report = detail;
      grid.grow();
      grid.schedule();
    }
  }
}

const comfy = globalThis.window?.comfyAPI;
if (comfy?.app?.app) {
  const app = comfy.app.app;
  const api = comfy.api?.api;
  app.registerExtension({
    name: "SparseFlow.RoutingGrid",
    setup() {
      api?.addEventListener("sparseflow.report", onReport);
    },
    nodeCreated(node) {
      if (NODE_CLASSES.has(node.comfyClass)) attach(app, node);
    },
  });
}
