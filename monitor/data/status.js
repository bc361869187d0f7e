// The status page: polls api/status once a second and redraws. No framework, no network
// beyond this origin; every value goes into the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const levels = {};
let lastOk = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function isInf(v) { return v === "inf" || v === "Infinity"; }

function pct(v, digits = 2) {
  if (v === null || v === undefined) return "—";
  if (isInf(v)) return "∞ (balance gone)";
  return (v * 100).toFixed(digits) + " %";
}

function money(v, cur) {
  if (v === null || v === undefined) return "—";
  return v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) + " " + cur;
}

function price(v) {
  if (v === null || v === undefined) return "none";
  return v.toLocaleString("en-US", { maximumSignificantDigits: 8 });
}

function clock(t) {
  return new Date(t * 1000).toISOString().slice(11, 19) + " UTC";
}

function ago(t, now) {
  if (!t) return "never";
  const s = Math.max(0, Math.round(now - t));
  return s < 120 ? s + " s ago" : Math.round(s / 60) + " min ago";
}

function shockText(shock) {
  if (!shock) return "not computed yet";
  const parts = [];
  if (shock.down !== null && shock.down !== undefined) parts.push(pct(Math.abs(shock.down), 1) + " drop");
  if (shock.up !== null && shock.up !== undefined) parts.push(pct(shock.up, 1) + " rise");
  return parts.length ? "a " + parts.join(" or a ") + " of all prices" : "no move liquidates";
}

function sparkline(history, span, now, name) {
  const points = history.filter(([, r]) => !isInf(r) && r !== null);
  const fig = el("figure");
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 600 64");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  let label = history.length ? "The margin balance is gone: the ratio is infinite." : "No ratio history yet.";
  let minutes = Math.round(span / 60);
  if (points.length) {
    const ratios = points.map(([, r]) => r);
    // scaled to the ratio's own range, so a calm 10 % account still shows its moves
    const top = Math.max(0.05, ...ratios) * 1.25;
    // the window is the last hour, or the history there is when the daemon started later
    const start = Math.max(now - span, Math.min(points[0][0], now - 60));
    const x = (t) => ((t - start) / (now - start)) * 600;
    minutes = Math.max(1, Math.round((now - start) / 60));
    const y = (r) => 62 - (r / top) * 60;
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map(([t, r]) => x(t).toFixed(1) + "," + y(r).toFixed(1)).join(" "));
    svg.append(line);
    if (top >= 1.0) {
      const liq = document.createElementNS(SVG, "line");
      liq.setAttribute("class", "threshold");
      liq.setAttribute("x1", "0"); liq.setAttribute("x2", "600");
      liq.setAttribute("y1", y(1.0).toFixed(1)); liq.setAttribute("y2", y(1.0).toFixed(1));
      svg.append(liq);
    }
    const [lt, lr] = points[points.length - 1];
    const dot = document.createElementNS(SVG, "rect");  // the newest point, visible alone too
    dot.setAttribute("x", (x(lt) - 4).toFixed(1)); dot.setAttribute("y", (y(lr) - 3).toFixed(1));
    dot.setAttribute("width", "6"); dot.setAttribute("height", "6");
    svg.append(dot);
    label = "Margin ratio of " + name + " over the last " + minutes + " minute(s): from " +
      pct(ratios[0]) + " to " + pct(ratios[ratios.length - 1]) + ", highest " + pct(Math.max(...ratios)) + ".";
  }
  svg.setAttribute("aria-label", label);
  fig.append(svg, el("figcaption", {}, "Margin ratio, last " + minutes +
    " min, scaled to its range (a dashed line marks 100 %, liquidation, once in range). " + label));
  return fig;
}

function figure(label, value, cls) {
  return el("div", {}, el("dt", {}, label), el("dd", { class: cls || null }, value));
}

function positionsTable(report) {
  const cur = report.currency;
  const head = el("tr", {}, ...["Symbol", "Side", "Liquidation price", "Mark price", "Size (contracts)",
    "Notional (" + cur + ")", "Unrealised PnL (" + cur + ")", "Maint. margin (" + cur + ")"]
    .map((h) => el("th", { scope: "col" }, h)));
  const rows = report.positions.map((p) => el("tr", {},
    el("th", { scope: "row" }, p.symbol), el("td", {}, p.side),
    el("td", { class: "liq" }, price(p.liquidation_price)), el("td", {}, price(p.mark_price)),
    el("td", {}, price(p.contracts)), el("td", {}, money(p.notional, "").trim()),
    el("td", {}, money(p.unrealized_pnl, "").trim()), el("td", {}, money(p.maintenance_margin, "").trim())));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "8" }, "No open position.")));
  return el("div", { class: "table-wrap" },
    el("table", {}, el("caption", {}, "Positions (" + report.positions.length + ")"),
      el("thead", {}, head), el("tbody", {}, ...rows)));
}

