/**
 * SparseFlow routing grid, DOM helpers: element creation (text through textContent only), the widget's style
 * sheet (added once) and DPR-aware canvas sizing. No ComfyUI and no grid state.
 */

export const rgb = (c, a = 1) => `rgba(${c[0]},${c[1]},${c[2]},${a})`;

export const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

export function addStyle() {
  if (document.getElementById("sparseflow-grid-style")) return;
  const style = el("style");
  style.id = "sparseflow-grid-style";
  style.textContent = `
.sf-grid{display:flex;flex-direction:column;gap:3px;font:11px sans-serif;color:var(--input-text,#ddd);
  box-sizing:border-box;padding:2px 4px;overflow:hidden}
.sf-legend{display:flex;flex-wrap:wrap;gap:8px;align-items:center;min-height:16px}
.sf-sw{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:-1px;border-radius:2px}
.sf-canvas{flex:1 1 auto;min-height:20px;width:100%;cursor:pointer;touch-action:none}
.sf-status{min-height:14px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;opacity:.85}
.sf-status.sf-error{color:#ff8a80;opacity:1}
.sf-report{display:none;flex-direction:column;gap:2px}
.sf-report.sf-on{display:flex}
.sf-report-text{white-space:pre-wrap;max-height:34px;overflow:auto;opacity:.9}
.sf-bars{height:22px;width:100%}`;
  document.head.appendChild(style);
}

/** Size a canvas's backing store to its CSS box times devicePixelRatio; returns its cleared context and CSS size. */
export function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth), h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}
