// Unit tests of web/js/routing_math.js (node --test): presets match sparseflow/routing.py, overrides follow
// parse_overrides' rules, a click cycles base -> next -> next -> base and drops the override on the way back.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_PRESET, PRESETS, cellAt, countRoutes, cycleOverride, gridLayout, parseOverrides, presetRoutes, serializeOverrides, wanShapeFromName,
} from "../../web/js/routing_math.js";

test("heuristic preset: first and last layer dense, head % 3 == 2 linear, others sparse", () => {
  const r = presetRoutes("heuristic", 30, 12);
  assert.deepEqual(r[0], new Array(12).fill(0));
  assert.deepEqual(r[29], new Array(12).fill(0));
  assert.deepEqual(r[5], [1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 2]);
  assert.deepEqual(countRoutes(r), { dense: 24, sparse: 224, linear: 112 });
  assert.deepEqual(presetRoutes("alternating", 2, 4)[1], [1, 2, 1, 2]);
  assert.throws(() => presetRoutes("nope", 2, 2));
});

test("heuristic_sparse_edges (the default): heuristic's middle layers, first and last layer all sparse", () => {
  assert.equal(DEFAULT_PRESET, "heuristic_sparse_edges");
  assert.ok(PRESETS.includes(DEFAULT_PRESET));
  const r = presetRoutes(DEFAULT_PRESET, 30, 12);
  assert.deepEqual(r[0], new Array(12).fill(1));
  assert.deepEqual(r[29], new Array(12).fill(1));
  assert.deepEqual(r.slice(1, 29), presetRoutes("heuristic", 30, 12).slice(1, 29));
  assert.deepEqual(countRoutes(r), { dense: 0, sparse: 248, linear: 112 });
});

test("overrides: objects of 'layer.head' -> route only", () => {
  assert.deepEqual(parseOverrides("{\"3.7\": \"dense\"}"), { overrides: { "3.7": "dense" }, error: null });
  assert.deepEqual(parseOverrides(""), { overrides: {}, error: null });
  assert.match(parseOverrides("[1]").error, /JSON object/);
  assert.match(parseOverrides("{\"3\": \"dense\"}").error, /malformed/);
  assert.match(parseOverrides("{\"3.1\": \"fast\"}").error, /unknown/);
  assert.equal(serializeOverrides({ "10.2": "linear", "2.11": "dense", "2.3": "sparse" }),
    "{\"2.3\":\"sparse\",\"2.11\":\"dense\",\"10.2\":\"linear\"}");
});

test("a click cycles base -> base+1 -> base+2 -> base and never stores the base route", () => {
  const base = [[2]];
  let o = {};
  o = cycleOverride(o, base, 0, 0);
  assert.deepEqual(o, { "0.0": "dense" });
  o = cycleOverride(o, base, 0, 0);
  assert.deepEqual(o, { "0.0": "sparse" });
  o = cycleOverride(o, base, 0, 0);
  assert.deepEqual(o, {});
});

test("layout and hit test agree", () => {
  const L = gridLayout(400, 500, 30, 12);
  const [x, y] = [L.left + 3.5 * L.cw, L.top + 7.5 * L.ch];
  assert.deepEqual(cellAt(L, x, y), [7, 3]);
  assert.equal(cellAt(L, L.left - 1, y), null);
  assert.equal(cellAt(L, L.left + 12 * L.cw + 1, y), null);
  assert.deepEqual(wanShapeFromName("wan2.2_ti2v_5B_fp16.safetensors"), [30, 24]);
  assert.deepEqual(wanShapeFromName("wan2.1_t2v_1.3B_fp16.safetensors"), [30, 12]);
  assert.deepEqual(wanShapeFromName("wan2.2_t2v_low_noise_14B_fp16.safetensors"), [40, 40]);
});
