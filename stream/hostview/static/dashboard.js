// The host's live dashboard: polls the room's metrics once a second and redraws.
// Plain JS and SVG, no build step and no library.
"use strict";

const room = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const url = `/v1/rooms/${encodeURIComponent(room)}/metrics`;
window.__lcLoad = Date.now() + Math.random();  // tests check the page was not reloaded
const $ = (id) => document.getElementById(id);
const fmt = (n, d = 0) => n == null ? "–" : Number(n).toLocaleString("zh-CN",
  { minimumFractionDigits: d, maximumFractionDigits: d });
const pct = (x) => x == null ? "–" : `${(x * 100).toFixed(1)}%`;
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const hhmm = (t) => new Date(t).toTimeString().slice(0, 5);

function duration(s) {
  if (s == null) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`
    : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

function chart(svg, points, { bars = false, color = "#58a6ff" } = {}) {
  const W = 400, H = 140, L = 36, B = 16, T = 6;
  if (!points.length) { svg.innerHTML = ""; return; }
  const max = Math.max(1, ...points.map((p) => p.v));
  const x = (i) => L + (points.length === 1 ? (W - L) / 2 : i * (W - L - 4) / (points.length - 1));
  const y = (v) => T + (H - B - T) * (1 - v / max);
  let body = "";
  for (const f of [0, 0.5, 1]) {
    body += `<line x1="${L}" x2="${W}" y1="${y(max * f)}" y2="${y(max * f)}" stroke="#263140"/>` +
      `<text x="${L - 4}" y="${y(max * f) + 3}" text-anchor="end">${fmt(max * f, max < 10 ? 1 : 0)}</text>`;
  }
  if (bars) {
    const w = Math.max(1, (W - L) / points.length - 1);
    points.forEach((p, i) => {
      body += `<rect x="${L + i * (W - L) / points.length}" y="${y(p.v)}" width="${w}" height="${H - B - y(p.v)}" fill="${color}"/>`;
    });
  } else {
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    body += `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"/>`;
  }
  body += `<text x="${L}" y="${H - 2}">${hhmm(points[0].t)}</text>` +
    `<text x="${W}" y="${H - 2}" text-anchor="end">${hhmm(points[points.length - 1].t)}</text>`;
  svg.innerHTML = body;
}

function row(name, bar, note) {
  return `<div class="row"><span class="name" title="${esc(name)}">${esc(name)}</span>` +
    `<div class="bar">${bar}</div><span>${note}</span></div>`;
}
const seg = (cls, part, whole) => `<span class="${cls}" style="width:${whole ? 100 * part / whole : 0}%"></span>`;

function render(m) {
  const t = m.totals;
  $("room").textContent = m.room_id;
  const status = $("status");
  status.textContent = m.ended_at ? "已结束 ended" : m.started_at ? "直播中 LIVE" : "waiting";
  status.className = `badge ${m.ended_at ? "ended" : m.started_at ? "live" : ""}`;
  $("clock").textContent = new Date(m.now_ms).toLocaleTimeString("zh-CN");
  const set = (id, v) => { $(id).textContent = v; };
  set("kpi-online", fmt(t.online)); set("kpi-peak", fmt(t.peak));
  set("kpi-viewers", fmt(t.viewers)); set("kpi-joins", fmt(t.joins));
  set("kpi-watch", duration(t.avg_watch_s));
  set("kpi-gmv", `¥${fmt(t.gmv, 2)}`); set("kpi-gpm", `¥${fmt(t.gpm, 1)}`);
  set("kpi-orders", fmt(t.orders)); set("kpi-paid", fmt(t.paid));
  set("kpi-buyers", fmt(t.buyers)); set("kpi-conversion", pct(t.conversion_rate));
  const r = m.per_minute;
  set("kpi-orders-min", fmt(r.orders, 1)); set("kpi-clicks-min", fmt(r.cart_clicks, 1));
  set("kpi-joins-min", fmt(r.joins, 1)); set("kpi-likes-min", fmt(r.likes, 0));
  set("kpi-comments-min", fmt(r.comments, 1));
  set("kpi-fans", fmt(t.fan_joins));
  set("kpi-layers", `${fmt(t.new_viewers)} / ${fmt(t.returning_viewers)}`);

  chart($("chart-online"), m.series.map((p) => ({ t: p.t, v: p.online })));
  chart($("chart-orders"), m.series.map((p) => ({ t: p.t, v: p.orders })), { bars: true, color: "#ff5a5f" });
  let sum = 0;
  chart($("chart-gmv"), m.series.map((p) => ({ t: p.t, v: (sum += p.gmv) })), { color: "#3fb950" });

  $("skus").innerHTML = m.skus.map((s) => row(s.name,
    seg("sold", s.sold, s.loaded) + seg("reserved", s.reserved, s.loaded),
    `${pct(s.sell_through)} sold · ${fmt(s.available)} left` +
    (s.sell_out_s != null && s.available > 0 ? ` · ~${duration(s.sell_out_s)}` : ""))).join("") || "<p class=muted>no stock loaded</p>";

  const top = Math.max(1, ...m.segments.map((s) => s.cart_clicks));
  $("segments").innerHTML = m.segments.map((s) => row(s.segment,
    seg("fill", s.cart_clicks, top),
    `${fmt(s.cart_clicks)} clicks → ${fmt(s.orders)} orders (${pct(s.click_to_order)}) · ¥${fmt(s.gmv, 0)}`)).join("") || "<p class=muted>no segment yet</p>";

  $("nudges").innerHTML = m.nudges.map(nudgeRule).join("") ||
    "<p class=muted>no nudge decided yet</p>";
  $("nudges-total").textContent = `fired ${fmt(t.nudges)} · suppressed ${fmt(t.nudges_suppressed)} (holdout not counted)`;

  const sources = Object.entries(m.sources).sort((a, b) => b[1] - a[1]);
  const most = Math.max(1, ...sources.map(([, n]) => n));
  $("sources").innerHTML = sources.map(([name, n]) => row(name, seg("fill", n, most),
    `${fmt(n)} (${pct(t.viewers ? n / t.viewers : null)})`)).join("") || "<p class=muted>no viewers yet</p>";

  $("alerts").innerHTML = m.alerts.map((a) => `<div class="alert ${a.kind}">⚠ ${esc(a.message)}</div>`).join("");
}

