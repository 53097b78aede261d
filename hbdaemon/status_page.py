"""The status page served at GET /: one self-contained HTML file that polls the JSON API.

No external assets, no framework. Everything the daemon reports is put in the page with
textContent or numeric SVG attributes, never as HTML: versions, statuses and reasons come
from agents and may hold markup.

Built for 100,000 agents: the problems (dead, no_heartbeat, over_threshold) first, then
the counts per state and one page of agents at a time (filtered by state and glob). A
poll reads /summary, what changed since the last poll (/agents?changed_since=), the page
shown, the latest events and the samples of the rows shown, never the whole table.
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
  .bar { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin: 8px 0; }
  .bar input, .bar select, .bar button { font: inherit; padding: 3px 6px; }
  @media (max-width: 700px) { .wide { display: none; } td, th { padding: 6px; } }
</style>
</head>
<body>
<header><h1>hbdaemon</h1><div id="summary"></div></header>
<main>
  <p id="error" hidden></p>
  <section id="focus-section" hidden>
  <h2>Linked agent</h2>
  <div class="scroll"><table><thead></thead><tbody id="focus"></tbody></table></div>
  </section>
  <h2>Problems <span id="problem-note" class="muted"></span></h2>
  <div class="scroll"><table><thead></thead><tbody id="problems"></tbody></table></div>
  <h2>Agents</h2>
  <div class="bar">
    <select id="filter-state" aria-label="state"><option value="">every state</option></select>
    <input id="filter-match" placeholder="id glob, e.g. web-*" aria-label="agent id glob">
    <button id="prev" type="button">&larr; previous</button>
    <button id="next" type="button">next &rarr;</button>
    <span id="page-note" class="muted"></span>
  </div>
  <div class="scroll"><table><thead></thead><tbody id="agents"></tbody></table></div>
  <h2>Latest events</h2>
  <ul id="events"></ul>
  <p class="muted">Updated <span id="updated">never</span>; refreshes every 5 s.</p>
</main>
<script>
"use strict";
const STATES = ["healthy", "over_threshold", "unknown", "no_heartbeat", "dead", "stopped"];
const PROBLEMS = ["dead", "no_heartbeat", "over_threshold"];  // shown first, in this order
const SHOWN_PROBLEMS = 500;  // rows of problems drawn (and the most asked for at a time)
const PAGE = 50;             // rows of the paged list
const COLUMNS = ["Agent", "State", "Since", "Last heartbeat", "CPU", "Memory", "PID",
                 "Version", "Transport"];
const WIDE = 6;              // columns from here on hide on a phone
// an alert's link (generatorURL) names its agent: /#agent=ID
const focus = (() => {
  try { return decodeURIComponent((location.hash.match(/^#agent=(.*)$/) || ["", ""])[1]); }
  catch (err) { return ""; }  // a malformed link must not stop the page
})();
let scrolled = false;
let cursor = null;          // where the next poll's changes start (null: read it all again)
const problems = new Map(); // agent_id -> record, for the agents in a problem state
let pages = [""];           // the `after` of each page seen, for "previous"
let nextAfter = null;
let pollBytes = 0;

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
  const text = await resp.text();
  pollBytes += text.length;
  return JSON.parse(text);
}

function q(value) { return encodeURIComponent(value); }

function row(a, history) {
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
  const since = el("td", ago(a.state_since));
  if (a.reason) since.title = a.reason;
  tr.appendChild(since);
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
  tr.appendChild(el("td", (a.transport || "-") + (a.watcher ? " via " + a.watcher : ""), "wide"));
  return tr;
}

function fill(id, agents, history) {
  document.getElementById(id).replaceChildren(...agents.map(a => row(a, history)));
}

function rank(a) { return PROBLEMS.indexOf(a.state); }

function shownProblems() {
  return [...problems.values()].filter(a => a.agent_id !== focus)
    .sort((a, b) => rank(a) - rank(b) || Date.parse(a.state_since) - Date.parse(b.state_since)
                    || (a.agent_id < b.agent_id ? -1 : 1))
    .slice(0, SHOWN_PROBLEMS);
}

function take(a) {
  if (PROBLEMS.includes(a.state)) problems.set(a.agent_id, a);
  else problems.delete(a.agent_id);
}

async function reloadProblems() {
  // the cursor first: a change after it is polled again, none before the list is missed
  const summary = await getJSON("/summary");
  problems.clear();
  const found = await getJSON("/agents?state=" + PROBLEMS.join(",") + "&limit=" + SHOWN_PROBLEMS);
  found.agents.forEach(take);
  cursor = summary.cursor;
  return summary;
}

async function pollChanges() {
  for (let round = 0; round < 4; round++) {  // a burst of changes: a few pages per poll
    const found = await getJSON("/agents?changed_since=" + q(cursor) + "&limit=" + SHOWN_PROBLEMS);
    if (found.reset) { cursor = null; return; }
    found.agents.forEach(take);
    found.forgotten.forEach(id => problems.delete(id));
    cursor = found.cursor;
    if (!found.more) return;
  }
}

function renderSummary(summary) {
  const parts = [el("span", summary.total + " agents")];
  STATES.forEach(s => { if (summary.by_state[s]) parts.push(el("span", summary.by_state[s] + " " + s)); });
  document.getElementById("summary").replaceChildren(...parts);
  const bad = PROBLEMS.reduce((n, s) => n + (summary.by_state[s] || 0), 0);
  document.getElementById("problem-note").textContent =
    bad > SHOWN_PROBLEMS ? "(" + SHOWN_PROBLEMS + " of " + bad + " shown; filter below for the rest)"
                         : bad ? "(" + bad + ")" : "(none)";
}

function listQuery() {
  const state = document.getElementById("filter-state").value;
  const match = document.getElementById("filter-match").value.trim();
  return "/agents?limit=" + PAGE + (state ? "&state=" + q(state) : "") +
         (match ? "&match=" + q(match) : "") + "&after=" + q(pages[pages.length - 1]);
}

async function historyOf(ids) {
  const out = {};
  let batch = [];
  const flush = async () => {
    if (!batch.length) return;
    const found = await getJSON("/history?" + batch.map(id => "agent=" + q(id)).join("&"));
    Object.assign(out, found.agents);
    batch = [];
  };
  let length = 0;
  for (const id of ids) {  // the request line stays well under the daemon's 8 KiB
    const part = "agent=" + q(id) + "&";
    if (length + part.length > 6000) { await flush(); length = 0; }
    batch.push(id);
    length += part.length;
  }
  await flush();
  return out;
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

let busy = false;
async function refresh() {
  if (busy) return;  // a slow answer: the next tick waits for this one
  busy = true;
  const error = document.getElementById("error");
  pollBytes = 0;
  try {
    let summary;
    if (cursor === null) {
      summary = await reloadProblems();
    } else {
      summary = await getJSON("/summary");
      await pollChanges();
      if (cursor === null) summary = await reloadProblems();
    }
    renderSummary(summary);
    const shown = shownProblems();
    fill("problems", shown, {});  // drawn at once: the first thing anyone needs
    if (!document.body.dataset.firstPaint) {
      requestAnimationFrame(() => { document.body.dataset.firstPaint = performance.now().toFixed(0); });
    }
    const [page, events, linked] = await Promise.all([
      getJSON(listQuery()), getJSON("/events?limit=15"),
      focus ? getJSON("/agents/" + q(focus)).catch(() => null) : Promise.resolve(null)]);
    const listed = page.agents.filter(a => a.agent_id !== focus);
    nextAfter = page.next || null;
    const history = await historyOf([...shown, ...listed, ...(linked ? [linked] : [])]
                                    .map(a => a.agent_id));
    fill("problems", shown, history);
    fill("agents", listed, history);
    fill("focus", linked ? [linked] : [], history);
    document.getElementById("focus-section").hidden = !linked;
    document.getElementById("page-note").textContent =
      "page " + pages.length + (listed.length ? ", " + listed[0].agent_id + " \\u2026" : ", empty");
    document.getElementById("prev").disabled = pages.length < 2;
    document.getElementById("next").disabled = !nextAfter;
    const focused = document.querySelector("tr.focus");
    if (focused && !scrolled) { focused.scrollIntoView({block: "center"}); scrolled = true; }
    renderEvents(events.events);
    error.hidden = true;
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.pollBytes = pollBytes;
    document.body.dataset.maxPollBytes = Math.max(pollBytes, Number(document.body.dataset.maxPollBytes || 0));
    document.body.dataset.polls = Number(document.body.dataset.polls || 0) + 1;
    document.body.dataset.loaded = "yes";
  } catch (err) {
    error.textContent = "Cannot reach the daemon: " + err.message;
    error.hidden = false;
  } finally {
    busy = false;
  }
}

function again() { refresh(); }
function setup() {
  document.querySelectorAll("thead").forEach(head => {
    const tr = el("tr");
    COLUMNS.forEach((name, i) => tr.appendChild(el("th", name, i >= WIDE ? "wide" : undefined)));
    head.appendChild(tr);
  });
  const select = document.getElementById("filter-state");
  STATES.forEach(s => { const o = el("option", s); o.value = s; select.appendChild(o); });
  select.addEventListener("change", () => { pages = [""]; again(); });
  document.getElementById("filter-match").addEventListener("change", () => { pages = [""]; again(); });
  document.getElementById("next").addEventListener("click", () => {
    if (nextAfter) { pages.push(nextAfter); again(); }
  });
  document.getElementById("prev").addEventListener("click", () => {
    if (pages.length > 1) { pages.pop(); again(); }
  });
}

setup();
refresh();
setInterval(refresh, 5000);
</script>
</body>
</html>
"""
