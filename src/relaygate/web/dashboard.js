// relaygate dashboard: fetches /status.json (and, with the admin secret, /admin/dashboard.json)
// every few seconds and draws everything with small SVG charts of its own. Text from the server
// only ever goes through textContent, never through HTML parsing.
import {
  barChart,
  dayLabel,
  el,
  fmtCompact,
  fmtDuration,
  fmtInt,
  fmtMs,
  fmtUsd,
  hbars,
  hhmm,
  hhmmss,
  legend,
  lineChart,
  r,
  row,
} from "/static/charts.js";

const asked = Number(new URLSearchParams(location.search).get("refresh")); // seconds
const REFRESH_MS = asked >= 1 ? asked * 1000 : 5000;
const SECRET = "relaygate.adminSecret";
const STATES = ["ready", "cooling", "exhausted", "invalid"];
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const $ = (id) => document.getElementById(id);

let data = null; // the latest /status.json
let adminData = null; // the latest /admin/dashboard.json
let fetchedAt = 0; // performance.now() when `data` arrived
let period = "today";
let timer = 0;

const serverNow = () => (data ? data.timestamp + (performance.now() - fetchedAt) / 1000 : Date.now() / 1000);

// --- sections ------------------------------------------------------------------------------
function kpi(id, value, sub, level) {
  const box = $(id);
  box.querySelector(".value").textContent = value;
  box.querySelector(".sub").textContent = sub || "\u00a0";
  box.classList.toggle("bad", level === "bad");
  box.classList.toggle("warn", level === "warn");
}
function renderKpis() {
  const t = data.today || { requests: 0, errors: 0, cost_usd: 0, tokens: 0 };
  const days = data.days || [];
  const sum = (k) => days.reduce((a, d) => a + d[k], 0);
  const hour = (data.minutes || []).reduce((a, m) => a + m.requests, 0);
  kpi("kpi-requests", fmtInt(t.requests), `${fmtInt(hour)} in the last hour`);
  const rate = t.requests ? (100 * t.errors) / t.requests : 0;
  kpi("kpi-errors", fmtInt(t.errors), t.requests ? `${rate.toFixed(1)}% of requests` : "",
    rate >= 5 ? "bad" : t.errors ? "warn" : "");
  kpi("kpi-spend", fmtUsd(t.cost_usd), `${fmtUsd(sum("cost_usd"))} over 14 days`);
  kpi("kpi-tokens", fmtCompact(t.tokens), `${fmtCompact(sum("tokens"))} over 14 days`);
  const lat = data.latency || {};
  kpi("kpi-latency", lat.count ? fmtMs(lat.p50_ms) : "–",
    lat.count ? `p95 ${fmtMs(lat.p95_ms)} · avg ${fmtMs(lat.avg_ms)}` : "no requests in the last hour");
  const keys = data.providers.flatMap((p) => p.keys);
  const ready = keys.filter((k) => k.state === "ready").length;
  const others = STATES.slice(1).map((s) => [s, keys.filter((k) => k.state === s).length]).filter(([, n]) => n);
  kpi("kpi-keys", `${ready} / ${keys.length}`, others.map(([s, n]) => `${n} ${s}`).join(" · ") || "all ready",
    ready === 0 ? "bad" : ready < keys.length ? "warn" : "");
}

function renderTraffic() {
  const ok = css("--ok"), err = css("--err");
  legend($("legend-minutes"), [["ok", ok], ["errors", err]]);
  legend($("legend-days"), [["ok", ok], ["errors", err]]);
  const mins = data.minutes || [];
  barChart($("chart-minutes"), {
    labels: mins.map((m) => (new Date(m.t * 1000).getMinutes() % 10 === 0 ? hhmm(m.t) : "")),
    labelEvery: 1,
    stacks: [
      { name: "ok", color: ok, values: mins.map((m) => m.requests - m.errors) },
      { name: "errors", color: err, values: mins.map((m) => m.errors) },
    ],
    tips: mins.map((m) => [hhmm(m.t), `${fmtInt(m.requests)} requests`, `${fmtInt(m.errors)} errors`, `${fmtUsd(m.cost_usd)} · ${fmtCompact(m.tokens)} tokens`]),
  });
  const days = data.days || [];
  barChart($("chart-days"), {
    labels: days.map((d) => dayLabel(d.day)),
    labelEvery: $("chart-days").clientWidth < 520 ? 3 : 2,
    stacks: [
      { name: "ok", color: ok, values: days.map((d) => d.requests - d.errors) },
      { name: "errors", color: err, values: days.map((d) => d.errors) },
    ],
    tips: days.map((d) => [d.day + " (UTC)", `${fmtInt(d.requests)} requests`, `${fmtInt(d.errors)} errors`, `${fmtUsd(d.cost_usd)} · ${fmtCompact(d.tokens)} tokens`]),
  });
}

