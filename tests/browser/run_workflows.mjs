/**
 * Browser test driver: loads every workflows/*.json into a real ComfyUI page (Debian chromium + playwright-core)
 * the way a user's file drop does (app.handleFile), and checks the SparseFlow routing grid end to end:
 * no missing-node dialog, no console error, the grid's pixels match the routes, a real mouse click on a head
 * changes app.graph.serialize() and app.graphToPrompt(), and loading the saved JSON restores the edit. It also
 * runs a real Routing -> Save Routing prompt (the node's ui payload reaches the grid) and feeds a
 * "sparseflow.report" event with HTML in its text (shown as text only).
 *
 *   node tests/browser/run_workflows.mjs --url http://127.0.0.1:8188 --workflows workflows --out tests/artifacts/browser
 *
 * Writes <out>/results.json and one <name>.png screenshot per workflow; exits 0 when the run itself worked
 * (tests/test_browser.py judges the per-check results), 2 when the page could not be driven at all.
 */

import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

import { argValue, fitView, launch, openComfy } from "./lib.mjs";
import {
  Checks, ROUTE_COLORS, cellPixel, clickCell, focusNode, grids, installProbe, loadJson, nextRoute, savedState, shadeOf,
  uiProblems,
} from "./probe.mjs";
import { testComparePlot } from "./compare_checks.mjs";
import { testSubgraphs } from "./subgraph_checks.mjs";

const url = argValue("url", "http://127.0.0.1:8188");
const wfDir = argValue("workflows", "workflows");
const out = argValue("out", "tests/artifacts/browser");
mkdirSync(out, { recursive: true });

const results = { url, startup_errors: [], external_requests: [], workflows: {}, extra: {} };

// --- one workflow -----------------------------------------------------------------------------------

