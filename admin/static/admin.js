// Wuma admin page: vanilla JavaScript, no build step, no external resources.
// APPSEC: everything from the API is written with textContent / setAttribute, never
// innerHTML; the page is served with a CSP that allows only this script and stylesheet.
"use strict";

const TOKEN_KEY = "wuma-admin-token";
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f6feb", "#2da44e", "#bf8700", "#cf222e", "#8250df", "#1b7c83", "#6e7781"];
const WRITERS = new Set(["operator", "admin"]);
let me = null;

// -- small DOM helpers -------------------------------------------------------------------
function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, String(v));
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function svgText(parent, x, y, text, anchor) {
  const t = svg("text", {x, y, "text-anchor": anchor || "start"}, parent);
  t.textContent = String(text);
  return t;
}

function tip(node, text) { svg("title", {}, node).textContent = String(text); }

const TIME = new Intl.DateTimeFormat("sv-SE", {timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit",
  day: "2-digit", hour: "2-digit", minute: "2-digit"});
function when(ts) { return ts == null ? "" : TIME.format(new Date(ts * 1000)); }
function money(amount, unit) {
  if (amount == null) return "";
  return unit === "points" ? `${amount} points` : `¥${(amount / 100).toFixed(2)}`;
}

function setStatus(text, isError) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", !!isError);
}

function rows(tbody, items, render, emptyText) {
  tbody.replaceChildren();
  if (!items.length) {
    const cols = tbody.closest("table").querySelectorAll("thead th").length;
    tbody.append(el("tr", {}, el("td", {colSpan: cols, class: "empty"}, emptyText || "none")));
    return;
  }
  for (const item of items) tbody.append(render(item));
}

function td(text, cls) { return el("td", cls ? {class: cls} : {}, text); }

// -- the API -----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {"Authorization": "Bearer " + sessionStorage.getItem(TOKEN_KEY)};
  const init = {method, headers};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch("/admin/api" + path, init);
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (r.status === 401) {
    logout("The token was refused; log in again.");
    throw new ApiError(401, "unauthorized");
  }
  if (!r.ok) throw new ApiError(r.status, (doc && doc.message) || r.statusText);
  return doc;
}

// -- log in / out ------------------------------------------------------------------------
async function login(event) {
  event.preventDefault();
  const token = $("#token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token").value = "";
  await start();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#refresh").hidden = true;
  $("#whoami").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function start() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return logout("");
  try {
    me = await api("GET", "/me");
  } catch (e) {
    if (e.status !== 401) logout(e.message);
    return;
  }
  $("#login").hidden = true;
  $("#login-error").textContent = "";
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#refresh").hidden = false;
  $("#whoami").textContent = `${me.name} (${me.role})`;
  for (const w of document.querySelectorAll(".writer")) w.hidden = !WRITERS.has(me.role);
  await refresh();
}

async function refresh() {
  setStatus("Loading…");
  const parts = [loadCampaigns, loadPools, loadStats, loadBatches, loadAlerts, loadBans];
  const results = await Promise.allSettled(parts.map(f => f()));
  const failed = results.filter(r => r.status === "rejected");
  if (failed.length) setStatus(failed.map(r => r.reason.message).join("; "), true);
  else setStatus(`Up to date at ${when(Date.now() / 1000)}`);
  document.body.dataset.loaded = String(Date.now());
}

// -- campaigns ---------------------------------------------------------------------------
function describeTarget(t) {
  if (t.batches) return "batches " + t.batches.join(", ");
  if (t.skus) return "SKUs " + t.skus.join(", ");
  if (t.serials) return t.serials.map(([b, f, l]) => `batch ${b} #${f}-${l}`).join(", ");
  return JSON.stringify(t);
}

function describeReward(r, unit) {
  let s = r.kind === "fixed" ? money(r.amount, unit)
    : r.kind === "all_win" ? `100% win, min ${money(r.min_amount, unit)}`
    : `draw: ${r.tiers.filter(t => t.amount > 0).map(t => `${money(t.amount, unit)} @ ${(t.odds * 100).toFixed(2)}%`).join(", ")}`;
  if (r.payout === "voucher") s += ` voucher (${r.valid_days} days)`;
  return s;
}

const NEXT = {active: ["pause", "close"], paused: ["resume", "close"], closed: []};