function renderLatency() {
  const lat = data.latency || { minutes: [], providers: [] };
  const avg = css("--avg"), p95 = css("--p95");
  legend($("legend-latency"), [["avg", avg, true], ["p95", p95, true]]);
  const mins = lat.minutes || [];
  lineChart($("chart-latency"), {
    labels: mins.map((m) => (new Date(m.t * 1000).getMinutes() % 10 === 0 ? hhmm(m.t) : "")),
    labelEvery: 1,
    lines: [
      { name: "avg", color: avg, values: mins.map((m) => m.avg_ms) },
      { name: "p95", color: p95, values: mins.map((m) => m.p95_ms) },
    ],
    tips: mins.map((m) => [hhmm(m.t), `avg ${fmtMs(m.avg_ms)}`, `p95 ${fmtMs(m.p95_ms)}`]),
  });
  const table = $("latency-providers");
  table.replaceChildren();
  if (!(lat.providers || []).length) return;
  table.appendChild(row(["Provider", r("Requests"), r("avg"), r("p50"), r("p95"), r("p99")], true));
  for (const p of lat.providers) {
    table.appendChild(row([p.name, r(fmtInt(p.count)), r(fmtMs(p.avg_ms)), r(fmtMs(p.p50_ms)), r(fmtMs(p.p95_ms)), r(fmtMs(p.p99_ms))]));
  }
  if (lat.ttft_p50_ms !== null && lat.ttft_p50_ms !== undefined) {
    table.appendChild(el("caption", "", `Time to first byte p50: ${fmtMs(lat.ttft_p50_ms)}` + (lat.sampled ? " · sampled from the latest requests" : "")));
  }
}

function renderErrors() {
  const table = $("errors-table");
  table.replaceChildren();
  const rows = data.errors || [];
  if (!rows.length) {
    table.appendChild(row([{ text: "No failed requests in the last hour.", cls: "muted" }]));
  } else {
    table.appendChild(row(["Status", "Code", "Provider", r("Requests")], true));
    for (const e of rows) {
      table.appendChild(row([{ node: el("span", "pill " + (e.status >= 500 ? "invalid" : e.status >= 400 ? "exhausted" : "cooling"), e.status) }, { node: el("code", "", e.error_code || "–") }, e.provider || "–", r(fmtInt(e.count))]));
    }
  }
  const chips = $("since-start");
  chips.replaceChildren();
  const since = data.since_start || { refusals: {}, attempts: [] };
  const chip = (label, n, bad) => {
    const c = el("span", "chip" + (bad ? " bad" : ""), label);
    c.appendChild(el("b", "", fmtInt(n)));
    chips.appendChild(c);
  };
  for (const a of since.attempts) chip(`${a.provider} attempts ${a.outcome}`, a.count, a.outcome !== "ok");
  for (const [reason, n] of Object.entries(since.refusals)) chip(`refused: ${reason}`, n, true);
  if (since.ledger_dropped) chip("ledger rows dropped", since.ledger_dropped, true);
  const cache = since.cache;
  if (cache) {
    chip("cache hits", cache.hits, false);
    chip("cache misses", cache.misses, false);
    const ratio = el("span", "chip", "cache hit ratio");
    ratio.appendChild(el("b", "", cache.hit_ratio === null ? "–" : `${(cache.hit_ratio * 100).toFixed(1)}%`));
    chips.appendChild(ratio);
    const saved = el("span", "chip", "saved by the cache");
    saved.appendChild(el("b", "", `$${Number(cache.saved_usd).toFixed(4)}`));
    chips.appendChild(saved);
  }
  if (!chips.childElementCount) chips.appendChild(el("span", "muted small", "Nothing yet."));
}

function renderSpend() {
  document.querySelectorAll(".seg button").forEach((b) => b.classList.toggle("on", b.dataset.period === period));
  const pick = (s) => (s ? s[period] : []);
  hbars($("spend-model"), pick(data.spend_by_model), css("--accent"));
  hbars($("spend-provider"), pick(data.spend_by_provider), "#22b8cf");
  if (adminData) hbars($("spend-client"), pick(adminData.spend_by_client), css("--avg"));
}

