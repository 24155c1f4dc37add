/**
 * Page-side probes shared by the browser test drivers: a check list, the missing-node probe, file loads the way
 * a user's drop does (app.handleFile), what each SparseFlow grid shows, cell pixels, real mouse clicks on cells,
 * and what app.graph.serialize() / app.graphToPrompt() carry. Nodes are named by execution id: "12" at the root,
 * "<subgraph node id>:<inner id>" inside a subgraph (window.__sfNode resolves both), so the same probes work on
 * nodes inside subgraphs.
 */

export const ROUTE_COLORS = [[150, 150, 150], [52, 120, 246], [245, 145, 40]];

export class Checks {
  constructor() { this.list = []; }
  add(name, ok, detail = "") { this.list.push({ name, ok: Boolean(ok), detail: String(detail).slice(0, 2000) }); return ok; }
  get ok() { return this.list.every((c) => c.ok); }
}

/** Test probe: remembers the missing node types of each graph load (afterConfigureGraph); defines __sfNode. */
export async function installProbe(page) {
  await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    window.__sfMissing = null;
    window.__sfNode = (id) => {
      const parts = String(id).split(":");
      let graph = app.graph;
      for (const p of parts.slice(0, -1)) graph = graph?.getNodeById(p)?.subgraph;
      return graph?.getNodeById(parts[parts.length - 1]) ?? null;
    };
    app.registerExtension({
      name: "SparseFlow.TestProbe",
      afterConfigureGraph(missing) { window.__sfMissing = [...(missing ?? [])].map((m) => (typeof m === "string" ? m : m.type)); },
    });
  });
}

export async function loadJson(page, name, json) {
  await page.evaluate(async ({ name, json }) => {
    const app = window.comfyAPI.app.app;
    window.__sfMissing = null;
    await app.handleFile(new File([json], `${name}.json`, { type: "application/json" }));
  }, { name, json });
  await page.waitForFunction(() => window.__sfMissing !== null, null, { timeout: 20_000 });
  await page.waitForTimeout(500);
}

/** What each SparseFlow grid shows now, in the root graph and every subgraph (id: the execution id path). */
export async function grids(page) {
  return page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const out = [];
    const visit = (graph, prefix, depth) => {
      for (const n of graph.nodes) {
        const id = prefix + String(n.id);
        if (n.isSubgraphNode?.() && depth < 8) visit(n.subgraph, `${id}:`, depth + 1);
        if (!n.sparseflowGrid) continue;
        const g = n.sparseflowGrid;
        const w = n.widgets.find((x) => x.name === "routing_overrides");
        out.push({
          id, type: n.comfyClass, title: n.title, overrides: w?.value,
          hidden: Boolean(w?.hidden), drawn: Boolean(g.view),
          layers: g.view?.routes.length ?? 0, heads: g.view?.routes[0]?.length ?? 0,
          routes: g.view?.routes ?? null, base: g.view?.base ?? null,
          legend: g.legend.textContent, status: g.status.textContent, report: g.reportText.textContent,
        });
      }
    };
    visit(app.graph, "", 0);
    return out;
  });
}

/**
 * Wait until a grid shows what it will show: its canvas is in the page at its laid-out size and was last drawn at
 * that size (the frontend mounts and sizes DOM widgets on its next canvas frames, after a load, a resize or a
 * subgraph change). Returns where it stands when it gives up (after `timeout` ms), for failure messages.
 */
export async function settle(page, id, timeout = 5000) {
  const ready = (id) => {
    const g = window.__sfNode(id)?.sparseflowGrid, c = g?.canvas;
    return Boolean(c?.isConnected && c.clientWidth > 1 && c.clientHeight > 1 && g.view && !g.frame &&
      c.width === Math.round(c.clientWidth * g.view.dpr) && c.height === Math.round(c.clientHeight * g.view.dpr));
  };
  try {
    await page.waitForFunction(ready, id, { timeout, polling: "raf" });
    return null;
  } catch {
    return page.evaluate((id) => {
      const g = window.__sfNode(id)?.sparseflowGrid, c = g?.canvas;
      return g ? `grid of ${id} not settled: in page ${c.isConnected}, css ${c.clientWidth}x${c.clientHeight}, ` +
        `canvas ${c.width}x${c.height}, drawn ${Boolean(g.view)}` : `no grid on ${id}`;
    }, id);
  }
}

/** RGB of a cell's centre read back from the grid canvas (device pixels), once the grid has settled. */
export async function cellPixel(page, id, layer, head) {
  await settle(page, id);
  return page.evaluate(({ id, layer, head }) => {
    const g = window.__sfNode(id).sparseflowGrid;
    const { layout } = g.view;
    const dpr = g.view.dpr;
    const x = Math.floor((layout.left + (head + 0.5) * layout.cw) * dpr), y = Math.floor((layout.top + (layer + 0.5) * layout.ch) * dpr);
    return [...g.canvas.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)];
  }, { id, layer, head });
}

/** Put a node (of the graph on screen) at the top left at zoom 1, so its cells are big enough to click. */
export async function focusNode(page, id) {
  await page.evaluate((id) => {
    const app = window.comfyAPI.app.app;
    const n = window.__sfNode(id);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset[0] = 80 - n.pos[0];
    app.canvas.ds.offset[1] = 130 - n.pos[1];
    app.canvas.setDirty(true, true);
  }, id);
  await page.waitForTimeout(400);
}

export async function clickCell(page, id, layer, head) {
  await settle(page, id);
  const p = await page.evaluate(({ id, layer, head }) => window.__sfNode(id).sparseflowGrid.cellCenter(layer, head),
    { id, layer, head });
  await page.mouse.move(p.x, p.y);
  await page.mouse.down();
  await page.mouse.up();
  await page.waitForTimeout(250);
}

/** A root-graph node's routing_overrides as app.graph.serialize() and app.graphToPrompt() carry it. */
export async function savedState(page, id) {
  return page.evaluate(async (id) => {
    const app = window.comfyAPI.app.app;
    const graph = app.graph.serialize();
    const node = graph.nodes.find((n) => String(n.id) === String(id));
    const live = window.__sfNode(id);
    const names = live.widgets.filter((w) => w.serialize !== false).map((w) => w.name);
    const prompt = await app.graphToPrompt();
    return {
      json: JSON.stringify(graph),
      widgetValue: node.widgets_values[names.indexOf("routing_overrides")],
      gridInWidgets: names.includes("sparseflow_routing_grid"),
      promptValue: prompt.output[String(id)]?.inputs?.routing_overrides,
      promptKeys: Object.keys(prompt.output[String(id)]?.inputs ?? {}),
    };
  }, id);
}

/** px is `color` darkened by one common factor in [0, 0.6] (the calibration-error shade), within rounding. */
export const shadeOf = (px, color) => {
  if (!px || !color) return false;
  const f = px.map((v, i) => v / color[i]);
  return Math.max(...f) - Math.min(...f) < 0.04 && Math.min(...f) > 0.38 && Math.max(...f) < 1.02;
};
export const nextRoute = (r) => (r + 1) % 3;

export async function uiProblems(page) {
  return page.evaluate(() => {
    const visible = (el) => el.offsetParent !== null || el.getClientRects().length > 0;
    const dialogs = [...document.querySelectorAll(".p-dialog")].filter(visible).map((d) => d.textContent.slice(0, 300));
    const toasts = [...document.querySelectorAll(".p-toast-message-error")].filter(visible).map((t) => t.textContent.slice(0, 300));
    return { missing: window.__sfMissing, dialogs, toasts };
  });
}