async function loadCampaigns() {
  const campaigns = await api("GET", "/campaigns");
  rows($("#campaigns tbody"), campaigns, c => {
    const actions = el("td");
    if (me && WRITERS.has(me.role)) {
      for (const action of NEXT[c.status] || []) {
        actions.append(el("button", {type: "button", "data-action": action, "data-id": c.id,
          onclick: () => campaignAction(c.id, action)}, action[0].toUpperCase() + action.slice(1)), " ");
      }
    }
    const rebates = (c.rebates || []).map(r => ` + ${r.to} ${money(r.amount, "cash")}`).join("");
    return el("tr", {"data-campaign-id": c.id},
      td(c.id, "num"), td(c.name), el("td", {}, el("span", {class: `badge ${c.status}`}, c.status)),
      td(`${c.trigger.actor_role} scans ${c.trigger.code_role}`), td(describeTarget(c.target)),
      td(c.pool), td(describeReward(c.reward, c.reward.payout === "points" ? "points" : "cash") + rebates),
      td(`${when(c.window.start)} → ${when(c.window.end)}`), actions);
  }, "no campaigns yet");
}

async function campaignAction(id, action) {
  try {
    await api("POST", `/campaigns/${encodeURIComponent(id)}/${action}`);
    await refresh();
    setStatus(`Campaign ${id}: ${action} done`);
  } catch (e) {
    if (e.status !== 401) setStatus(`Campaign ${id}: ${e.message}`, true);
  }
}

function chinaTime(value) { return value ? value + ":00+08:00" : undefined; }

function ruleFromForm() {
  const text = $("#c-json").value.trim();
  if (text) return JSON.parse(text);
  const batches = $("#c-batches").value.split(/[\s,]+/).filter(Boolean).map(Number);
  return {
    name: $("#c-name").value,
    pool: $("#c-pool").value,
    trigger: {code_role: $("#c-code-role").value, actor_role: $("#c-actor-role").value},
    target: {batches},
    window: {start: chinaTime($("#c-start").value), end: chinaTime($("#c-end").value)},
    reward: {kind: "fixed", amount: Number($("#c-amount").value)},
  };
}

async function createCampaign(event) {
  event.preventDefault();
  let rule;
  try {
    rule = ruleFromForm();
  } catch (e) {
    setStatus(`The rule is not valid JSON: ${e.message}`, true);
    return;
  }
  try {
    const c = await api("POST", "/campaigns", rule);
    $("#campaign-form").reset();
    await refresh();
    setStatus(`Campaign ${c.id} (${c.name}) created`);
  } catch (e) {
    if (e.status !== 401) setStatus(`Not created: ${e.message}`, true);
  }
}

// -- pools -------------------------------------------------------------------------------
function dayRange(first, last) {
  // Every calendar day from first to last (YYYY-MM-DD), so days without spend show too.
  const out = [];
  for (let t = Date.parse(first + "T00:00:00Z"); out.length < 400; t += 86400000) {
    const day = new Date(t).toISOString().slice(0, 10);
    out.push(day);
    if (day >= last) break;
  }
  return out;
}

