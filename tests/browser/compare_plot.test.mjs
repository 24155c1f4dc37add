// Unit tests of web/js/compare_plot.js's math (node --test): the payload of sparseflow/compare.py plot_payload
// (inf / nan as strings) becomes the drawn series, pixel space wins over latent, NaN frames are "bad" bars at
// full height, identical frames "same", and bar heights follow PSNR.
import assert from "node:assert/strict";
import { test } from "node:test";

import { bars, dbText, series, value } from "../../web/js/compare_plot.js";

test("payload numbers: floats, and the strings inf / nan that JSON cannot hold", () => {
  assert.equal(value("inf"), Infinity);
  assert.ok(Number.isNaN(value("nan")) && Number.isNaN(value(null)));
  assert.equal(value(31.5), 31.5);
  assert.equal(dbText(Infinity), "identical");
  assert.equal(dbText(NaN), "NaN");
  assert.equal(dbText(30.123), "30.12 dB");
});

test("series: pixel space when present, else latent; first video; null for a malformed payload", () => {
  const latent = { psnr: [[20, "inf", "nan"], [1, 2, 3]], nonfinite: [[0, 0, 5]], psnr_overall: "nan" };
  const s = series({ latent, pixel: null });
  assert.equal(s.space, "latent");
  assert.equal(s.videos, 2);
  assert.deepEqual(s.psnr.slice(0, 2), [20, Infinity]);
  assert.ok(Number.isNaN(s.psnr[2]) && Number.isNaN(s.overall));
  assert.deepEqual(s.nonfinite, [0, 0, 5]);
  const p = series({ latent, pixel: { psnr: [[40, 41]], nonfinite: [[0, 0]], psnr_overall: 40.5 } });
  assert.equal(p.space, "pixel");
  assert.deepEqual(p.psnr, [40, 41]);
  assert.equal(series({ latent: { psnr: "x" } }), null);
  assert.equal(series(undefined), null);
});

test("bars: NaN and non-finite frames are bad at full height, identical frames same, heights follow PSNR", () => {
  const b = bars([10, 30, Infinity, NaN, 20], [0, 0, 0, 0, 3], 100, 50);
  assert.deepEqual(b.items.map((i) => i.kind), ["ok", "ok", "same", "bad", "bad"]);
  assert.equal(b.hi, 30);
  assert.equal(b.lo, 0);
  assert.equal(b.items[1].height, 50);
  assert.ok(Math.abs(b.items[0].height - 50 / 3) < 1e-9);
  assert.equal(b.items[2].height, 50);
  assert.equal(b.items[3].height, 50);
  assert.ok(b.items.every((i, k) => k === 0 || i.x > b.items[k - 1].x));
  assert.ok(b.items.every((i) => i.x >= 0 && i.x + i.width <= 100));
});