// The room's data needs a host or monitor token. It comes from the URL fragment
// (`#token=…`: browsers never send the fragment, so it stays out of server logs) or
// from the sign-in form, and is kept in sessionStorage (this tab only, gone on close).
const TOKEN_KEY = "livecommerce.token";
const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
if (fragment) {
  sessionStorage.setItem(TOKEN_KEY, fragment);
  history.replaceState(null, "", location.pathname + location.search);  // not left in the bar
}
let polling = false;

function signIn(message) {
  polling = false;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("status").textContent = "signed out";
  $("status").className = "badge";
}

$("signin").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("signin-token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin").hidden = true;
  start();
});

// Suppression reasons, in the order of stream/core/reasons.py (others after, by count).
const REASON_ORDER = ["holdout", "cap", "cooldown", "hourly_cap", "exit:ordered", "exit:left",
  "exit:ended", "exit:low_stock", "sold_out", "quiet_hours", "lost_priority", "expired", "other"];
const pts = (x) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)}`;
const VERDICT = { "better": "✔ better", "worse": "✘ worse", "not yet clear": "… not yet clear" };

function nudgeRule(n) {
  const most = Math.max(1, n.treatment_viewers, n.holdout_viewers);
  const ci = n.uplift_ci ? ` [${pts(n.uplift_ci[0])}, ${pts(n.uplift_ci[1])}] pts (95%)` : "";
  const uplift = n.uplift == null ? "– (needs viewers in both arms)" : `${pts(n.uplift)} pts${ci}`;
  const reasons = Object.entries(n.suppressed || {}).sort((a, b) =>
    ((REASON_ORDER.indexOf(a[0]) + 99) % 99) - ((REASON_ORDER.indexOf(b[0]) + 99) % 99) || b[1] - a[1]);
  const chips = reasons.map(([r, c]) =>
    `<span class="chip reason-${esc(r.replace(":", "-"))}" data-reason="${esc(r)}">${esc(r)} <b>${fmt(c)}</b></span>`).join("");
  return `<div class="rule" data-rule="${esc(n.rule_id)}"><div class="rule-head"><b>${esc(n.rule_id)}</b>` +
    `<span class="verdict ${n.verdict.replace(/ /g, "-")}">${VERDICT[n.verdict] || esc(n.verdict)}</span></div>` +
    row("shown", seg("fill", n.treatment_viewers, most),
      `${fmt(n.treatment_viewers)} → ${fmt(n.treatment_converted)} paid (${pct(n.treatment_rate)})`) +
    row("holdout", seg("hold", n.holdout_viewers, most),
      `${fmt(n.holdout_viewers)} → ${fmt(n.holdout_converted)} paid (${pct(n.holdout_rate)})`) +
    `<div class="uplift">uplift <span class="uplift-value">${uplift}</span></div>` +
    `<div class="chips">${chips || '<span class="muted">nothing suppressed</span>'}</div></div>`;
}

async function tick() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) { signIn(""); return; }
  try {
    const resp = await fetch(url, { cache: "no-store", headers: { Authorization: `Bearer ${token}` } });
    if (resp.status === 401 || resp.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      const body = await resp.json().catch(() => ({}));
      signIn(body.error || `refused (${resp.status})`);
      return;
    }
    if (resp.ok) {
      render(await resp.json());
      document.body.dataset.updates = Number(document.body.dataset.updates) + 1;
    }
  } catch (err) {
    $("status").textContent = "offline";
  }
  if (polling) setTimeout(tick, 1000);
}

function start() {
  if (polling) return;
  polling = true;
  tick();
}

if (sessionStorage.getItem(TOKEN_KEY)) start(); else signIn("");
