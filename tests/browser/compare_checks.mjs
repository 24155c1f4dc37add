/**
 * Browser check of the SparseFlow Compare node's plot (web/js/compare_plot.js): load the Compare workflow, deliver
 * an executed message with a plot payload as sparseflow/compare.py plot_payload writes it (one frame NaN, one
 * identical), and read the canvas back: blue bars for finite frames, a red bar for the NaN frame, the status line
 * naming the space and the NaN, the widget kept out of the saved workflow, no console error.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";

import { fitView } from "./lib.mjs";
import { Checks, loadJson } from "./probe.mjs";

const PAYLOAD = {
  latent: { psnr: [[31.2, 28.4, "inf", "nan", 25.0]], ssim: [[0.99, 0.98, 1.0, "nan", 0.95]],
    nonfinite: [[0, 0, 0, 12, 0]], psnr_overall: "nan", ssim_overall: "nan" },
  pixel: null, speedup: 2.1, times: [10.0, 21.0],
};

export async function testComparePlot(page, phase, errors, { out, wfDir }) {
  const c = new Checks();
  phase.name = "compare";
  const name = "wan2.1_t2v_1.3B_compare";
  await loadJson(page, name, readFileSync(join(wfDir, `${name}.json`), "utf8"));
  const id = await page.evaluate(() => window.comfyAPI.app.app.graph.nodes.find((n) => n.comfyClass === "SparseFlowCompare")?.id ?? null);
  if (!c.add("a SparseFlow Compare node in the workflow", id !== null)) return { ok: false, checks: c.list };
  await page.evaluate(({ id, payload }) => {
    const node = window.__sfNode(id);
    node.onExecuted?.({ sparseflow_compare: [payload], text: ["report"] });
  }, { id, payload: PAYLOAD });
  await fitView(page);
  const drawn = await page.waitForFunction((id) => {
    const node = window.__sfNode(id);
    const w = node?.widgets?.find((x) => x.name === "sparseflow_compare_plot");
    const canvas = w?.element?.querySelector("canvas");
    if (!canvas || canvas.width < 2 || canvas.height < 2) return null;
    const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let blue = 0, red = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (Math.abs(d[i] - 0x4a) < 6 && Math.abs(d[i + 1] - 0x9e) < 6 && Math.abs(d[i + 2] - 0xda) < 6) blue++;
      if (Math.abs(d[i] - 0xe0) < 6 && Math.abs(d[i + 1] - 0x44) < 6 && Math.abs(d[i + 2] - 0x3e) < 6) red++;
    }
    return blue > 20 && red > 5 ? { blue, red, status: w.element.textContent } : null;
  }, id, { timeout: 10_000, polling: "raf" }).then((h) => h.jsonValue()).catch((e) => ({ error: String(e) }));
  c.add("finite frames drawn as blue bars and the NaN frame as a red bar", !drawn.error, JSON.stringify(drawn));
  c.add("status names the NaN", /nan/i.test(drawn.status ?? ""), drawn.status);
  const saved = await page.evaluate((id) => {
    const node = window.comfyAPI.app.app.graph.serialize().nodes.find((n) => String(n.id) === String(id));
    return JSON.stringify(node?.widgets_values ?? []);
  }, id);
  c.add("the plot is not saved in the workflow", !saved.includes("sparseflow_compare") && !saved.includes("31.2"), saved);
  await page.screenshot({ path: join(out, "compare_plot.png") });
  const errs = errors.filter((e) => e.phase === "compare");
  c.add("no console error", errs.length === 0, errs.map((e) => e.text).join(" | "));
  return { ok: c.ok, checks: c.list };
}
