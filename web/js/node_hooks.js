/**
 * Node hook chaining shared by SparseFlow's frontend extensions (routing_grid.js, compare_plot.js): run our
 * handler after whatever the node (or another extension) already had on that hook, keeping its return value.
 */

export function chain(obj, name, fn) {
  const prev = obj[name];
  obj[name] = function (...args) {
    const r = prev?.apply(this, args);
    fn.apply(this, args);
    return r;
  };
}
