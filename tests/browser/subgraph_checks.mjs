/**
 * Browser checks of SparseFlow nodes inside subgraphs, as the newest Wan templates use them. The frontend under
 * test builds the subgraph itself (LGraph.convertToSubgraph, what "Convert to Subgraph" runs), so the saved JSON
 * is what that frontend writes (`definitions.subgraphs`, a subgraph node in the root graph). Two cases:
 *
 * - expert pair: workflows/wan2.2_t2v_14B_sparseflow.json with both experts (loaders, ModelSamplingSD3, Patch,
 *   KSamplerAdvanced) in one subgraph and Schedule/Routing outside. The saved file reloads without missing nodes
 *   or errors; inside the subgraph each Patch grid shows the outer Routing's map (through the subgraph input); a
 *   click lands in the definition's widgets_values and in the flattened prompt ("<subgraph node>:<inner>"), which
 *   the server validates with no error but the absent model files; an executed message and a run report with the
 *   inner execution id reach that Patch only.
 * - real run: Routing -> Save Routing inside a subgraph, queued for real; the executed message (id
 *   "<subgraph node>:<inner>") reaches the inner Routing grid through the frontend's own onExecuted dispatch.
 */

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { fitView } from "./lib.mjs";
import { Checks, ROUTE_COLORS, cellPixel, clickCell, focusNode, grids, loadJson, shadeOf, uiProblems } from "./probe.mjs";

const MODEL_LOADERS = new Set(["UNETLoader", "CLIPLoader", "VAELoader", "CLIPVisionLoader"]);
const EXPERTS = ["UNETLoader", "ModelSamplingSD3", "SparseFlowPatch", "KSamplerAdvanced"];

/** Convert the root-graph nodes of the given types (or ids) into one subgraph; returns the subgraph node's id. */
async function convert(page, { types = [], ids = [], title }) {
  return page.evaluate(({ types, ids, title }) => {
    const app = window.comfyAPI.app.app;
    const picked = app.graph.nodes.filter((n) => types.includes(n.type) || ids.includes(String(n.id)));
    const { node } = app.graph.convertToSubgraph(new Set(picked));
    node.title = title;
    app.canvas.setDirty(true, true);
    return String(node.id);
  }, { types, ids, title });
}

async function openSubgraph(page, hostId) {
  await page.evaluate((hostId) => {
    const app = window.comfyAPI.app.app;
    const host = window.__sfNode(hostId);
    app.canvas.openSubgraph(host.subgraph, host);
  }, hostId);
  await page.waitForTimeout(400);
  await fitView(page);
}

const backToRoot = (page) => page.evaluate(() => window.comfyAPI.app.app.canvas.setGraph(window.comfyAPI.app.app.graph));