function burnDown(pool) {
  // Bars: spend per day (scaled to the busiest day); line: what is left after each day
  // (scaled to the pool's total, so it falls to the axis when the pool is spent).
  const spentDays = Object.keys(pool.by_day).sort();
  const W = 320, H = 120, L = 4, B = 18, T = 14;
  const box = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `burn-down of pool ${pool.id}`, class: "burndown"});
  svg("line", {x1: L, y1: H - B, x2: W, y2: H - B, class: "axis"}, box);
  if (!spentDays.length) {
    svgText(box, W / 2, H / 2, "nothing spent yet", "middle");
    return box;
  }
  const today = TIME.format(new Date()).slice(0, 10);  // China time, like the pool's days
  const days = dayRange(spentDays[0], today > spentDays[spentDays.length - 1] ? today : spentDays[spentDays.length - 1]);
  const busiest = Math.max(...days.map(d => pool.by_day[d] || 0), 1);
  const barScale = v => (H - B - T) * v / busiest;
  const leftScale = v => (H - B - T) * v / Math.max(pool.total, 1);
  const step = (W - L) / days.length;
  let left = pool.total + days.reduce((a, d) => a + (pool.by_day[d] || 0), 0) - pool.spent;
  const points = [[L, H - B - leftScale(left)]];
  days.forEach((day, i) => {
    const spent = pool.by_day[day] || 0;
    if (spent > 0) {
      const h = Math.max(barScale(spent), 1);
      const bar = svg("rect", {x: L + i * step + step * 0.15, y: H - B - h, width: step * 0.7, height: h,
        fill: PALETTE[0], class: "bar"}, box);
      tip(bar, `${day}: ${money(spent, pool.unit)} spent`);
    }
    left -= spent;
    points.push([L + (i + 1) * step, H - B - leftScale(left)]);
  });
  const line = svg("polyline", {points: points.map(p => p.join(",")).join(" "), fill: "none",
    stroke: PALETTE[3], "stroke-width": 2, class: "left"}, box);
  tip(line, `left: ${money(pool.left, pool.unit)} of ${money(pool.total, pool.unit)}`);
  svgText(box, L, 10, `busiest day ${money(busiest, pool.unit)}`);
  svgText(box, L, H - 4, days[0]);
  if (days.length > 1) svgText(box, W, H - 4, days[days.length - 1], "end");
  return box;
}

async function loadPools() {
  const pools = await api("GET", "/pools");
  const box = $("#pools");
  box.replaceChildren();
  box.className = "pools";
  const select = $("#c-pool");
  select.replaceChildren(...pools.map(p => el("option", {value: p.id}, `${p.id} (${p.unit})`)));
  if (!pools.length) {
    box.append(el("p", {class: "empty"}, "no pools yet"));
    return;
  }
  for (const p of pools) {
    box.append(el("div", {class: "pool", "data-pool-id": p.id},
      el("h3", {}, p.name === p.id ? p.id : `${p.name} (${p.id})`),
      el("div", {class: "figures"},
        `${money(p.spent, p.unit)} of ${money(p.total, p.unit)} spent (${(p.use_rate * 100).toFixed(1)}%), ` +
        `${money(p.left, p.unit)} left; today ${money(p.spent_today, p.unit)}` +
        (p.daily ? ` of ${money(p.daily, p.unit)} a day` : "")),
      burnDown(p),
      el("div", {class: "legend"},
        el("span", {}, swatch(PALETTE[0]), "spent per day"), el("span", {}, swatch(PALETTE[3]), "left"))));
  }
}

function swatch(color) {
  const s = el("span", {class: "swatch"});
  s.style.background = color;  // CSSOM, allowed by the CSP (no inline style attribute)
  return s;
}

// -- statistics --------------------------------------------------------------------------
function barChart(entries, format) {
  // Horizontal bars, largest first, at most 12.
  entries = entries.sort((a, b) => b[1] - a[1]).slice(0, 12);
  const W = 360, ROW = 18, LABEL = 130;
  const H = Math.max(entries.length, 1) * ROW + 4;
  const box = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"});
  const max = Math.max(...entries.map(e => e[1]), 0) || 1;
  entries.forEach(([label, value], i) => {
    const y = i * ROW + 2;
    svgText(box, LABEL - 6, y + 12, String(label).slice(0, 20), "end");
    const w = Math.max((W - LABEL - 60) * value / max, value > 0 ? 1 : 0);
    const bar = svg("rect", {x: LABEL, y: y + 2, width: w, height: ROW - 6, fill: PALETTE[0], class: "bar"}, box);
    tip(bar, `${label}: ${format(value)}`);
    svgText(box, LABEL + w + 4, y + 12, format(value));
  });
  if (!entries.length) svgText(box, W / 2, 14, "no data", "middle");
  return box;
}