function backIn(k) {
  if (!k.until) return "";
  const left = k.until - serverNow();
  return left > 0 ? fmtDuration(left) : "now";
}
function renderProviders() {
  const root = $("providers");
  root.replaceChildren();
  const all = data.providers.flatMap((p) => p.keys);
  $("keys-summary").textContent = `${data.providers.length} provider${data.providers.length === 1 ? "" : "s"} · ${all.length} key${all.length === 1 ? "" : "s"} · usage is today's (UTC)`;
  for (const p of data.providers) {
    const box = el("div", "provider");
    box.dataset.provider = p.name;
    const head = el("div", "provider-head");
    head.appendChild(el("h3", "", p.name));
    const ready = p.keys.filter((k) => k.state === "ready").length;
    const right = el("div");
    if (p.paused_for_s) {
      const pill = el("span", "pill paused countdown", "");
      pill.dataset.until = String(serverNow() + p.paused_for_s);
      pill.dataset.prefix = "paused · ";
      right.appendChild(pill);
      right.appendChild(document.createTextNode(" "));
    }
    right.appendChild(el("span", "muted small", `${ready} of ${p.keys.length} ready`));
    head.appendChild(right);
    box.appendChild(head);
    const bar = el("div", "statebar");
    for (const s of STATES) {
      const n = p.keys.filter((k) => k.state === s).length;
      if (n) { const seg = el("span", "seg-" + s); seg.style.width = (100 * n) / p.keys.length + "%"; bar.appendChild(seg); }
    }
    box.appendChild(bar);
    const table = el("table", "table compact");
    const buckets = p.keys.some((k) => k.bucket);
    const heads = ["Key", "State", "Back in", r("Requests"), r("Tokens"), "Reason"];
    if (buckets) heads.splice(1, 0, "Bucket");
    table.appendChild(row(heads, true));
    for (const k of p.keys) {
      const cells = [
        { node: el("code", "", k.key_id) },
        { node: el("span", "pill " + k.state, k.state) },
        { node: el("span", "countdown", backIn(k)) },
        r(fmtInt(k.requests_today)),
        r(fmtCompact(k.tokens_today)),
        { node: el("div", "reason", k.reason || "") },
      ];
      if (buckets) cells.splice(1, 0, { node: el("span", "bucket muted", k.bucket || "") });
      const tr = row(cells);
      tr.dataset.keyId = k.key_id;
      tr.dataset.state = k.state;
      if (k.until) tr.querySelector(".countdown").dataset.until = String(k.until);
      tr.querySelector(".reason").title = k.reason || "";
      table.appendChild(tr);
    }
    box.appendChild(table);
    root.appendChild(box);
  }
}
function tick() {
  document.querySelectorAll(".countdown[data-until]").forEach((node) => {
    const left = Number(node.dataset.until) - serverNow();
    node.textContent = (node.dataset.prefix || "") + (left > 0 ? fmtDuration(left) : "now");
  });
}

function renderAdmin() {
  const on = Boolean(adminData);
  $("admin-section").hidden = !on;
  const toggle = $("admin-toggle");
  toggle.textContent = on ? "Admin ✓ · lock" : "Admin";
  toggle.classList.toggle("unlocked", on);
  if (!on) return;
  const table = $("failures-table");
  table.replaceChildren();
  const rows = adminData.failures || [];
  if (!rows.length) {
    table.appendChild(row([{ text: "No failed calls.", cls: "muted" }]));
  } else {
    table.appendChild(row(["Time", "Client", "Provider / model", "Status", "Code"], true));
    for (const f of rows) {
      table.appendChild(row([hhmmss(f.ts), f.client || "–", [f.provider, f.model].filter(Boolean).join(" / ") || "–", { node: el("span", "pill " + (f.status >= 500 ? "invalid" : "exhausted"), f.status) }, { node: el("code", "", f.error_code || "–") }]));
    }
  }
}

function render() {
  if (!data) return;
  $("admin-box").hidden = !data.admin;
  renderKpis();
  renderTraffic();
  renderLatency();
  renderErrors();
  renderSpend();
  renderProviders();
  renderAdmin();
  tick();
}

// --- data ----------------------------------------------------------------------------------
function status(ok, text) {
  $("live").className = "live " + (ok ? "ok" : "fail");
  $("updated").textContent = text;
}
async function fetchAdmin() {
  const secret = sessionStorage.getItem(SECRET);
  if (!secret || !data || !data.admin) { adminData = null; return; }
  const res = await fetch("/admin/dashboard.json", { cache: "no-store", headers: { "admin-secret": secret } });
  if (res.status === 401 || res.status === 403 || res.status === 404) {
    sessionStorage.removeItem(SECRET);
    adminData = null;
    showAdminError("That secret was refused.");
    return;
  }
  if (!res.ok) throw new Error("admin data: HTTP " + res.status);
  adminData = await res.json();
}
async function refresh() {
  clearTimeout(timer);
  try {
    const res = await fetch("/status.json", { cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    data = await res.json();
    fetchedAt = performance.now();
    await fetchAdmin();
    render();
    status(true, "live · updated " + hhmmss(Date.now() / 1000) + (data.database_error ? " · database unavailable" : ""));
  } catch (e) {
    status(false, "update failed (" + (e && e.message ? e.message : e) + ")");
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function showAdminError(text) {
  const box = $("admin-error");
  box.textContent = text;
  box.hidden = !text;
}
function setupAdmin() {
  $("admin-toggle").addEventListener("click", () => {
    if (adminData || sessionStorage.getItem(SECRET)) {
      sessionStorage.removeItem(SECRET);
      adminData = null;
      render();
      return;
    }
    const form = $("admin-form");
    form.hidden = !form.hidden;
    if (!form.hidden) $("admin-secret").focus();
  });
  $("admin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("admin-secret");
    if (!input.value) return;
    sessionStorage.setItem(SECRET, input.value);
    input.value = "";
    $("admin-form").hidden = true;
    showAdminError("");
    refresh();
  });
}

function start() {
  $("refresh-every").textContent = String(REFRESH_MS / 1000);
  setupAdmin();
  document.querySelectorAll(".seg button").forEach((b) => b.addEventListener("click", () => {
    period = b.dataset.period;
    renderSpend();
  }));
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 150);
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  setInterval(tick, 1000);
  refresh();
}
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
