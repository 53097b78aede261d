"""The status page served at GET /: one self-contained HTML file that polls the JSON API.

No external assets, no framework. Everything the daemon reports is put in the page with
textContent or numeric SVG attributes, never as HTML: versions, statuses and reasons come
from agents and may hold markup.
"""

STATUS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hbdaemon</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { padding: 12px 16px; background: #1d2330; color: #fff; display: flex;
           justify-content: space-between; align-items: baseline; flex-wrap: wrap; gap: 8px; }
  header h1 { font-size: 18px; margin: 0; }
  #summary span { margin-left: 10px; }
  main { padding: 12px 16px; }
  .scroll { overflow-x: auto; background: #fff; border-radius: 6px; box-shadow: 0 1px 2px #0002; }
  table { border-collapse: collapse; width: 100%; }
  th, td { padding: 6px 10px; text-align: left; white-space: nowrap; border-bottom: 1px solid #eceef2; }
  th { font-weight: 600; font-size: 12px; color: #5b6475; text-transform: uppercase; }
  .state { font-weight: 600; padding: 2px 8px; border-radius: 10px; font-size: 12px; }
  .s-healthy { background: #d9f5e1; color: #176b32; }
  .s-stopped { background: #e3ecf7; color: #28508a; }
  .s-over_threshold, .s-unknown { background: #fff0c7; color: #7a5700; }
  .s-no_heartbeat, .s-dead { background: #fddede; color: #9b1c1c; }
  svg.spark { width: 90px; height: 22px; vertical-align: middle; }
  svg.spark polyline { fill: none; stroke-width: 1.5; }
  .cpu polyline { stroke: #d9480f; } .mem polyline { stroke: #1c7ed6; }
  h2 { font-size: 15px; margin: 18px 0 8px; }
  #events li { padding: 4px 0; border-bottom: 1px solid #eceef2; list-style: none; }
  #events { padding: 0 10px; margin: 0; background: #fff; border-radius: 6px; }
  .muted { color: #7b8394; font-size: 12px; }
  tr.focus td { background: #fff7d6; }
  #error { color: #9b1c1c; font-weight: 600; }
  @media (max-width: 700px) { .wide { display: none; } td, th { padding: 6px; } }
</style>
</head>
<body>
<header><h1>hbdaemon</h1><div id="summary"></div></header>
<main>
  <p id="error" hidden></p>
  <div class="scroll">
  <table>
    <thead><tr><th>Agent</th><th>State</th><th>Since</th><th>Last heartbeat</th>
      <th>CPU</th><th>Memory</th><th class="wide">PID</th><th class="wide">Version</th>
      <th class="wide">Transport</th></tr></thead>
    <tbody id="agents"></tbody>
  </table>
  </div>
  <h2>Latest events</h2>
  <ul id="events"></ul>
  <p class="muted">Updated <span id="updated">never</span>; refreshes every 5 s.</p>
</main>
<script>
"use strict";
const STATES = ["healthy", "over_threshold", "unknown", "no_heartbeat", "dead", "stopped"];
// an alert's link (generatorURL) names its agent: /#agent=ID
const focus = (() => {
  try { return decodeURIComponent((location.hash.match(/^#agent=(.*)$/) || ["", ""])[1]); }
  catch (err) { return ""; }  // a malformed link must not stop the page
})();
let scrolled = false;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ago(iso) {
  if (!iso) return "-";
  let s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + units[i];
}

function spark(values, cls) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark " + cls);
  svg.setAttribute("viewBox", "0 0 90 22");
  if (values && values.length > 1) {
    const max = Math.max(...values) || 1;
    const points = values.map((v, i) =>
      (i * 90 / (values.length - 1)).toFixed(1) + "," + (21 - 20 * Number(v) / max).toFixed(1));
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function stateBadge(state) {
  const known = STATES.includes(state) ? state : "unknown";
  return el("span", state, "state s-" + known);
}

async function getJSON(path) {
  const resp = await fetch(path, {cache: "no-store"});
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
  return resp.json();
}

function renderAgents(agents, history) {
  const body = document.getElementById("agents");
  const rows = agents.map(a => {
    const tr = el("tr");
    tr.dataset.agent = a.agent_id;
    tr.dataset.state = a.state;
    tr.appendChild(el("td", a.agent_id));
    const st = el("td");
    st.appendChild(stateBadge(a.state));
    if (a.flapping) st.appendChild(el("span", " flapping", "muted"));
    if (a.silenced) {
      tr.dataset.silenced = a.silenced;
      const mark = el("span", " silenced", "muted");
      mark.title = "silence " + a.silenced;
      st.appendChild(mark);
    }
    if (a.agent_id === focus) tr.className = "focus";
    tr.appendChild(st);
    tr.appendChild(el("td", ago(a.state_since)));
    tr.appendChild(el("td", ago(a.last_seen)));
    const h = history[a.agent_id] || {};
    const cpu = el("td", Number(a.cpu).toFixed(1) + "% ");
    cpu.appendChild(spark(h.cpu, "cpu"));
    tr.appendChild(cpu);
    const mem = el("td", bytes(Number(a.memory)) + " ");
    mem.appendChild(spark(h.memory, "mem"));
    tr.appendChild(mem);
    tr.appendChild(el("td", a.pid, "wide"));
    tr.appendChild(el("td", a.version || "-", "wide"));
    tr.appendChild(el("td", (a.transport || "-") + (a.watcher ? " via " + a.watcher : ""),
                      "wide"));
    return tr;
  });
  body.replaceChildren(...rows);
  const focused = body.querySelector("tr.focus");
  if (focused && !scrolled) { focused.scrollIntoView({block: "center"}); scrolled = true; }
  const counts = {};
  agents.forEach(a => { counts[a.state] = (counts[a.state] || 0) + 1; });
  const summary = document.getElementById("summary");
  summary.replaceChildren(...Object.keys(counts).sort().map(s => el("span", counts[s] + " " + s)));
}

function renderEvents(events) {
  const list = document.getElementById("events");
  list.replaceChildren(...events.slice(-15).reverse().map(e => {
    const li = el("li");
    li.appendChild(el("span", new Date(e.time).toLocaleTimeString() + " ", "muted"));
    li.appendChild(el("strong", e.agent_id + " "));
    if (e.kind && e.kind !== "state") {
      li.appendChild(el("span", e.kind + ":"));
    } else {
      li.appendChild(el("span", e.from + " \\u2192 "));
      li.appendChild(stateBadge(e.to));
    }
    li.appendChild(el("span", " " + e.reason, "muted"));
    return li;
  }));
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const [agents, events, history] = await Promise.all(
      [getJSON("/agents"), getJSON("/events?limit=15"), getJSON("/history")]);
    renderAgents(agents.agents, history.agents);
    renderEvents(events.events);
    error.hidden = true;
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.loaded = "yes";
  } catch (err) {
    error.textContent = "Cannot reach the daemon: " + err.message;
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, 5000);
</script>
</body>
</html>
"""