function stackedByDay(byDay) {
  // Columns per day, stacked by series (e.g. actor role).
  const days = Object.keys(byDay).sort();
  const series = [...new Set(days.flatMap(d => Object.keys(byDay[d])))].sort();
  const W = 560, H = 160, B = 18, T = 8, L = 4;
  const box = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"});
  svg("line", {x1: L, y1: H - B, x2: W, y2: H - B, class: "axis"}, box);
  const totals = days.map(d => Object.values(byDay[d]).reduce((a, b) => a + b, 0));
  const max = Math.max(...totals, 0) || 1;
  const step = (W - L) / Math.max(days.length, 1);
  days.forEach((day, i) => {
    let y = H - B;
    series.forEach((s, j) => {
      const v = byDay[day][s] || 0;
      if (!v) return;
      const h = Math.max((H - B - T) * v / max, 1);
      y -= h;
      const bar = svg("rect", {x: L + i * step + step * 0.1, y, width: step * 0.8, height: h,
        fill: PALETTE[j % PALETTE.length], class: "bar"}, box);
      tip(bar, `${day} ${s}: ${v}`);
    });
  });
  if (days.length) {
    svgText(box, L, H - 4, days[0]);
    if (days.length > 1) svgText(box, W, H - 4, days[days.length - 1], "end");
  } else {
    svgText(box, W / 2, H / 2, "no scans yet", "middle");
  }
  const legend = el("div", {class: "legend"},
    ...series.map((s, j) => el("span", {}, swatch(PALETTE[j % PALETTE.length]), s)));
  return el("div", {}, box, legend);
}

function table(items) {
  const cols = [...new Set(items.flatMap(i => (i && typeof i === "object") ? Object.keys(i) : ["value"]))];
  const t = el("table", {}, el("thead", {}, el("tr", {}, ...cols.map(c => el("th", {}, c.replace(/_/g, " "))))));
  const body = el("tbody");
  for (const item of items.slice(0, 20)) {
    const o = (item && typeof item === "object") ? item : {value: item};
    body.append(el("tr", {}, ...cols.map(c => {
      const v = o[c];
      return td(v !== null && typeof v === "object" ? JSON.stringify(v) : v, typeof v === "number" ? "num" : "");
    })));
  }
  t.append(body);
  return t;
}

const percent = v => `${(v * 100).toFixed(1)}%`;

function chart(key, title, node) {
  return el("div", {class: "chart", "data-stat": key}, el("h3", {}, title), node);
}

function emptyOr(entries, render) {
  return entries.length ? render(entries) : el("p", {class: "empty"}, "nothing yet");
}

async function loadStats() {
  // The report of admin/stats.py (GET /admin/api/stats): every part is optional here.
  const s = await api("GET", "/stats?days=30");
  const box = $("#stats");
  box.replaceChildren();
  box.className = "charts";
  const scans = s.scans || {};
  const byDay = {};
  for (const [day, d] of Object.entries(scans.by_day || {})) byDay[day] = d.actor_role || {};
  box.append(chart("scans_by_day", `Scans per day by role (${scans.total ?? 0} in ${Object.keys(byDay).length} days)`,
    stackedByDay(byDay)));
  const dims = [["verdict", "Scans by verdict"], ["province", "Scans by province"], ["city", "Scans by city"],
    ["product", "Scans by product"], ["batch", "Scans by batch"]];
  for (const [dim, title] of dims) {
    const entries = Object.entries((scans.totals || {})[dim] || {});
    box.append(chart(`scans_by_${dim}`, title, emptyOr(entries, e => barChart(e, String))));
  }
  const rates = [];
  for (const [actor, roles] of Object.entries(s.scan_rate || {})) {
    for (const [role, r] of Object.entries(roles || {})) {
      if (r && r.rate != null && r.codes > 0) rates.push([`${actor} · ${role}`, r.rate]);
    }
  }
  box.append(chart("scan_rate", "Scan rate (codes scanned / units activated)", emptyOr(rates, e => barChart(e, percent))));
  const pools = Object.entries(s.pools || {}).map(([id, p]) => [id, p.use_rate || 0]);
  box.append(chart("pools", "Budget use per pool", emptyOr(pools, e => barChart(e, percent))));
  const campaigns = Object.entries(s.campaigns || {}).map(([id, c]) => {
    const l = c.ledger || {}, r = c.rebates || {};
    const unit = c.unit || "cash";
    const n = k => (l[k] || {}).count || 0, amt = k => money((l[k] || {}).amount || 0, unit);
    const rebate = to => [(r[to] || {}).count || 0, (r[to] || {}).amount || 0];
    const [sn, sa] = rebate("store"), [dn, da] = rebate("distributor");
    // NOTE: the ledger's grants include the rebates linked to them: the scanner's own
    // rewards are the grants less those (else the rebates were counted twice on the page),
    // and the locked rewards released (unlock)
    const amount = k => (l[k] || {}).amount || 0;
    const own = [n("grant") + n("unlock") - sn - dn, amount("grant") + amount("unlock") - sa - da];
    return {id, name: c.name, status: c.status, rewards: `${own[0]} · ${money(own[1], unit)}`,
      vouchers: `${n("voucher")} · ${amt("voucher")}`, redeemed: `${n("redeem")} · ${amt("redeem")}`,
      "store rebates": `${sn} · ${money(sa, unit)}`, "distributor rebates": `${dn} · ${money(da, unit)}`};
  });
  box.append(chart("campaigns", "Rewards per campaign (count · amount)", emptyOr(campaigns, table)));
  const diversion = Object.entries((s.diversion || {}).by_distributor || {}).map(([d, v]) => [d, v.window || 0]);
  box.append(chart("diversion", "Diversion alerts per distributor (window)", emptyOr(diversion, e => barChart(e, String))));
  const stores = (((s.top_stores || {}).by_scans) || []).map(t => ({store: t.store, scans: t.scans,
    earned: money(((t.cash || {}).earned) || 0, "cash")}));
  box.append(chart("top_stores", "Top stores by scans", emptyOr(stores, table)));
}

