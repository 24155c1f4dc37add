// Unit tests of web/js/grid_graph.js (node --test) on small LiteGraph-shaped objects: an execution id
// "<subgraph node>:<inner>" names the inner node; upstream() steps out of a subgraph's input (origin -10) to the
// node feeding the subgraph node, and into a subgraph node's output; a definition used twice is ambiguous (null).
import assert from "node:assert/strict";
import { test } from "node:test";

import { nodeAtExecutionId, shapeFromModel, upstream } from "../../web/js/grid_graph.js";

function graph(nodes, links, extra = {}) {
  const g = { nodes, links: new Map(links.map((l) => [l.id, l])), ...extra };
  g.getNodeById = (id) => nodes.find((n) => String(n.id) === String(id)) ?? null;
  g.getLink = (id) => g.links.get(id);
  for (const n of nodes) n.graph = g;
  return g;
}
const node = (id, inputs = [], extra = {}) => ({ id, inputs: inputs.map(([name, link]) => ({ name, link })), ...extra });

function world({ instances = 1 } = {}) {
  const loader = node(1, [], { widgets: [{ name: "unet_name", value: "wan2.1_t2v_1.3B_fp16.safetensors" }] });
  const routing = node(11);
  const patch = node(12, [["model", 101], ["routing", 102]]);
  const sampler = node(30, [["model", 103]]);
  const sub = graph([patch], [
    { id: 101, origin_id: -10, origin_slot: 0 }, { id: 102, origin_id: -10, origin_slot: 1 },
  ], { outputs: [{ linkIds: [104] }] });
  sub.links.set(104, { id: 104, origin_id: 12, origin_slot: 0 });
  const hosts = Array.from({ length: instances }, (_, i) => node(43 + i, [["model", 201], ["routing", 202]],
    { subgraph: sub, isSubgraphNode: () => true }));
  const root = graph([loader, routing, ...hosts, sampler], [
    { id: 201, origin_id: 1, origin_slot: 0 }, { id: 202, origin_id: 11, origin_slot: 0 },
    { id: 103, origin_id: 43, origin_slot: 0 },
  ], { subgraphs: new Map([["uuid", sub]]) });
  root.rootGraph = root;
  sub.rootGraph = root;
  return { root, sub, loader, routing, patch, sampler };
}

test("an execution id names the node inside the subgraph, a root id the root node", () => {
  const { root, patch, routing } = world();
  assert.equal(nodeAtExecutionId(root, "43:12"), patch);
  assert.equal(nodeAtExecutionId(root, "11"), routing);
  assert.equal(nodeAtExecutionId(root, "12"), null);
  assert.equal(nodeAtExecutionId(root, "11:12"), null);
});

test("upstream steps out of a subgraph input and into a subgraph output", () => {
  const { routing, patch, sampler } = world();
  assert.equal(upstream(patch, "routing"), routing);
  assert.deepEqual(shapeFromModel(patch), [30, 12]);
  assert.equal(upstream(sampler, "model"), patch);
  assert.equal(upstream(patch, "nothing"), null);
});

test("a subgraph definition used by two subgraph nodes has no single upstream", () => {
  const { patch } = world({ instances: 2 });
  assert.equal(upstream(patch, "routing"), null);
});