async function testWorkflow(page, phase, errors, file) {
  const name = basename(file, ".json");
  const c = new Checks();
  const json = readFileSync(file, "utf8");
  phase.name = `load:${name}`;
  await loadJson(page, name, json);
  const ui = await uiProblems(page);
  c.add("no missing node types", ui.missing.length === 0, ui.missing.join(", "));
  c.add("no dialog after load", ui.dialogs.length === 0, ui.dialogs.join(" | "));
  c.add("no error toast after load", ui.toasts.length === 0, ui.toasts.join(" | "));
  await fitView(page); // DOM widgets of off-screen nodes are hidden and not drawn
  let gs = await grids(page);
  c.add("SparseFlow grids present", gs.length > 0, JSON.stringify(gs.map((g) => g.type)));
  c.add("routing_overrides widget hidden behind the grid", gs.every((g) => g.hidden));

  const shot = join(out, `${name}.png`); // the workflow as a user sees it after loading, cropped to the graph
  const clip = await page.evaluate(() => {
    const app = window.comfyAPI.app.app, ds = app.canvas.ds;
    const xs = [], ys = [];
    for (const n of app.graph.nodes) {
      xs.push((n.pos[0] + ds.offset[0]) * ds.scale, (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale);
      ys.push((n.pos[1] - 30 + ds.offset[1]) * ds.scale, (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale);
    }
    const x = Math.max(0, Math.min(...xs) - 30), y = Math.max(0, Math.min(...ys) - 30);
    return { x, y, width: Math.min(window.innerWidth, Math.max(...xs) + 30) - x, height: Math.min(window.innerHeight, Math.max(...ys) + 30) - y };
  });
  await page.screenshot({ path: shot, clip });

  // a Patch fed by Calibrate knows its map only after a run: give it the ui payload a run sends
  for (const g of gs.filter((g) => !g.drawn)) {
    const note = g.status;
    const payload = { layers: 30, heads: 12, routes: Array.from({ length: 30 }, (_, l) => Array.from({ length: 12 }, (_, h) => (l === 0 ? 0 : h % 3 === 2 ? 2 : 1))),
      error: Array.from({ length: 30 }, (_, l) => Array.from({ length: 12 }, (_, h) => (l === 5 && h === 5 ? 0.4 : 0.01))) };
    await page.evaluate(({ id, payload }) => window.comfyAPI.api.api.dispatchCustomEvent("executed",
      { node: String(id), display_node: String(id), output: { sparseflow_routing: [payload], text: ["calibrated 30x12"] } }),
    { id: g.id, payload });
    await page.waitForTimeout(200);
    const after = (await grids(page)).find((x) => x.id === g.id);
    c.add(`${g.type} #${g.id} drawn after its executed payload (before: "${note}")`, after.drawn && after.layers === 30 && after.heads === 12,
      after.status);
    const dark = await cellPixel(page, g.id, 5, 5), plain = await cellPixel(page, g.id, 5, 4);
    c.add(`${g.type} #${g.id} shades the head with the largest calibration error`, dark[0] + dark[1] + dark[2] < plain[0] + plain[1] + plain[2] - 60,
      `shaded ${dark} vs ${plain}`);
  }
  gs = await grids(page);
  for (const g of gs) {
    c.add(`${g.type} #${g.id} grid drawn`, g.drawn && g.layers > 0 && g.heads > 0, g.status);
    if (!g.drawn) continue;
    const px = await cellPixel(page, g.id, 1, 0);
    c.add(`${g.type} #${g.id} cell (1,0) has its route's colour`, shadeOf(px, ROUTE_COLORS[g.routes[1][0]]), `${px} vs ${ROUTE_COLORS[g.routes[1][0]]}`);
  }
  const loadErrors = errors.filter((e) => e.phase === phase.name);
  c.add("no console error while loading", loadErrors.length === 0, loadErrors.map((e) => `${e.text} ${e.url}`).join(" | "));


  // -- edit: one click on each grid (Routing first, so the Patch below it shows the change live)
  phase.name = `edit:${name}`;
  const edits = [];
  gs.sort((a, b) => (a.type === "SparseFlowRouting" ? -1 : 1) - (b.type === "SparseFlowRouting" ? -1 : 1));
  for (const [i, g0] of gs.entries()) {
    const g = (await grids(page)).find((x) => x.id === g0.id);
    if (!g.drawn) continue;
    const layer = Math.min(g.layers - 1, 2 + i), head = Math.min(g.heads - 1, 3 + i);
    const before = g.routes[layer][head];
    await focusNode(page, g.id);
    await clickCell(page, g.id, layer, head);
    const after = (await grids(page)).find((x) => x.id === g.id);
    const want = nextRoute(before);
    const key = `${layer}.${head}`;
    const overrides = JSON.parse(after.overrides || "{}");
    c.add(`${g.type} #${g.id} click on (${layer},${head}) cycles ${before} -> ${want}`, after.routes[layer][head] === want,
      `now ${after.routes[layer][head]}, overrides ${after.overrides}`);
    c.add(`${g.type} #${g.id} widget holds the override`, overrides[key] === ["dense", "sparse", "linear"][want] || (want === after.base[layer][head] && !(key in overrides)),
      after.overrides);
    const px = await cellPixel(page, g.id, layer, head);
    c.add(`${g.type} #${g.id} clicked cell repainted`, shadeOf(px, ROUTE_COLORS[want]),
      `${px}`);
    const saved = await savedState(page, g.id);
    c.add(`${g.type} #${g.id} app.graph.serialize() carries it`, saved.widgetValue === after.overrides, `${saved.widgetValue}`);
    c.add(`${g.type} #${g.id} app.graphToPrompt() carries it`, saved.promptValue === after.overrides, `${saved.promptValue}`);
    c.add(`${g.type} #${g.id} the canvas widget is not serialised`, !saved.gridInWidgets && !saved.promptKeys.includes("sparseflow_routing_grid"),
      saved.promptKeys.join(","));
    edits.push({ id: g.id, type: g.type, layer, head, route: want, overrides: after.overrides });
    if (g.type === "SparseFlowRouting") {
      const downstream = (await grids(page)).filter((x) => x.type === "SparseFlowPatch" && x.status.includes("from "));
      for (const p of downstream) {
        c.add(`Patch #${p.id} below Routing #${g.id} shows the change`, p.routes?.[layer]?.[head] === want, p.status);
      }
    }
  }
  c.add("at least one grid edited", edits.length > 0);

  // -- reload the saved JSON as a new file load and check every edit came back
  const savedJson = (await savedState(page, edits[0]?.id ?? gs[0].id)).json;
  writeFileSync(join(out, `${name}.edited.json`), savedJson);
  await page.evaluate(() => window.comfyAPI.app.app.graph.clear());
  phase.name = `reload:${name}`;
  await loadJson(page, `${name}.edited`, savedJson);
  await fitView(page);
  const back = await grids(page);
  for (const e of edits) {
    const g = back.find((x) => x.id === e.id);
    c.add(`${e.type} #${e.id} override restored on reload`, g?.overrides === e.overrides, g?.overrides);
    if (g?.drawn) {
      const px = await cellPixel(page, g.id, e.layer, e.head);
      c.add(`${e.type} #${e.id} restored cell drawn in the edited route`, shadeOf(px, ROUTE_COLORS[e.route]), `${px}`);
    }
  }
  const editErrors = errors.filter((e) => e.phase.endsWith(`:${name}`) && !e.phase.startsWith("load:"));
  c.add("no console error while editing and reloading", editErrors.length === 0, editErrors.map((e) => `${e.text} ${e.url}`).join(" | "));
  return { ok: c.ok, checks: c.list, screenshot: shot, edits };
}

// --- the run report event and a real prompt ---------------------------------------------------------

async function testReport(page, phase, errors) {
  const c = new Checks();
  phase.name = "report";
  const patches = (await grids(page)).filter((g) => g.type === "SparseFlowPatch");
  if (!c.add("a Patch node to report on", patches.length > 0)) return { ok: false, checks: c.list };
  const id = patches[0].id;
  const text = "steps 4, density 0.31 <img src=x onerror=\"window.__sfXss=1\"> backend reference";
  await page.evaluate(({ id, text }) => window.comfyAPI.api.api.dispatchCustomEvent("sparseflow.report",
    { node: String(id), text, density_per_step: [1, 0.5, 0.25, 0.2], route_counts: { dense: 24, sparse: 224, linear: 112 }, backend: "reference" }),
  { id, text });
  await page.waitForTimeout(400);
  const shown = await page.evaluate((id) => {
    const g = window.__sfNode(id).sparseflowGrid;
    const ctx = g.bars.getContext("2d");
    const d = ctx.getImageData(0, 0, g.bars.width, g.bars.height).data;
    let blue = 0, grey = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (Math.abs(d[i] - 52) < 4 && Math.abs(d[i + 1] - 120) < 4 && Math.abs(d[i + 2] - 246) < 4) blue++;
      if (Math.abs(d[i] - 150) < 4 && Math.abs(d[i + 1] - 150) < 4 && Math.abs(d[i + 2] - 150) < 4) grey++;
    }
    return { text: g.reportText.textContent, imgs: g.root.querySelectorAll("img").length, xss: window.__sfXss ?? null, blue, grey,
      visible: g.reportBox.getClientRects().length > 0 };
  }, id);
  c.add("report text shown verbatim", shown.text.includes(text), shown.text);
  c.add("report HTML not interpreted", shown.imgs === 0 && shown.xss === null, JSON.stringify(shown));
  c.add("density strip drawn (dense step grey, sparse steps blue)", shown.blue > 20 && shown.grey > 5 && shown.visible, JSON.stringify(shown));
  await fitView(page);
  await page.screenshot({ path: join(out, "report.png") });
  const errs = errors.filter((e) => e.phase === "report");
  c.add("no console error", errs.length === 0, errs.map((e) => e.text).join(" | "));
  return { ok: c.ok, checks: c.list };
}

async function testRealRun(page, phase, errors) {
  const c = new Checks();
  phase.name = "run";
  // a layer count not used before on this server, so ComfyUI's cache cannot skip the node (maps: at most 128)
  const layers = 6 + (Date.now() % 120);
  const id = await page.evaluate(async (layers) => {
    const app = window.comfyAPI.app.app;
    app.graph.clear();
    const r = window.LiteGraph.createNode("SparseFlowRouting");
    r.pos = [100, 100];
    app.graph.add(r);
    const set = (n, k, v) => { n.widgets.find((w) => w.name === k).value = v; };
    set(r, "layers", layers); set(r, "heads", 4); set(r, "preset", "alternating"); set(r, "routing_overrides", "{\"0.1\":\"dense\"}");
    const s = window.LiteGraph.createNode("SparseFlowSaveRouting");
    s.pos = [600, 100];
    app.graph.add(s);
    set(s, "filename", `browser_test_${Date.now()}`);
    r.connect(0, s, 0);
    window.__sfExecuted = null;
    window.comfyAPI.api.api.addEventListener("executed", (e) => { if (String(e.detail.node) === String(r.id)) window.__sfExecuted = e.detail; });
    await app.queuePrompt(0, 1);
    return String(r.id);
  }, layers);
  try {
    await page.waitForFunction(() => window.__sfExecuted !== null, null, { timeout: 30_000 });
  } catch {
    c.add("Routing node executed", false, "no executed event within 30 s");
    return { ok: false, checks: c.list };
  }
  await page.waitForTimeout(300);
  const g = (await grids(page)).find((x) => x.id === id);
  c.add("grid shows the map of the run", g.status.includes("last run") && g.layers === layers && g.heads === 4, g.status);
  c.add("run's map has the override (0,1) dense", g.routes[0][1] === 0, JSON.stringify(g.routes[0]));
  c.add("base under the override is the preset's (alternating: head 1 linear)", g.base[0][1] === 2, JSON.stringify(g.base[0]));
  c.add("node's ui text shown", g.report.includes("routing"), g.report);
  await focusNode(page, id);
  await clickCell(page, id, 0, 1); // dense -> sparse (base is linear)
  const mid = (await grids(page)).find((x) => x.id === id);
  c.add("click after the run cycles dense -> sparse", mid.overrides === "{\"0.1\":\"sparse\"}", mid.overrides);
  await clickCell(page, id, 0, 1); // sparse -> linear == base: the override goes away
  const after = (await grids(page)).find((x) => x.id === id);
  c.add("cycling back to the base route removes the override", after.overrides === "{}", after.overrides);
  await page.screenshot({ path: join(out, "real_run.png") });
  const errs = errors.filter((e) => e.phase === "run");
  c.add("no console error", errs.length === 0, errs.map((e) => `${e.text} ${e.url}`).join(" | "));
  return { ok: c.ok, checks: c.list };
}

// --- main ------------------------------------------------------------------------------------------

const files = readdirSync(wfDir).filter((f) => f.endsWith(".json")).sort().map((f) => join(wfDir, f));
const browser = await launch();
const t0 = Date.now();
try {
  const { page, errors, external, gaps, probes, phase } = await openComfy(browser, url);
  await installProbe(page);
  for (const file of files) {
    const name = basename(file, ".json");
    try {
      results.workflows[name] = await testWorkflow(page, phase, errors, file);
    } catch (e) {
      results.workflows[name] = { ok: false, checks: [{ name: "driver", ok: false, detail: e.stack ?? String(e) }] };
    }
    if (name === basename(files[files.length - 1], ".json")) {
      try {
        results.extra.report = await testReport(page, phase, errors);
      } catch (e) {
        results.extra.report = { ok: false, checks: [{ name: "driver", ok: false, detail: e.stack ?? String(e) }] };
      }
    }
  }
  try {
    results.extra.real_run = await testRealRun(page, phase, errors);
  } catch (e) {
    results.extra.real_run = { ok: false, checks: [{ name: "driver", ok: false, detail: e.stack ?? String(e) }] };
  }
  try {
    results.extra.compare_plot = await testComparePlot(page, phase, errors, { out, wfDir });
  } catch (e) {
    results.extra.compare_plot = { ok: false, checks: [{ name: "driver", ok: false, detail: e.stack ?? String(e) }] };
  }
  Object.assign(results.extra, await testSubgraphs(page, phase, errors, { out, wfDir }));
  results.startup_errors = errors.filter((e) => e.phase === "startup");
  results.server_gaps = [...new Set(gaps.map((e) => e.text.split("\n")[0]))];
  results.model_probes = [...probes].map(([url, phase]) => ({ url, phase }));
  results.default_graph_models = await page.evaluate(() => (window.comfyAPI.defaultGraph?.defaultGraph?.nodes ?? [])
    .flatMap((n) => n.properties?.models ?? []).map((m) => m.url)); // the frontend's start-up graph probes these
  results.external_requests = [...new Set(external)];
} catch (e) {
  results.fatal = e.stack ?? String(e);
}
results.seconds = (Date.now() - t0) / 1000;
writeFileSync(join(out, "results.json"), JSON.stringify(results, null, 2));
await browser.close();
for (const [name, r] of Object.entries({ ...results.workflows, ...results.extra })) {
  const bad = r.checks.filter((x) => !x.ok);
  console.log(`${r.ok ? "PASS" : "FAIL"} ${name} (${r.checks.length} checks)${bad.map((b) => `\n  - ${b.name}: ${b.detail}`).join("")}`);
}
console.log(`browser run: ${results.seconds.toFixed(1)} s, ${results.startup_errors.length} start-up console errors, ` +
  `${results.external_requests.length} blocked external requests`);
process.exit(results.fatal ? 2 : 0);
