// relaygate dashboard: DOM helpers, number formats and small SVG/HTML charts of its own.
// Text only ever goes through textContent, never through HTML parsing.
const NS = "http://www.w3.org/2000/svg";

// --- small DOM helpers ---------------------------------------------------------------------
export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}
export function row(cells, header) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el(header ? "th" : "td");
    if (cell instanceof Node) td.appendChild(cell);
    else if (cell && typeof cell === "object") {
      td.className = cell.cls || "";
      if (cell.node) td.appendChild(cell.node);
      else td.textContent = cell.text;
    } else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}
export const r = (text) => ({ text, cls: "r" });

// --- formatting ----------------------------------------------------------------------------
const nf = new Intl.NumberFormat("en-US");
export const fmtInt = (v) => nf.format(Math.round(v || 0));
export function fmtCompact(v) {
  v = v || 0;
  if (Math.abs(v) < 10000) return fmtInt(v);
  const units = [[1e9, "B"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) {
    if (Math.abs(v) >= size) return (v / size).toFixed(v / size >= 100 ? 0 : 1) + unit;
  }
  return fmtInt(v);
}
export function fmtUsd(v) {
  v = v || 0;
  if (v === 0) return "$0";
  if (v < 0.01) return "$" + v.toFixed(4);
  if (v < 100) return "$" + v.toFixed(2);
  return "$" + fmtInt(v);
}
export function fmtMs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1000) return Math.round(v) + " ms";
  return (v / 1000).toFixed(v < 10000 ? 2 : 1) + " s";
}
export function fmtDuration(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " m " + String(s % 60).padStart(2, "0") + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " m";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}
const pad = (n) => String(n).padStart(2, "0");
export const hhmm = (t) => { const d = new Date(t * 1000); return pad(d.getHours()) + ":" + pad(d.getMinutes()); };
export const hhmmss = (t) => { const d = new Date(t * 1000); return hhmm(t) + ":" + pad(d.getSeconds()); };
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
export const dayLabel = (day) => MONTHS[Number(day.slice(5, 7)) - 1] + " " + Number(day.slice(8, 10));

