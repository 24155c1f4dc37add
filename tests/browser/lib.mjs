/**
 * Shared helpers of the browser scripts: launch Debian's chromium through playwright-core, open a ComfyUI page
 * with the SparseFlow extension registered, collect console errors, and fit the canvas to the graph.
 * No browser is ever downloaded: the executable is /usr/bin/chromium (or $CHROMIUM).
 */

import { chromium } from "playwright-core";

export const CHROMIUM_FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/**
 * What the newest frontend (1.58) asks of the server that ComfyUI 0.3.64, the server of these tests, does not serve:
 * the Jobs API (/api/jobs, ComfyUI's comfy_execution/jobs.py) and subgraph blueprints (/api/global_subgraphs,
 * app/subgraph_manager.py); the newest ComfyUI serves both. Their 404s and the errors the frontend logs about them
 * are kept apart (`gaps`) instead of counting as page errors; every other error counts. So are the HEAD requests
 * 1.55+ sends to the download URLs of a loaded workflow's missing model files (aborted here, listed in `probes`,
 * their "Failed to load resource" lines in `gaps`): the official templates carry the same `models` metadata.
 */
export const SERVER_GAPS = [/\/api\/jobs\?/, /\[Jobs API\]/, /JobsApiError/, /\/api\/global_subgraphs\b/];
/** Errors the pinned frontend logs by itself: 1.27.10's minimap (useMinimapGraph.ts) on every switch to a graph
 * that holds subgraphs, with the minimap hidden. Also kept in `gaps`. */
export const FRONTEND_NOISE = [/^Attempted to cleanup event listeners for graph that was never set up$/];

export function argValue(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

/** A chromium with an empty profile (playwright makes a fresh temp user-data-dir for each launch). */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_FLAGS,
  });
}

/**
 * A page on `url` once the app is up and SparseFlow.RoutingGrid is registered. Every request that leaves the
 * server's origin is aborted and recorded in `external`; console errors and page errors go to `errors` with the
 * phase they happened in (set `phase.name`), so start-up noise of the test server can be told from errors
 * that a workflow causes.
 */
export async function openComfy(browser, url, { width = 1920, height = 1080 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const origin = new URL(url).origin;
  const errors = [], external = [], gaps = [];
  const phase = { name: "startup" };
  const gap = (e) => SERVER_GAPS.some((re) => re.test(`${e.text} ${e.url}`)) || FRONTEND_NOISE.some((re) => re.test(e.text)) ||
    probes.has(e.url);
  const record = (e) => (gap(e) ? gaps : errors).push(e);
  const probes = new Map(); // url -> phase: model files the frontend checks with HEAD (1.55+), from a graph's `models`
  await page.route((u) => u.origin !== origin, (route) => {
    const req = route.request();
    if (req.method() === "HEAD" && /\.safetensors$/.test(new URL(req.url()).pathname)) probes.set(req.url(), phase.name);
    else external.push(req.url());
    return route.abort();
  });
  page.on("console", (m) => {
    if (m.type() === "error") record({ phase: phase.name, text: m.text(), url: m.location()?.url ?? "" });
  });
  page.on("pageerror", (e) => record({ phase: phase.name, text: `${e.name}: ${e.message}`, url: "", stack: e.stack ?? "" }));
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(
    () => window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.canvas && window.LiteGraph?.registered_node_types?.SparseFlowPatch &&
      window.comfyAPI.app.app.extensions?.some?.((e) => e.name === "SparseFlow.RoutingGrid"),
    null, { timeout: 90_000 },
  );
  await page.waitForTimeout(500);
  return { context, page, errors, external, gaps, probes, phase };
}

/** Fit the canvas to every node of the graph on screen (the root or an open subgraph) with the frontend's own
 * DragAndScale.fitToBounds, leaving the top bars clear. */
export async function fitView(page, { zoom = 0.92 } = {}) {
  await page.evaluate(({ zoom }) => {
    const app = window.comfyAPI.app.app;
    const nodes = (app.canvas.graph ?? app.graph).nodes;
    if (!nodes.length) return;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
      x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const top = 100 / (app.canvas.ds.scale || 1); // room for the tab and menu bars, in graph units
    app.canvas.ds.fitToBounds([x0 - 20, y0 - top, x1 - x0 + 40, y1 - y0 + top + 20], { zoom });
    const s = app.canvas.ds.scale;
    app.canvas.ds.fitToBounds([x0 - 20, y0 - 100 / s, x1 - x0 + 40, y1 - y0 + 100 / s + 20], { zoom });
    app.canvas.setDirty(true, true);
  }, { zoom });
  await page.waitForTimeout(300);
}