async function expertPair(page, phase, errors, { out, wfDir }) {
  const c = new Checks();
  const name = "wan2.2_t2v_14B_sparseflow";
  phase.name = "subgraph:build";
  await loadJson(page, name, readFileSync(join(wfDir, `${name}.json`), "utf8"));
  const hostId = await convert(page, { types: EXPERTS, title: "Wan 2.2 14B experts" });
  const saved = await page.evaluate(() => window.comfyAPI.app.app.graph.serialize());
  const defs = saved.definitions?.subgraphs ?? [];
  const inner = defs[0]?.nodes ?? [];
  c.add("saved JSON has one subgraph definition holding both Patch nodes", defs.length === 1 &&
    inner.filter((n) => n.type === "SparseFlowPatch").length === 2, JSON.stringify(defs.map((d) => d.nodes?.map((n) => n.type))));
  c.add("the root graph holds the subgraph node, Routing and Schedule", saved.nodes.some((n) => n.type === defs[0]?.id) &&
    saved.nodes.some((n) => n.type === "SparseFlowRouting") && !saved.nodes.some((n) => n.type === "SparseFlowPatch"),
  saved.nodes.map((n) => n.type).join(","));
  const json = JSON.stringify(saved);
  writeFileSync(join(out, `${name}.subgraph.json`), json);

  // -- open the saved file as a user would
  await page.evaluate(() => window.comfyAPI.app.app.graph.clear());
  phase.name = "subgraph:load";
  await loadJson(page, `${name}.subgraph`, json);
  const ui = await uiProblems(page);
  c.add("no missing node types", ui.missing.length === 0, ui.missing.join(", "));
  c.add("no dialog or error toast after load", ui.dialogs.length + ui.toasts.length === 0, [...ui.dialogs, ...ui.toasts].join(" | "));
  await openSubgraph(page, hostId);
  const patches = (await grids(page)).filter((g) => g.id.startsWith(`${hostId}:`) && g.type === "SparseFlowPatch");
  c.add("both Patch grids inside the subgraph", patches.length === 2, patches.map((g) => g.id).join(","));
  for (const g of patches) {
    c.add(`Patch ${g.id} shows the outer Routing's 40x40 map through the subgraph input`, g.drawn && g.layers === 40 &&
      g.heads === 40 && g.status.includes("from SparseFlow Routing"), g.status);
    if (g.drawn) {
      const px = await cellPixel(page, g.id, 1, 0);
      c.add(`Patch ${g.id} cell (1,0) has its route's colour`, shadeOf(px, ROUTE_COLORS[g.routes[1][0]]), `${px}`);
    }
  }
  await page.screenshot({ path: join(out, `${name}.subgraph.png`) });
  if (!patches.length || !patches[0].drawn) return { ok: false, checks: c.list };

  // -- a click on an inner Patch: saved in the definition, flattened into the prompt with the inner id
  const target = patches[0], other = patches[1];
  await focusNode(page, target.id);
  await clickCell(page, target.id, 3, 4);
  const edited = (await grids(page)).find((g) => g.id === target.id);
  c.add("a click on an inner Patch cell stores an override", edited.overrides !== target.overrides && edited.overrides.includes("3.4"),
    edited.overrides);
  phase.name = "subgraph:validate"; // the server's answer is a 400 listing the absent model files: one console line
  const state = await page.evaluate(async ({ id }) => {
    const app = window.comfyAPI.app.app;
    const g = app.graph.serialize();
    const local = id.split(":").pop();
    const def = g.definitions.subgraphs[0].nodes.find((n) => String(n.id) === local);
    const prompt = await app.graphToPrompt();
    const r = await fetch("/prompt", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: prompt.output, client_id: "sparseflow-test" }) });
    const body = await r.json();
    return { defValues: def?.widgets_values ?? null, inputs: prompt.output[id]?.inputs ?? null, keys: Object.keys(prompt.output),
      status: r.status, nodeErrors: Object.entries(body.node_errors ?? {}).map(([k, v]) => ({ id: k, cls: v.class_type,
        types: v.errors.map((e) => `${e.type}:${e.extra_info?.input_name}`) })), error: body.error?.type ?? null };
  }, { id: target.id });
  c.add("the subgraph definition's widgets_values carry the override", (state.defValues ?? []).includes(edited.overrides),
    JSON.stringify(state.defValues));
  c.add(`graphToPrompt() has the inner Patch as ${target.id} with the override`, state.inputs?.routing_overrides === edited.overrides,
    JSON.stringify(state.inputs ?? state.keys));
  const routingId = (await grids(page)).find((g) => g.type === "SparseFlowRouting")?.id;
  c.add("its routing input is linked to the Routing node outside the subgraph", String(state.inputs?.routing?.[0]) === routingId,
    JSON.stringify(state.inputs?.routing));
  const notModels = state.nodeErrors.filter((e) => !MODEL_LOADERS.has(e.cls) || e.types.some((t) => !t.startsWith("value_not_in_list")));
  c.add("the server validates the flattened prompt: no error but the absent model files", notModels.length === 0 &&
    (state.status === 200 || state.nodeErrors.length > 0), JSON.stringify(state));

  // -- an executed message and a run report with the inner execution id
  phase.name = "subgraph:run-events";
  const err = Array.from({ length: 40 }, (_, l) => Array.from({ length: 40 }, (_, h) => (l === 7 && h === 9 ? 0.5 : 0.01)));
  await page.evaluate(({ id, err }) => {
    const api = window.comfyAPI.api.api;
    api.dispatchCustomEvent("executed", { node: id, display_node: id, output: { sparseflow_routing: [{ layers: 40, heads: 40, error: err,
      routes: Array.from({ length: 40 }, () => new Array(40).fill(1)) }], text: ["inner run"] } });
    api.dispatchCustomEvent("sparseflow.report", { node: id, text: "steps 4, density 0.3", density_per_step: [1, 0.3, 0.3, 0.3] });
  }, { id: target.id, err });
  await page.waitForTimeout(400);
  const after = await grids(page);
  const t = after.find((g) => g.id === target.id), o = after.find((g) => g.id === other.id);
  c.add(`executed for ${target.id} reaches the inner Patch (ui text shown)`, t.report.includes("inner run"), t.report);
  const dark = await cellPixel(page, target.id, 7, 9), plain = await cellPixel(page, target.id, 7, 8);
  c.add("its calibration-error shade is drawn", dark[0] + dark[1] + dark[2] < plain[0] + plain[1] + plain[2] - 60, `${dark} vs ${plain}`);
  c.add(`the run report for ${target.id} is shown there`, t.report.includes("density 0.3"), t.report);
  c.add("the other Patch in the subgraph gets neither", !o.report, o.report);
  const validation = errors.filter((e) => e.phase === "subgraph:validate");
  c.add("the only console line while validating is the server's 400", validation.length <= 1 &&
    validation.every((e) => e.url.endsWith("/prompt") && e.text.includes("400")), validation.map((e) => e.text).join(" | "));
  const errs = errors.filter((e) => e.phase.startsWith("subgraph:") && e.phase !== "subgraph:validate");
  c.add("no console error", errs.length === 0, errs.map((e) => `${e.phase} ${e.text} ${e.url}`).join(" | "));
  await backToRoot(page);
  return { ok: c.ok, checks: c.list };
}

