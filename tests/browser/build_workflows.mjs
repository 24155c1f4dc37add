/**
 * Writes workflows/<name>.json from workflow_specs.mjs through the real ComfyUI frontend: each spec's nodes are
 * created with LiteGraph.createNode, widgets set by name, links made by slot name, and the graph saved with
 * app.graph.serialize(), so the files match what the pinned frontend writes and loads.
 *
 *   node tests/browser/build_workflows.mjs --url http://127.0.0.1:8188 --out workflows
 *
 * The server must run this pack (tests/browser/comfy_server.py starts one). Model files need not exist.
 */

import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { argValue, fitView, launch, openComfy } from "./lib.mjs";
import { SPECS } from "./workflow_specs.mjs";

const url = argValue("url", "http://127.0.0.1:8188");
const out = argValue("out", "workflows");
const only = argValue("only", "");
mkdirSync(out, { recursive: true });

const browser = await launch();
const { page, errors, phase } = await openComfy(browser, url);
phase.name = "build";
let failed = false;
for (const spec of SPECS) {
  if (only && spec.name !== only) continue;
  const result = await page.evaluate(async (spec) => {
    const app = window.comfyAPI.app.app;
    const LG = window.LiteGraph;
    app.graph.clear();
    const problems = [];
    const byId = new Map();
    for (const n of spec.nodes) {
      const node = LG.createNode(n.type);
      if (!node) {
        problems.push(`unknown node type ${n.type}`);
        continue;
      }
      node.id = n.id;
      if (n.title) node.title = n.title;
      if (n.color) node.color = n.color;
      if (n.bgcolor) node.bgcolor = n.bgcolor;
      node.pos = [...n.pos];
      app.graph.add(node);
      for (const [name, value] of Object.entries(n.widgets ?? {})) {
        const w = node.widgets?.find((x) => x.name === name);
        if (!w) problems.push(`${n.type} #${n.id} has no widget ${name}`);
        else w.value = value;
      }
      if (n.models) node.properties.models = n.models;
      byId.set(n.id, node);
    }
    const slot = (list, key, kind) => {
      if (typeof key === "number") return key;
      let i = list.findIndex((s) => s.name === key);
      if (i < 0 && kind === "out") i = list.findIndex((s) => s.type === key);
      return i;
    };
    for (const [from, out, to, inp] of spec.links) {
      const a = byId.get(from), b = byId.get(to);
      const oi = a ? slot(a.outputs ?? [], out, "out") : -1, ii = b ? slot(b.inputs ?? [], inp, "in") : -1;
      if (oi < 0 || ii < 0 || !a.connect(oi, b, ii)) problems.push(`link ${from}.${out} -> ${to}.${inp} failed`);
    }
    for (const n of spec.nodes) {
      const node = byId.get(n.id);
      if (!node) continue;
      const min = node.computeSize();
      const [w, h] = n.size ?? node.size;
      node.setSize([Math.max(w, min[0]), Math.max(h, min[1])]);
    }
    app.canvas.setDirty(true, true);
    return { problems };
  }, spec);
  await page.waitForTimeout(400); // let the grids draw (they may grow their nodes)
  await fitView(page);
  const graph = await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const g = app.graph.serialize();
    g.extra = { ...(g.extra ?? {}), ds: { scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset] } };
    return g;
  });
  // a stable id per workflow name (UUID layout), so rebuilding gives the same file
  const h = createHash("sha1").update(`sparseflow/${spec.name}`).digest("hex");
  graph.id = `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
  if (result.problems.length) {
    failed = true;
    console.error(`${spec.name}: ${result.problems.join("; ")}`);
  }
  const path = join(out, `${spec.name}.json`);
  writeFileSync(path, JSON.stringify(graph, null, 2) + "\n");
  console.log(`wrote ${path} (${graph.nodes.length} nodes, ${graph.links.length} links)`);
}
const own = errors.filter((e) => e.phase === "build");
for (const e of own) console.error(`console error while building: ${e.text} ${e.url}`);
await browser.close();
process.exit(failed || own.length ? 1 : 0);
