/**
 * SparseFlow routing grid, painting: the layers x heads cells (route colour, calibration-error shade, a corner
 * mark on edited heads, the hovered cell), the legend row and the per-step density strip of a run report.
 * Plain 2D-canvas and DOM calls on what they are given; no grid state, no ComfyUI.
 */

import { el, rgb } from "./grid_dom.js";
import { DENSE, ROUTE_COLORS, ROUTE_NAMES, SPARSE, countRoutes, errorShade } from "./routing_math.js";

/** Every how many rows/columns a label fits at `px` pixels per cell. */
const labelStep = (px) => [1, 2, 5, 10, 20, 50, 100].find((k) => k * px >= 12) ?? 200;

function paintLabels(ctx, layout, layers, heads) {
  const { cw, ch } = layout;
  ctx.font = "9px sans-serif";
  ctx.fillStyle = "rgba(200,200,200,0.8)";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let l = 0; l < layers; l += labelStep(ch)) ctx.fillText(String(l), layout.left - 3, layout.top + (l + 0.5) * ch);
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  for (let hd = 0; hd < heads; hd += labelStep(cw) * (cw < 12 ? 2 : 1)) {
    ctx.fillText(String(hd), layout.left + (hd + 0.5) * cw, layout.top - 1);
  }
}

/** Paint the cells of `routes` (codes) into `layout`; `err` (or null) shades them, `hover` is [layer, head] or null. */
export function paintGrid(ctx, layout, { routes, overrides, err, hover }) {
  const layers = routes.length, heads = routes[0].length;
  const maxErr = err ? Math.max(0, ...err.flat().filter(Number.isFinite)) : 0;
  const { cw, ch } = layout, gx = cw >= 6 ? 1 : 0, gy = ch >= 6 ? 1 : 0;
  paintLabels(ctx, layout, layers, heads);
  for (let l = 0; l < layers; l++) {
    for (let hd = 0; hd < heads; hd++) {
      const x = layout.left + hd * cw, y = layout.top + l * ch;
      ctx.fillStyle = rgb(ROUTE_COLORS[routes[l][hd]]);
      ctx.fillRect(x, y, cw - gx, ch - gy);
      const shade = err ? errorShade(err[l][hd], maxErr) : 0;
      if (shade > 0) {
        ctx.fillStyle = `rgba(0,0,0,${shade})`;
        ctx.fillRect(x, y, cw - gx, ch - gy);
      }
      if (`${l}.${hd}` in overrides && ch >= 5) {
        // edited heads get a white corner mark, so a shared workflow shows what was changed by hand
        const m = Math.max(3, Math.min(cw, ch) * 0.5);
        ctx.fillStyle = "rgba(255,255,255,0.95)";
        ctx.beginPath();
        ctx.moveTo(x, y);
        ctx.lineTo(x + m, y);
        ctx.lineTo(x, y + m);
        ctx.fill();
      }
    }
  }
  if (hover && hover[0] < layers && hover[1] < heads) {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 1;
    ctx.strokeRect(layout.left + hover[1] * cw + 0.5, layout.top + hover[0] * ch + 0.5, cw - 1, ch - 1);
  }
}

/** The legend row's elements: a swatch and count per route, the number of edited heads, the shade note. */
export function legendItems(routes, overrides, withError) {
  const parts = [];
  const counts = routes ? countRoutes(routes) : null;
  ROUTE_NAMES.forEach((name, code) => {
    const item = el("span");
    const sw = el("span", "sf-sw");
    sw.style.background = rgb(ROUTE_COLORS[code]);
    item.append(sw, document.createTextNode(counts ? `${name} ${counts[name]}` : name));
    parts.push(item);
  });
  parts.push(el("span", null, `edited ${Object.keys(overrides).length}`));
  if (withError) parts.push(el("span", null, "darker = higher calibration error"));
  return parts;
}

/** One bar per sampling step, its height the step's attention density. */
export function paintDensity(ctx, w, h, densityPerStep) {
  const d = Array.isArray(densityPerStep) ? densityPerStep.map(Number) : [];
  ctx.fillStyle = "rgba(255,255,255,0.08)";
  ctx.fillRect(0, 0, w, h);
  if (!d.length) return;
  const bw = w / d.length, pad = bw > 3 ? 0.5 : 0;
  d.forEach((v, i) => {
    const frac = Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 0;
    // a dense step (density 1) is grey like a dense head; sparse steps are blue
    ctx.fillStyle = rgb(frac >= 0.999 ? ROUTE_COLORS[DENSE] : ROUTE_COLORS[SPARSE]);
    ctx.fillRect(i * bw + pad, h * (1 - frac), Math.max(1, bw - 2 * pad), h * frac);
  });
}