// -- batches, alerts, bans ---------------------------------------------------------------
async function loadBatches() {
  const batches = await api("GET", "/batches");
  const roles = [...new Set(batches.flatMap(b => b.roles))];
  const select = $("#c-code-role");
  select.replaceChildren(...roles.map(r => el("option", {value: r}, r)));
  rows($("#batches tbody"), batches, b => el("tr", {"data-batch-id": b.id},
    td(b.id, "num"), td(b.level), td(b.roles.join(", ")), td(b.count.toLocaleString("en"), "num"),
    td(batchState(b)), td(when(b.created_at)), td(b.note)), "no batches yet");
}

// As `wuma batch list` says it: a batch is often activated a pallet at a time.
function batchState(b) {
  if (b.state !== "activated") return b.state;
  return `activated (${b.activated.toLocaleString("en")} of ${b.count.toLocaleString("en")})`;
}

async function loadAlerts() {
  const doc = await api("GET", "/alerts?limit=50");
  const counts = Object.entries(doc.counts);
  const box = $("#alert-counts");
  box.replaceChildren(counts.length ? barChart(counts, v => String(v)) : el("p", {class: "empty"}, "no diversion seen"));
  rows($("#alerts tbody"), doc.alerts, a => {
    const d = a.diverted || {};
    const unit = a.unit == null ? "" : `batch ${Math.floor(a.unit / 2 ** 32)} #${a.unit % 2 ** 32}`;
    return el("tr", {}, td(when(a.at)), td(d.distributor), td((d.territory || []).join(", ")), td(d.region), td(unit));
  }, "none");
}

const BANS_SHOWN = 500;

async function loadBans() {
  const bans = await api("GET", `/bans?limit=${BANS_SHOWN}`);
  rows($("#bans tbody"), bans, b => {
    const action = el("td");
    if (me && me.role === "admin") {
      action.append(el("button", {type: "button", "data-subject": b.subject, onclick: () => liftBan(b.subject)}, "Lift"));
    }
    return el("tr", {}, td(b.subject), td(b.reason), td(when(b.expires_at)), td((b.evidence || []).length, "num"), action);
  }, "nobody is banned");
  if (bans.length === BANS_SHOWN) {  // a page only: the rest by subject, `wuma bans list`
    const cols = $("#bans thead").querySelectorAll("th").length;
    const more = el("td", {colSpan: cols, class: "empty"}, `the first ${BANS_SHOWN} by subject; all of them: wuma bans list`);
    $("#bans tbody").append(el("tr", {}, more));
  }
}

async function liftBan(subject) {
  try {
    await api("POST", "/bans/lift", {subject});
    await refresh();
    setStatus(`Ban on ${subject} lifted`);
  } catch (e) {
    if (e.status !== 401) setStatus(`${subject}: ${e.message}`, true);
  }
}

// -- wiring ------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => logout(""));
  $("#refresh").addEventListener("click", refresh);
  $("#campaign-form").addEventListener("submit", createCampaign);
  start();
});
