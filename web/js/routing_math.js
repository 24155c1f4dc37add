/**
 * SparseFlow routing grid math: route codes, presets, override parsing and cycling, grid layout and hit tests.
 * Pure functions with no DOM and no ComfyUI, shared by routing_grid.js and tests/browser/routing_math.test.mjs.
 * Mirrors sparseflow/routing.py (route codes, `routing_preset`, `parse_overrides` rules) and
 * sparseflow/render.py (route colours).
 */

// ------------------------------------------------------------------------------------------------------
// begin grid math: pure functions, no DOM, no ComfyUI
// ------------------------------------------------------------------------------------------------------

export const ROUTE_NAMES = ["dense", "sparse", "linear"]; // codes 0, 1, 2 as in sparseflow/plan.py
export const ROUTE_COLORS = [[150, 150, 150], [52, 120, 246], [245, 145, 40]]; // sparseflow/render.py
export const PRESETS = ["all_sparse", "all_linear", "all_dense", "alternating", "heuristic", "heuristic_sparse_edges"];
export const DEFAULT_PRESET = "heuristic_sparse_edges"; // sparseflow/routing.py DEFAULT_ROUTING
export const MAX_DIM = 4096;
export const DENSE = 0, SPARSE = 1, LINEAR = 2;
const OVERRIDE_KEY = /^(\d{1,4})\.(\d{1,4})$/;

/** Route codes of a preset, as `routing_preset` in sparseflow/routing.py builds them. */
export function presetRoutes(name, layers, heads) {
  if (!PRESETS.includes(name)) throw new Error(`unknown routing preset ${JSON.stringify(name)}`);
  const ok = (n) => Number.isInteger(n) && n >= 1 && n <= MAX_DIM;
  if (!ok(layers) || !ok(heads)) throw new Error(`layers and heads must be integers in [1, ${MAX_DIM}]`);
  const routes = [];
  for (let l = 0; l < layers; l++) {
    const row = new Array(heads).fill(SPARSE);
    for (let h = 0; h < heads; h++) {
      if (name === "all_linear") row[h] = LINEAR;
      else if (name === "all_dense") row[h] = DENSE;
      else if (name === "alternating" && h % 2 === 1) row[h] = LINEAR;
      else if (name.startsWith("heuristic") && h % 3 === 2) row[h] = LINEAR;
    }
    // heuristic: the first and last blocks mix tokens in and out of the latent space, so they stay dense;
    // heuristic_sparse_edges: they are sparse at a fixed window (every head)
    if (name === "heuristic" && (l === 0 || l === layers - 1)) row.fill(DENSE);
    if (name === "heuristic_sparse_edges" && (l === 0 || l === layers - 1)) row.fill(SPARSE);
    routes.push(row);
  }
  return routes;
}

/** Overrides from the widget text with parse_overrides' rules: {overrides, error}; error is null or a reason. */
export function parseOverrides(text) {
  if (typeof text !== "string" || !text.trim()) return { overrides: {}, error: null };
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    return { overrides: {}, error: `routing_overrides is not valid JSON (${e.message})` };
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    return { overrides: {}, error: "routing_overrides must be a JSON object like {\"3.7\": \"dense\"}" };
  }
  const overrides = {};
  for (const [key, value] of Object.entries(data)) {
    if (!OVERRIDE_KEY.test(key)) return { overrides: {}, error: `override key ${JSON.stringify(key)} is malformed` };
    if (!ROUTE_NAMES.includes(value)) {
      return { overrides: {}, error: `override ${key}: route ${JSON.stringify(value)} is unknown` };
    }
    overrides[key] = value;
  }
  return { overrides, error: null };
}

/** [layer, head] of a valid override key. */
export function splitKey(key) {
  const m = OVERRIDE_KEY.exec(key);
  return [Number(m[1]), Number(m[2])];
}

/** Overrides as canonical JSON: keys ordered by (layer, head), "{}" when empty. */
export function serializeOverrides(overrides) {
  const keys = Object.keys(overrides).sort((a, b) => {
    const [la, ha] = splitKey(a), [lb, hb] = splitKey(b);
    return la - lb || ha - hb;
  });
  const out = {};
  for (const k of keys) out[k] = overrides[k];
  return JSON.stringify(out);
}

/** Base routes with overrides applied: {routes, outside}; `outside` lists keys beyond the map's shape. */
export function applyOverrides(base, overrides) {
  const routes = base.map((row) => row.slice());
  const outside = [];
  for (const [key, name] of Object.entries(overrides)) {
    const [l, h] = splitKey(key);
    if (l < routes.length && h < routes[l].length) routes[l][h] = ROUTE_NAMES.indexOf(name);
    else outside.push(key);
  }
  return { routes, outside };
}

/**
 * The overrides after one click on (layer, head): the route cycles base -> base+1 -> base+2 -> base, and
 * landing back on the base route drops the override, so an untouched head never carries one.
 */
export function cycleOverride(overrides, base, layer, head) {
  const key = `${layer}.${head}`;
  const baseCode = base[layer][head];
  const current = key in overrides ? ROUTE_NAMES.indexOf(overrides[key]) : baseCode;
  const next = (current + 1) % ROUTE_NAMES.length;
  const out = { ...overrides };
  if (next === baseCode) delete out[key];
  else out[key] = ROUTE_NAMES[next];
  return out;
}

/** Heads per route name. */
export function countRoutes(routes) {
  const counts = Object.fromEntries(ROUTE_NAMES.map((n) => [n, 0]));
  for (const row of routes) for (const r of row) counts[ROUTE_NAMES[r]] += 1;
  return counts;
}

/**
 * Where the cells go in a width x height box with room for axis labels: {left, top, cw, ch, cols, rows}.
 * Cells are as wide as the box allows (up to maxW) and at most maxH tall, so a 30 x 12 map stays compact.
 */
export function gridLayout(width, height, layers, heads, { left = 22, top = 12, maxW = 28, maxH = 12 } = {}) {
  const cw = Math.max(1, Math.min(maxW, Math.floor((width - left) / heads)));
  const ch = Math.max(1, Math.min(maxH, cw, Math.floor((height - top) / layers)));
  return { left, top, cw, ch, cols: heads, rows: layers };
}

/** The [layer, head] under (x, y) in layout coordinates, or null. */
export function cellAt(layout, x, y) {
  const head = Math.floor((x - layout.left) / layout.cw);
  const layer = Math.floor((y - layout.top) / layout.ch);
  if (x < layout.left || y < layout.top || head >= layout.cols || layer >= layout.rows) return null;
  return [layer, head];
}

/** Opacity of the dark shade over a head: 0 for no error, up to 0.6 at the map's largest error. */
export function errorShade(err, maxErr) {
  if (!(maxErr > 0) || !Number.isFinite(err) || err <= 0) return 0;
  return 0.6 * Math.min(1, err / maxErr);
}

/** The shape Wan checkpoints have, guessed from a model file name: [layers, heads] or null. */
export function wanShapeFromName(name) {
  if (typeof name !== "string") return null;
  if (/1[._]3b/i.test(name)) return [30, 12];
  if (/(^|[^0-9.])5b/i.test(name)) return [30, 24];
  if (/14b/i.test(name)) return [40, 40];
  return null;
}

// ------------------------------------------------------------------------------------------------------
// end grid math
// ------------------------------------------------------------------------------------------------------