function account(a, doc) {
  const now = doc.generated_at;
  const id = "acct-" + a.name.replace(/[^A-Za-z0-9_-]/g, "_");
  const source = a.source.state === "fresh"
    ? el("span", { class: "source fresh" }, "Source: fresh data")
    : el("span", { class: "source blind" }, "Source: BLIND: " + (a.source.reason || "unknown"));
  const title = el("div", { class: "title" },
    el("h2", { id: id + "-title" }, a.name),
    el("span", { class: "badge " + a.level }, "Level: " + a.level), source,
    el("span", { class: "updated" }, "Report " + ago(a.updated_at, now)));
  const box = el("article", { class: "account level-" + a.level, id: id, "aria-labelledby": id + "-title",
    "data-account": a.name }, title);
  const r = a.report;
  if (!r) {
    box.append(el("p", {}, "No report yet: waiting for the first read of this account."));
    return box;
  }
  box.append(el("dl", { class: "figures" },
    figure("Margin ratio (liquidation at 100 %)", pct(r.margin_ratio), "ratio ratio-big"),
    figure("Margin balance", money(r.margin_balance, r.currency), "margin-balance"),
    figure("Maintenance margin", money(r.maintenance_margin, r.currency)),
    figure("Free collateral", money(r.free_collateral, r.currency), "free-collateral"),
    figure("Shock to liquidation", shockText(r.shock_to_liquidation), "shock")));
  box.append(sparkline(a.history, doc.history_span, now, a.name));
  box.append(positionsTable(r));
  box.append(el("h3", {}, "Active alerts"));
  box.append(el("ul", { class: "alerts" }, ...(a.alerts.length ? a.alerts.map((x) => el("li", {},
    x.level.toUpperCase() + ": " + x.rule.replace(/_/g, " ") + " since " + clock(x.since) +
    (x.value !== null && x.value !== undefined && x.rule !== "source_down" ? " (" + pct(x.value) + ")" : "") +
    (x.acknowledged ? ", acknowledged" : ""))) : [el("li", {}, "None.")])));
  box.append(el("h3", {}, "Last protective actions"));
  const paused = a.actions_paused_until ? [el("li", {}, "Paused until " + clock(a.actions_paused_until) + ".")] : [];
  box.append(el("ul", { class: "actions" }, ...paused, ...(a.actions.length ? a.actions.map((x) => el("li", {},
    clock(x.at) + " " + x.kind.replace(/_/g, " ") + (x.symbol ? ": " + x.side + " " + price(x.amount) + " " + x.symbol : "") +
    (x.ratio_before !== undefined && x.ratio_after !== undefined
      ? ": ratio " + pct(x.ratio_before) + " → " + pct(x.ratio_after) : "") +
    (x.kind === "resolved" && x.ratio !== undefined ? ": ratio " + pct(x.ratio) : "") +
    (x.live === false ? " (dry run)" : "") +
    (x.reason ? " (" + x.reason + ")" : "") + (x.error ? ": " + x.error : ""))) : [el("li", {}, "None.")])));
  return box;
}

function render(doc) {
  const main = document.getElementById("accounts");
  main.replaceChildren(...doc.accounts.map((a) => account(a, doc)));
  const silences = doc.silences.map((s) => el("li", {}, (s.account || "every account") + ", " +
    (s.rule ? s.rule.replace(/_/g, " ") : "every rule") + ", up to " + s.up_to + ", until " + clock(s.until)));
  document.getElementById("silences").replaceChildren(...(silences.length ? silences : [el("li", {}, "None.")]));
  const changed = [];
  for (const a of doc.accounts) {
    if (levels[a.name] !== undefined && levels[a.name] !== a.level) changed.push(a.name + " is now " + a.level);
    levels[a.name] = a.level;
  }
  if (changed.length) document.getElementById("announce").textContent = changed.join("; ") + ".";
  const meta = document.getElementById("meta");
  meta.className = "";
  meta.textContent = doc.accounts.length + " account(s) · updated " + clock(doc.generated_at) +
    " · margin-monitor " + doc.version;
}

async function poll() {
  try {
    const response = await fetch("api/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    lastOk = Date.now();
  } catch (err) {
    const meta = document.getElementById("meta");
    meta.className = "stale";
    meta.textContent = "Cannot reach the daemon (" + err.message + "): the figures below are from " +
      (lastOk ? new Date(lastOk).toISOString().slice(11, 19) + " UTC" : "nowhere yet") + ".";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