// --- charts --------------------------------------------------------------------------------
function niceScale(max, integer) {
  if (!(max > 0)) return { max: integer ? 4 : 1, step: integer ? 1 : 0.25 };
  const raw = max / 4;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  if (integer) step = Math.max(1, Math.ceil(step));
  return { max: step * Math.ceil(max / step - 1e-9), step };
}
function frame(host, scale, fmt, labels, labelEvery) {
  host.replaceChildren();
  const W = Math.max(240, host.clientWidth), H = Math.max(120, host.clientHeight);
  const m = { l: 50, r: 6, t: 10, b: 24 };
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const axis = svg("g", { class: "axis" });
  const ih = H - m.t - m.b, iw = W - m.l - m.r;
  const y = (v) => m.t + ih - (v / scale.max) * ih;
  for (let v = 0; v <= scale.max + 1e-9; v += scale.step) {
    axis.appendChild(svg("line", { class: v === 0 ? "base" : "grid", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    axis.appendChild(svg("text", { x: m.l - 8, y: y(v) + 4, "text-anchor": "end" }, fmt(v)));
  }
  const bw = iw / labels.length;
  labels.forEach((label, i) => {
    if (label && i % labelEvery === 0) {
      axis.appendChild(svg("text", { x: m.l + bw * (i + 0.5), y: H - 6, "text-anchor": "middle" }, label));
    }
  });
  s.appendChild(axis);
  host.appendChild(s);
  return { s, m, W, H, ih, iw, bw, y };
}
function hover(target, lines) {
  const tip = document.getElementById("tooltip");
  target.addEventListener("mouseenter", () => {
    tip.replaceChildren();
    lines().forEach((line, i) => {
      const div = el("div", "", i === 0 ? undefined : line);
      if (i === 0) div.appendChild(el("b", "", line));
      tip.appendChild(div);
    });
    tip.hidden = false;
  });
  target.addEventListener("mousemove", (ev) => {
    const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = x + "px";
    tip.style.top = ev.clientY + 14 + "px";
  });
  target.addEventListener("mouseleave", () => { tip.hidden = true; });
}
function empty(host, text) {
  host.replaceChildren(el("div", "empty", text));
}

// stacked bars: opts = {labels, tips, stacks: [{name, color, values}], labelEvery}
export function barChart(host, opts) {
  const n = opts.labels.length;
  const totals = opts.labels.map((_, i) => opts.stacks.reduce((a, st) => a + (st.values[i] || 0), 0));
  const scale = niceScale(Math.max(0, ...totals), true);
  const f = frame(host, scale, fmtCompact, opts.labels, opts.labelEvery);
  const gap = Math.max(1, f.bw * 0.22);
  for (let i = 0; i < n; i++) {
    let base = 0;
    const x = f.m.l + i * f.bw + gap / 2, w = Math.max(1, f.bw - gap);
    for (const st of opts.stacks) {
      const v = st.values[i] || 0;
      if (v > 0) {
        const y0 = f.y(base), y1 = f.y(base + v);
        f.s.appendChild(svg("rect", { class: "bar", x, y: y1, width: w, height: Math.max(1, y0 - y1), rx: Math.min(2, w / 3), fill: st.color, "data-series": st.name, "data-value": v }));
      }
      base += v;
    }
    const hit = svg("rect", { class: "hit", x: f.m.l + i * f.bw, y: f.m.t, width: f.bw, height: f.ih });
    hover(hit, () => opts.tips[i]);
    f.s.appendChild(hit);
  }
}

// lines with gaps: opts = {labels, tips, lines: [{name, color, values (null = no data)}]}
export function lineChart(host, opts) {
  const all = opts.lines.flatMap((ln) => ln.values.filter((v) => v !== null && v !== undefined));
  if (!all.length) return empty(host, "No successful requests in the last hour");
  const scale = niceScale(Math.max(...all), true);
  const f = frame(host, scale, (v) => (v >= 1000 ? v / 1000 + " s" : v ? v + " ms" : "0"), opts.labels, opts.labelEvery);
  const xc = (i) => f.m.l + f.bw * (i + 0.5);
  for (const ln of opts.lines) {
    let d = "", open = false;
    ln.values.forEach((v, i) => {
      if (v === null || v === undefined) { open = false; return; }
      d += (open ? "L" : "M") + xc(i).toFixed(1) + " " + f.y(v).toFixed(1);
      open = true;
    });
    f.s.appendChild(svg("path", { d, fill: "none", stroke: ln.color, "stroke-width": 2, "stroke-linejoin": "round", "stroke-linecap": "round" }));
    ln.values.forEach((v, i) => {
      if (v !== null && v !== undefined) f.s.appendChild(svg("circle", { cx: xc(i), cy: f.y(v), r: 2.5, fill: ln.color }));
    });
  }
  opts.labels.forEach((_, i) => {
    const hit = svg("rect", { class: "hit", x: f.m.l + i * f.bw, y: f.m.t, width: f.bw, height: f.ih });
    hover(hit, () => opts.tips[i]);
    f.s.appendChild(hit);
  });
}

// horizontal bars for the spend tables
export function hbars(host, rows, color) {
  host.replaceChildren();
  if (!rows || !rows.length) return empty(host, "No traffic in this period");
  const priced = rows.some((x) => x.cost_usd > 0);
  const value = (x) => (priced ? x.cost_usd : x.requests);
  const max = Math.max(...rows.map(value), 1e-12);
  for (const x of rows) {
    const line = el("div", "hbar");
    line.dataset.name = x.name;
    const name = el("div", "name", x.name);
    name.title = x.name;
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = (100 * value(x)) / max + "%";
    fill.style.background = color;
    track.appendChild(fill);
    const num = el("div", "num");
    num.appendChild(el("b", "", fmtUsd(x.cost_usd)));
    const errors = x.errors ? ` · ${fmtInt(x.errors)} err` : "";
    num.appendChild(el("small", "", `${fmtCompact(x.requests)} req · ${fmtCompact(x.tokens)} tok${errors}`));
    line.append(name, track, num);
    host.appendChild(line);
  }
}

export function legend(host, items) {
  host.replaceChildren();
  for (const [name, color, isLine] of items) {
    const span = el("span");
    const swatch = el("i", isLine ? "line" : "");
    swatch.style.background = color;
    span.append(swatch, document.createTextNode(name));
    host.appendChild(span);
  }
}