async function realRun(page, phase, errors, { out }) {
  const c = new Checks();
  phase.name = "subgraph:real-run";
  const layers = 6 + ((Date.now() >> 3) % 120); // new inputs each run: ComfyUI's cache cannot skip the node
  const ids = await page.evaluate(({ layers }) => {
    const app = window.comfyAPI.app.app;
    app.graph.clear();
    const set = (n, k, v) => { n.widgets.find((w) => w.name === k).value = v; };
    const r = window.LiteGraph.createNode("SparseFlowRouting");
    r.pos = [100, 100];
    app.graph.add(r);
    set(r, "layers", layers); set(r, "heads", 6); set(r, "preset", "heuristic"); set(r, "routing_overrides", "{\"1.2\":\"dense\"}");
    const s = window.LiteGraph.createNode("SparseFlowSaveRouting");
    s.pos = [600, 100];
    app.graph.add(s);
    set(s, "filename", `browser_subgraph_${Date.now()}`);
    r.connect(0, s, 0);
    return [String(r.id), String(s.id)];
  }, { layers });
  const hostId = await convert(page, { ids, title: "Routing in a subgraph" });
  const innerId = (await grids(page)).find((g) => g.type === "SparseFlowRouting" && g.id.startsWith(`${hostId}:`))?.id;
  if (!c.add("the Routing node is inside the subgraph", innerId, JSON.stringify(await grids(page)))) return { ok: false, checks: c.list };
  await page.evaluate(async () => {
    const app = window.comfyAPI.app.app;
    window.__sfExec = [];
    window.comfyAPI.api.api.addEventListener("executed", (e) => window.__sfExec.push(String(e.detail.display_node ?? e.detail.node)));
    await app.queuePrompt(0, 1);
  });
  try {
    await page.waitForFunction((id) => window.__sfExec.includes(id), innerId, { timeout: 30_000 });
  } catch {
    c.add(`an executed message for ${innerId}`, false, `got ${await page.evaluate(() => JSON.stringify(window.__sfExec))}`);
    return { ok: false, checks: c.list };
  }
  c.add(`the server's executed message names the inner node as ${innerId}`, true);
  await openSubgraph(page, hostId);
  const g = (await grids(page)).find((x) => x.id === innerId);
  c.add("the inner grid shows the map of the run", g.status.includes("last run") && g.layers === layers && g.heads === 6, g.status);
  c.add("the run's map has the override (1,2) dense", g.routes?.[1]?.[2] === 0, JSON.stringify(g.routes?.[1]));
  c.add("the node's ui text is shown", g.report.includes("routing"), g.report);
  await page.screenshot({ path: join(out, "subgraph_real_run.png") });
  await backToRoot(page);
  const errs = errors.filter((e) => e.phase === "subgraph:real-run");
  c.add("no console error", errs.length === 0, errs.map((e) => `${e.text} ${e.url}`).join(" | "));
  return { ok: c.ok, checks: c.list };
}

/** Both subgraph cases; a driver failure in one is reported as a failed check and does not stop the other. */
export async function testSubgraphs(page, phase, errors, opts) {
  const results = {};
  for (const [key, fn] of [["subgraph_expert_pair", expertPair], ["subgraph_real_run", realRun]]) {
    try {
      results[key] = await fn(page, phase, errors, opts);
    } catch (e) {
      results[key] = { ok: false, checks: [{ name: "driver", ok: false, detail: e.stack ?? String(e) }] };
      await backToRoot(page).catch(() => {});
    }
  }
  return results;
}
