/**
 * SparseFlow routing grid: a layers x heads map, coloured by attention route, on the SparseFlow Routing and
 * Patch nodes. Clicking a head cycles its route; the edits live in the node's Python-declared STRING widget
 * "routing_overrides" (a JSON object {"layer.head": route}), so they are saved in the workflow JSON and in
 * API prompts. After a run the grid shades each head by its calibration error (ui "sparseflow_routing") and
 * the Patch node shows the per-step density of the "sparseflow.report" websocket event.
 *
 * This file is the extension: it registers with app.registerExtension, attaches a RoutingGrid (grid_widget.js)
 * to each node in nodeCreated (nodes inside subgraphs too), chains the node's onExecuted / onConfigure /
 * onRemoved, and routes report events by execution id ("<subgraph node id>:<inner id>" inside subgraphs).
 * Works with ComfyUI frontend 1.27 (ComfyUI 0.3.64's pin) and 1.58. Follows KJNodes' canvas widgets (state in a
 * node widget, view state on the node, `app` from window.comfyAPI); plain ES modules, no build step.
 */

import { nodeAtExecutionId, widget } from "./grid_graph.js";
import { OVERRIDES, RoutingGrid, live, redrawAll } from "./grid_widget.js";
import { chain } from "./node_hooks.js";

const NODE_CLASSES = new Set(["SparseFlowRouting", "SparseFlowPatch"]);
const WIDGET_NAME = "sparseflow_routing_grid";
const SHAPE_WIDGETS = ["layers", "heads", "preset", "file"];

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

/** A "sparseflow.report" event goes to the Patch node its execution id names (inside subgraphs too). */
function onReport(app, event) {
  const detail = event?.detail;
  if (!detail || detail.node == null) return;
  const target = nodeAtExecutionId(app.rootGraph ?? app.graph, detail.node);
  for (const grid of live) {
    if (grid.node === target && grid.node.comfyClass === "SparseFlowPatch") {
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
      api?.addEventListener("sparseflow.report", (event) => onReport(app, event));
    },
    nodeCreated(node) {
      if (NODE_CLASSES.has(node.comfyClass)) attach(app, node);
    },
  });
}
