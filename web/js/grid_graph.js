/**
 * SparseFlow routing grid, graph walking: which node feeds an input (across subgraph boundaries), the Wan size
 * named by the model loader upstream, and the node an execution id ("12" or "<subgraph node id>:<inner id>",
 * as ComfyUI's executed messages and the node's UNIQUE_ID carry them) stands for.
 *
 * Works on the LiteGraph objects of both supported frontends (ComfyUI frontend 1.27 and 1.58): a node lives in
 * `node.graph` (the root graph or a Subgraph); a link from a subgraph's input node has origin id -10, a subgraph
 * node's outputs come from links into the subgraph's output node (-20), as LiteGraph's constants.ts defines them.
 */

import { wanShapeFromName } from "./routing_math.js";

const SUBGRAPH_INPUT_ID = "-10";
const MAX_HOPS = 32;
const MODEL_WIDGETS = ["unet_name", "ckpt_name", "model_name"];

export const widget = (node, name) => node?.widgets?.find((w) => w.name === name);

function linkOf(graph, id) {
  if (id == null || !graph) return null;
  return graph.getLink?.(id) ?? graph.links?.get?.(id) ?? graph.links?.[id] ?? null;
}

/** The one subgraph node that shows `subgraph` (null for the root graph, or when several instances use it). */
function hostOf(subgraph) {
  const root = subgraph?.rootGraph;
  if (!root || root === subgraph) return null;
  const hosts = [];
  for (const graph of [root, ...(root.subgraphs?.values?.() ?? [])]) {
    for (const n of graph.nodes ?? []) if (n.isSubgraphNode?.() && n.subgraph === subgraph) hosts.push(n);
  }
  return hosts.length === 1 ? hosts[0] : null;
}

/** The node a link comes from, stepping out of a subgraph's inputs and into a subgraph node's outputs. */
function origin(graph, link, hops) {
  if (!link || hops > MAX_HOPS) return null;
  if (String(link.origin_id) === SUBGRAPH_INPUT_ID) {
    const host = hostOf(graph);
    return host ? inputSource(host, link.origin_slot, hops + 1) : null;
  }
  const node = graph.getNodeById(link.origin_id);
  if (node?.isSubgraphNode?.() && node.subgraph) {
    const inner = node.subgraph.outputs?.[link.origin_slot];
    return origin(node.subgraph, linkOf(node.subgraph, inner?.linkIds?.[0]), hops + 1);
  }
  return node ?? null;
}

function inputSource(node, slot, hops = 0) {
  const input = node?.inputs?.[slot];
  return input?.link == null ? null : origin(node.graph, linkOf(node.graph, input.link), hops);
}

/** The node feeding `node`'s input `name`, wherever it sits in the subgraph tree, or null. */
export function upstream(node, name) {
  const slot = node?.inputs?.findIndex((i) => i.name === name) ?? -1;
  return slot < 0 ? null : inputSource(node, slot);
}

/** [layers, heads] from the model loader feeding `node` (through pass-through nodes and subgraphs), or null. */
export function shapeFromModel(node) {
  let cur = node;
  for (let hops = 0; cur && hops < MAX_HOPS; hops++) {
    for (const w of cur.widgets ?? []) {
      if (MODEL_WIDGETS.includes(w.name)) return wanShapeFromName(String(w.value));
    }
    cur = upstream(cur, "model");
  }
  return null;
}

/** The node an execution id names, walking subgraph nodes from the root graph; null when it names none. */
export function nodeAtExecutionId(rootGraph, id) {
  const parts = String(id).split(":");
  let graph = rootGraph;
  for (const part of parts.slice(0, -1)) {
    const host = graph?.getNodeById(part);
    if (!host?.isSubgraphNode?.()) return null;
    graph = host.subgraph;
  }
  return graph?.getNodeById(parts[parts.length - 1]) ?? null;
}
