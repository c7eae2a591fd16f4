// The Ballast dashboard (served at /static/app.js, embedded in the master). Plain JS, no build
// step, no library. It renders from a first fetch of /api/v1/status, /api/v1/tasks and
// /api/v1/report, then refreshes at most once a second: after events from /api/v1/events, or by
// polling the status when the master has no event stream or the stream is down.
//
// IMPORTANT: everything the API returns (worker names, task output, errors) is untrusted. It
// enters the page only as text (`textContent`, `append(string)`, attribute values), never as HTML.
"use strict";

const TICK_MS = 1000; // the page changes at most once a second
const CPU_SAMPLES = 60; // per worker: a minute of status fetches
const THROUGHPUT_SAMPLES = 300; // five minutes
const TIMELINE_TASKS = 300; // the most recent tasks drawn in the timeline
const TIMELINE_GAP_MS = 30000; // a pause this long starts a new stretch of the timeline
const TIMELINE_LANES_MAX = 16; // per worker; more tasks at once share the last lanes
const PAGE_TASKS = 25; // rows of the task table
const REPORT_MIN_MS = 5000; // the report is fetched again at most this often
const EVENTS_RETRY_MS = 2000; // the stream's own `retry:` overrides it
const EVENTS_ABSENT_RETRY_MS = 30000; // a master without /api/v1/events is asked again after this
const EVENTS_SILENT_MS = 10000; // no byte for this long: the stream is dead
const EVENTS_BUFFER_MAX = 1 << 20; // an unfinished event longer than this is dropped
const FINAL = new Set([
  "succeeded", "failed", "timed_out", "cancelled", "worker_lost", "dependency_failed",
]);
const SVG_NS = "http://www.w3.org/2000/svg";
const SEEN_NOW_MS = 3000; // a worker heard from this recently was seen "now"

const S = {
  token: sessionStorage.getItem("ballast-token"),
  status: null,
  prev: null, // { at, finished, total } of the previous status, for the throughput
  throughput: [], // { at, finished_per_s, submitted_per_s }
  cpu: new Map(), // worker name -> [cpu percent]
  summary: null, // the last `summary` event
  skewMs: 0, // master clock minus ours, from event times
  timeline: [],
  report: null,
  reportAt: 0,
  reportKey: "", // the counts the report was fetched at
  reportError: null,
  page: { after: 0, back: [], tasks: [], next: null },
  detail: null, // the task shown in the detail view
  events: "off", // off | connecting | live | absent
  heard: true, // something happened since the last tick (an event, an action)
  seenKey: "",
};

// --- small helpers --------------------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

/// An element with attributes and children; strings become text nodes, never markup.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  setAttrs(e, attrs);
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (typeof v === "function") e.addEventListener(k, v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, String(v));
  }
}

const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : "–");
const secs = (s) => (s === null || s === undefined || !isFinite(s) ? "–" : s < 10 ? s.toFixed(2) + " s" : s < 600 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min");
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");
const ago = (ms) => (ms === undefined ? "–" : Date.now() - ms < 1500 ? "now" : secs((Date.now() - ms) / 1000) + " ago");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const masterNow = () => Date.now() + S.skewMs;

function say(text, bad) {
  const m = $("#message");
  m.textContent = text;
  m.className = bad ? "bad" : "";
}

// --- the API ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  return S.token ? { Authorization: "Bearer " + S.token } : {};
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Accept: "application/json" }, authHeaders(), opts.headers);
  const r = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
  const text = await r.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (r.status === 401) askToken();
  if (!r.ok) throw new ApiError(r.status, (body && body.error) || text.slice(0, 200) || r.statusText);
  return body;
}

/// Shows the token form (once a token was refused or is missing); the token lives in this tab's
/// sessionStorage only.
function askToken() {
  const form = $("#token-form");
  if (!form.hidden) return;
  if (S.token) {
    sessionStorage.removeItem("ballast-token");
    S.token = null;
  }
  form.hidden = false;
  $("#token-input").focus();
}

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  S.token = $("#token-input").value.trim();
  sessionStorage.setItem("ballast-token", S.token);
  $("#token-input").value = "";
  $("#token-form").hidden = true;
  say("");
  refresh(true);
});

// --- fetching ----------------------------------------------------------------------------------------

async function fetchStatus() {
  const st = await api("/api/v1/status");
  const now = Date.now();
  const finished = st.succeeded + st.failed;
  const total = finished + st.queued + st.running + (st.waiting || 0);
  // While events flow, the master's once-a-second summary gives the throughput (exact seconds);
  // otherwise it is the change between two status fetches.
  if (S.events !== "live" && S.prev && now > S.prev.at) {
    const dt = (now - S.prev.at) / 1000;
    pushThroughput(now, Math.max(0, finished - S.prev.finished) / dt, Math.max(0, total - S.prev.total) / dt);
  }
  S.prev = { at: now, finished, total };
  for (const w of st.workers) {
    const h = S.cpu.get(w.name) || [];
    h.push(w.cpu_percent);
    if (h.length > CPU_SAMPLES) h.shift();
    S.cpu.set(w.name, h);
  }
  S.status = st;
  return total;
}

function pushThroughput(at, finished, submitted) {
  S.throughput.push({ at, finished_per_s: finished, submitted_per_s: submitted });
  if (S.throughput.length > THROUGHPUT_SAMPLES) S.throughput.shift();
}

/// Ids are dense from 1, so the last `TIMELINE_TASKS` ids are the tasks after `total - N`.
async function fetchTimeline(total) {
  const after = Math.max(0, total - TIMELINE_TASKS);
  const page = await api(`/api/v1/tasks?after=${after}&limit=${TIMELINE_TASKS}`);
  S.timeline = page.tasks;
}

async function fetchPage() {
  const state = $("#task-filter").value;
  const q = new URLSearchParams({ after: String(S.page.after), limit: String(PAGE_TASKS) });
  if (state) q.set("state", state);
  const page = await api("/api/v1/tasks?" + q);
  S.page.tasks = page.tasks;
  S.page.next = page.next;
}

async function fetchReport() {
  S.reportAt = Date.now();
  try {
    S.report = await api("/api/v1/report");
    S.reportError = null;
  } catch (e) {
    S.reportError = e.status === 404 ? "this master has no /api/v1/report" : e.message;
  }
}

async function showDetail(id) {
  history.replaceState(null, "", "#task=" + id); // a link to this view
  try {
    S.detail = await api(`/api/v1/tasks/${encodeURIComponent(id)}`);
  } catch (e) {
    say(`task ${id}: ${e.message}`, true);
  }
  renderDetail();
}

/// Fetches what changed since the last call and renders. `force`: everything.
async function refresh(force) {
  try {
    const total = await fetchStatus();
    const st = S.status;
    const key = [total, st.running, st.succeeded, st.failed].join("/");
    const changed = force || key !== S.seenKey;
    S.seenKey = key;
    const work = [];
    if (changed) work.push(fetchTimeline(total), fetchPage());
    // The report follows the counts, at most every REPORT_MIN_MS, and catches up once they stop.
    if (force || (key !== S.reportKey && Date.now() - S.reportAt >= REPORT_MIN_MS)) {
      S.reportKey = key;
      work.push(fetchReport());
    }
    if (changed && S.detail && !FINAL.has(S.detail.state)) work.push(showDetail(S.detail.id));
    await Promise.all(work);
    if (S.events !== "live" && S.events !== "connecting") setConn("polling", "polling the status every second");
    document.body.dataset.rendered = String(Date.now()); // for tests: the page shows fetched data
  } catch (e) {
    if (e.status === 401) setConn("token needed", "this master needs its token");
    else setConn("down", "the master does not answer: " + e.message);
  }
  render();
}

async function tick() {
  // Events say when something happened; without them, poll.
  if (S.events !== "live" || S.heard) {
    S.heard = false;
    await refresh(false);
  } else {
    renderAges();
  }
  setTimeout(tick, TICK_MS);
}

// --- the event stream ----------------------------------------------------------------------------------

function setConn(kind, title) {
  const c = $("#conn");
  c.textContent = kind;
  c.className = "conn conn-" + kind.replace(/ .*/, "");
  c.title = title || "";
}

/// Reads /api/v1/events with fetch (EventSource cannot send the bearer token) and reconnects,
/// so the page comes back by itself when the master restarts.
async function streamEvents() {
  let retryMs = EVENTS_RETRY_MS;
  for (;;) {
    let wait = retryMs;
    // The master sends a summary every second: a stream silent for EVENTS_SILENT_MS is dead
    // (a host that vanished sends no FIN), so it is cut and opened again.
    const abort = new AbortController();
    let heardAt = Date.now();
    const watchdog = setInterval(() => Date.now() - heardAt > EVENTS_SILENT_MS && abort.abort(), 1000);
    try {
      S.events = "connecting";
      const r = await fetch("/api/v1/events", { headers: authHeaders(), cache: "no-store", signal: abort.signal });
      if (r.status === 404) {
        S.events = "absent";
        wait = EVENTS_ABSENT_RETRY_MS;
      } else if (r.status === 401) {
        askToken();
        S.events = "off";
      } else if (!r.ok || !r.body) {
        throw new Error("HTTP " + r.status);
      } else {
        S.events = "live";
        S.heard = true;
        setConn("live", "live from /api/v1/events");
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          heardAt = Date.now();
          // A lone \r ends a line too; one at the very end may be half of a \r\n.
          buf = (buf + value).replace(/\r\n|\r(?!$)/g, "\n");
          let end;
          while ((end = buf.indexOf("\n\n")) >= 0) {
            const ms = onEventBlock(buf.slice(0, end));
            if (ms) retryMs = ms;
            buf = buf.slice(end + 2);
          }
          if (buf.length > EVENTS_BUFFER_MAX) buf = "";
        }
      }
    } catch (_) {
      // The master went away or the stream broke: reconnect below.
    }
    clearInterval(watchdog);
    if (S.events === "live" || S.events === "connecting") {
      S.events = "off";
      setConn("reconnecting", "the event stream ended; trying again");
    }
    await sleep(wait);
  }
}

/// One SSE event block; returns the `retry:` it sets, if any.
function onEventBlock(block) {
  let name = "message";
  let data = "";
  let retry = 0;
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
    else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
  }
  if (!data) return retry;
  let ev;
  try {
    ev = JSON.parse(data);
  } catch (_) {
    return retry;
  }
  if (typeof ev.at_ms === "number") S.skewMs = ev.at_ms - Date.now();
  if (name === "summary") {
    S.summary = ev;
    if (typeof ev.finished_per_s === "number") pushThroughput(Date.now(), ev.finished_per_s, ev.submitted_per_s || 0);
  }
  S.heard = true;
  return retry;
}

// --- rendering --------------------------------------------------------------------------------------------

function render() {
  renderHeader();
  renderWorkers();
  renderQueue();
  renderTimeline();
  renderTasks();
  renderReport();
}

function renderHeader() {
  const st = S.status;
  $("#policy").textContent = st ? "policy " + st.policy : "";
}

function renderWorkers() {
  const st = S.status;
  if (!st) return;
  const alive = st.workers.filter((w) => w.state === "alive");
  const slots = alive.reduce((n, w) => n + w.slots, 0);
  $("#workers-summary").textContent = `${alive.length} alive of ${st.workers.length}, ${slots} slots`;
  const rows = st.workers.map((w) =>
    el("tr", { class: "worker w-" + w.state, "data-name": w.name },
      el("td", { class: "worker-name", title: `${w.host} ${w.addr}` }, w.name),
      el("td", { class: "worker-group" }, w.group === null ? "–" : w.group),
      el("td", { class: "worker-state" }, el("span", { class: "pill w-" + w.state }, w.state)),
      el("td", { class: "num worker-slots" }, w.slots + (w.prefetch ? ` +${w.prefetch}` : "")),
      el("td", { class: "num worker-running" }, w.running),
      el("td", { class: "num worker-cpu" }, w.cpu_percent.toFixed(0)),
      el("td", { class: "worker-spark" }, sparkline(S.cpu.get(w.name) || [])),
      el("td", { class: "num worker-done" }, w.done),
      el("td", { class: "worker-seen" }, seen(w))));
  $("#workers tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no worker has joined yet"))]));
}

/// When the master last heard from the worker (`last_seen_ms`, on the master's clock: the skew
/// learnt from event times turns it into ours). Within a few heartbeats: "now".
function seen(w) {
  if (typeof w.last_seen_ms !== "number") return "not since the master started";
  const at = w.last_seen_ms - S.skewMs;
  return Date.now() - at < SEEN_NOW_MS ? "now" : ago(at);
}

function renderAges() {
  if (!S.status) return;
  const byName = new Map(S.status.workers.map((w) => [w.name, w]));
  for (const tr of document.querySelectorAll("#workers tr.worker")) {
    const cell = tr.querySelector(".worker-seen");
    const w = byName.get(tr.dataset.name);
    if (cell && w) cell.textContent = seen(w);
  }
}

/// CPU percent over the last minute, 0 to 100.
function sparkline(values) {
  const w = 80, h = 18;
  const pts = values.map((v, i) => `${(i * w) / (CPU_SAMPLES - 1)},${h - (Math.min(100, Math.max(0, v)) / 100) * (h - 2) - 1}`);
  return svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}` },
    svg("polyline", { points: pts.join(" ") }));
}

function renderQueue() {
  const st = S.status;
  if (!st) return;
  for (const k of ["queued", "waiting", "running", "succeeded", "failed"]) {
    $("#count-" + k).textContent = st[k] ?? 0;
  }
  const groups = $("#groups");
  const q = S.summary && S.summary.queue;
  if (q && typeof q === "object") {
    const parts = Object.entries(q).map(([g, n]) => el("span", { class: "group", "data-group": g }, `${g === "" ? "shared pool" : g}: ${n} waiting`));
    groups.replaceChildren(...(parts.length ? parts : ["nothing waiting"]));
  } else {
    const names = [...new Set(st.workers.map((w) => (w.group === null ? "shared pool" : w.group)))];
    const hint = S.events === "live" ? "" : " (waiting per group comes with the event stream)";
    groups.textContent = names.length ? "groups: " + names.join(", ") + hint : "";
  }
  drawThroughput();
}

function drawThroughput() {
  const W = 400, H = 110, L = 30, B = 16;
  const pts = S.throughput;
  const last = pts[pts.length - 1];
  $("#throughput-now").textContent = last ? `${last.finished_per_s.toFixed(1)} finished/s, ${last.submitted_per_s.toFixed(1)} submitted/s` : "";
  const max = Math.max(1, ...pts.map((p) => Math.max(p.finished_per_s, p.submitted_per_s)));
  const top = niceCeil(max);
  // The window grows with the history, from one minute to five.
  const now = Date.now();
  const span = Math.min(THROUGHPUT_SAMPLES * TICK_MS, Math.max(60000, pts.length ? now - pts[0].at : 0));
  const x = (at) => L + ((W - L) * (span - (now - at))) / span;
  const y = (v) => H - B - ((H - B - 4) * v) / top;
  const line = (f) => pts.map((p) => `${x(p.at).toFixed(1)},${y(f(p)).toFixed(1)}`).join(" ");
  const kids = [
    svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }),
    svg("text", { class: "tick", x: L - 4, y: y(top) + 4, "text-anchor": "end" }, fmtNum(top)),
    svg("text", { class: "tick", x: L - 4, y: H - B, "text-anchor": "end" }, "0"),
    svg("text", { class: "tick", x: L, y: H - 3 }, `−${Math.round(span / 60000)} min`),
    svg("text", { class: "tick", x: W, y: H - 3, "text-anchor": "end" }, "now"),
  ];
  if (pts.length > 1) {
    kids.push(svg("polyline", { class: "submitted", points: line((p) => p.submitted_per_s) }));
    kids.push(svg("polyline", { class: "finished", points: line((p) => p.finished_per_s) }));
  }
  $("#throughput").replaceChildren(...kids);
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
const fmtNum = (v) => (v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k" : String(v));

/// The last tasks that ran: one row per worker, split in lanes so that tasks running at the same
/// time (one per slot) do not hide each other; a bar from started_ms to finished_ms (or now).
function renderTimeline() {
  const box = $("#timeline");
  const now = masterNow();
  const end = (t) => (FINAL.has(t.state) ? t.finished_ms || t.started_ms : now);
  const all = S.timeline.filter((t) => t.started_ms && t.worker !== null).sort((a, b) => a.started_ms - b.started_ms);
  // Only the last busy stretch: a pause of TIMELINE_GAP_MS with nothing running starts a new one,
  // so one batch fills the width instead of a sliver beside an hour-old one.
  let from = 0, reach = -Infinity;
  all.forEach((t, i) => {
    if (t.started_ms > reach + TIMELINE_GAP_MS) from = i;
    reach = Math.max(reach, end(t));
  });
  const ran = all.slice(from);
  const names = new Set(S.status ? S.status.workers.map((w) => w.name) : []);
  for (const t of ran) names.add(t.worker);
  const finished = ran.filter((t) => FINAL.has(t.state)).length;
  const earlier = from ? `; ${from} earlier not drawn` : "";
  $("#timeline-summary").textContent = ran.length ? `the last busy stretch: ${finished} finished, ${ran.length - finished} running${earlier}` : "no task has run yet";
  // Greedy lanes per worker: a task takes the first lane free at its start.
  const lanes = new Map([...names].map((n) => [n, []])); // name -> [end of the lane's last task]
  const place = new Map(); // task id -> lane
  for (const t of ran) {
    const ends = lanes.get(t.worker);
    let lane = ends.findIndex((e) => e <= t.started_ms);
    if (lane < 0) lane = ends.length < TIMELINE_LANES_MAX ? ends.length : ends.indexOf(Math.min(...ends));
    ends[lane] = Math.max(ends[lane] || 0, end(t));
    place.set(t.id, lane);
  }
  const W = Math.max(600, box.clientWidth || 1200), L = 110, R = 24, LANE = 12, PAD = 4, TOP = 2, AX = 18;
  // Workers in the status's order (as the table lists them), then any the tasks name besides.
  const listed = S.status ? S.status.workers.map((w) => w.name) : [];
  const rows = [...listed, ...[...names].filter((n) => !listed.includes(n)).sort()];
  const rowTop = new Map();
  let y = TOP;
  for (const name of rows) {
    rowTop.set(name, y);
    y += Math.max(1, lanes.get(name).length) * LANE + 2 * PAD;
  }
  const axisY = y, H = axisY + AX;
  let t0 = Math.min(...ran.map((t) => t.started_ms)), t1 = Math.max(...ran.map(end));
  if (!ran.length) (t0 = now - 60000), (t1 = now);
  if (t1 - t0 < 1000) t1 = t0 + 1000;
  const x = (ms) => L + ((W - L - R) * (ms - t0)) / (t1 - t0);
  const kids = [];
  rows.forEach((name, i) => {
    const top = rowTop.get(name), h = Math.max(1, lanes.get(name).length) * LANE + 2 * PAD;
    if (i % 2) kids.push(svg("rect", { class: "stripe", x: 0, y: top, width: W, height: h }));
    kids.push(svg("text", { class: "row-label", x: L - 6, y: top + h / 2 + 4, "text-anchor": "end" }, name));
  });
  const step = niceCeil((t1 - t0) / 1000 / 8);
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  for (let i = 0; i * step * 1000 <= t1 - t0; i++) {
    const xs = x(t0 + i * step * 1000);
    const label = i === 0 ? clock(t0) : step >= 60 ? clock(t0 + i * step * 1000) : `+${(i * step).toFixed(digits)} s`;
    kids.push(svg("line", { class: "grid", x1: xs, y1: TOP, x2: xs, y2: axisY }));
    kids.push(svg("text", { class: "tick", x: xs, y: axisY + 13, "text-anchor": i === 0 ? "start" : "middle" }, label));
  }
  for (const t of ran) {
    const x0 = x(t.started_ms), x1 = Math.max(x0 + 2, x(end(t)));
    const took = ((end(t) - t.started_ms) / 1000).toFixed(3);
    kids.push(svg("rect", {
      class: `bar s-${t.state}`, "data-id": t.id, "data-state": t.state, x: x0.toFixed(1),
      y: rowTop.get(t.worker) + PAD + place.get(t.id) * LANE + 1, width: (x1 - x0).toFixed(1),
      height: LANE - 2, click: () => showDetail(t.id),
    }, svg("title", {}, `task ${t.id}: ${t.state} on ${t.worker}, ${took} s`)));
  }
  kids.push(svg("line", { class: "axis", x1: L, y1: axisY, x2: W - R, y2: axisY }));
  box.replaceChildren(svg("svg", { width: "100%", height: H, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMinYMin meet" }, ...kids));
}

function renderTasks() {
  const p = S.page;
  const rows = p.tasks.map((t) => {
    const ran = t.started_ms && t.finished_ms ? secs((t.finished_ms - t.started_ms) / 1000) : "–";
    return el("tr", { class: "task", "data-id": t.id, click: () => showDetail(t.id) },
      el("td", { class: "num task-id" }, t.id),
      el("td", { class: "task-state" }, el("span", { class: "pill s-" + t.state }, t.state)),
      el("td", {}, t.worker === null ? "–" : t.worker),
      el("td", { class: "num" }, t.exit_code === null ? "–" : t.exit_code),
      el("td", { class: "num" }, t.attempts),
      el("td", { class: "num" }, t.priority),
      el("td", {}, clock(t.submitted_ms)),
      el("td", { class: "num" }, ran),
      el("td", {}, cancelButton(t)));
  });
  $("#tasks tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no task here"))]));
  const ids = p.tasks.map((t) => t.id);
  $("#page-info").textContent = ids.length ? `ids ${ids[0]}–${ids[ids.length - 1]}` : "";
  $("#page-prev").disabled = p.back.length === 0;
  $("#page-first").disabled = p.after === 0;
  $("#page-next").disabled = p.next === null;
}

function cancelButton(t) {
  if (FINAL.has(t.state)) return null;
  return el("button", {
    type: "button", class: "cancel", "data-id": t.id,
    click: (ev) => {
      ev.stopPropagation();
      cancel(t.id);
    },
  }, "cancel");
}

async function cancel(id) {
  try {
    const r = await api(`/api/v1/tasks/${id}`, { method: "DELETE" });
    say(r.cancelled.length ? `task ${id} cancelled` : r.already_final.length ? `task ${id} had already finished` : `no task ${id}`);
  } catch (e) {
    say(`cancel ${id}: ${e.message}`, true);
  }
  if (S.detail && S.detail.id === id) await showDetail(id);
  refresh(true);
}

async function goPage(after, back) {
  S.page.after = after;
  S.page.back = back;
  try {
    await fetchPage();
  } catch (e) {
    say("tasks: " + e.message, true);
  }
  renderTasks();
}

$("#task-filter").addEventListener("change", () => goPage(0, []));
$("#page-first").addEventListener("click", () => goPage(0, []));
$("#page-next").addEventListener("click", () => S.page.next !== null && goPage(S.page.next, [...S.page.back, S.page.after]));
$("#page-prev").addEventListener("click", () => S.page.back.length && goPage(S.page.back[S.page.back.length - 1], S.page.back.slice(0, -1)));
$("#page-last").addEventListener("click", () => {
  // Unfiltered ids are dense: the last page starts after total - PAGE_TASKS.
  const total = S.prev ? S.prev.total : 0;
  $("#task-filter").value = "";
  goPage(Math.max(0, total - PAGE_TASKS), S.page.after ? [...S.page.back, S.page.after] : S.page.back);
});

function renderDetail() {
  const t = S.detail;
  if (!t) return;
  $("#detail-id").textContent = `${t.id}`;
  const cmd = Array.isArray(t.cmd) ? joinArgs(t.cmd) : `(${t.kind})`;
  const field = (name, value, cls) => [el("dt", {}, name), el("dd", { class: cls || null }, value === null || value === undefined ? "–" : value)];
  const dl = el("dl", {},
    ...field("state", el("span", { class: "pill s-" + t.state }, t.state), "detail-state"),
    ...field("command", cmd, "detail-cmd"),
    ...field("group", t.group, "detail-group"),
    ...field("worker", t.worker, "detail-worker"),
    ...field("attempts", `${t.attempts} (copies ${t.copies})`),
    ...field("exit code", t.exit_code, "detail-exit"),
    ...field("error", t.error, "detail-error"),
    ...field("priority", t.priority),
    ...field("submitted", clock(t.submitted_ms)),
    ...field("started", clock(t.started_ms)),
    ...field("finished", clock(t.finished_ms)),
    ...field("ran", t.started_ms && t.finished_ms ? secs((t.finished_ms - t.started_ms) / 1000) : null));
  const out = (name) => [
    el("h3", {}, name + " ", el("span", { class: "muted" }, t[name] ? "(its tail)" : "(empty)")),
    t[name] ? el("pre", { id: "detail-" + name }, t[name]) : null,
  ];
  $("#detail").replaceChildren(...[dl, ...out("stdout"), ...out("stderr"), cancelButton(t)].filter((n) => n));
}

function renderReport() {
  const box = $("#report");
  const r = S.report;
  if (!r) {
    box.textContent = S.reportError || "";
    return;
  }
  $("#report-summary").textContent = `${r.completed} of ${r.tasks} completed, policy ${r.policy}`;
  const fig = (label, value, id) => el("div", { class: "fig" }, el("span", { class: "n", id }, value), label);
  const figures = el("div", { class: "figs" },
    fig("makespan", secs(r.makespan_s), "report-makespan"),
    fig("lower bound", secs(r.lower_bound_s)),
    fig("utilisation", pct(r.utilisation), "report-utilisation"),
    fig("p50 completion", secs(r.p50_completion_s)),
    fig("p99 completion", secs(r.p99_completion_s)),
    fig("failed / lost", `${r.failed} / ${r.lost}`));
  const span = Math.max(r.makespan_s || 0, r.lower_bound_s || 0) || 1;
  const makespan = hbars("makespan", [
    { label: "makespan", value: r.makespan_s || 0, text: secs(r.makespan_s) },
    { label: "lower bound", value: r.lower_bound_s || 0, text: secs(r.lower_bound_s) },
  ], span);
  const util = hbars("utilisation per worker", (r.per_worker || []).map((w) => ({
    label: w.worker, value: w.utilisation || 0, text: `${pct(w.utilisation)}, ${w.done} done`, cls: "util-" + w.state,
  })), 1);
  box.replaceChildren(figures, el("div", { class: "charts" }, makespan, util, completionChart(r)));
}

/// Horizontal bars, `max` at full width.
function hbars(title, items, max) {
  const rows = items.map((it) => el("div", { class: "hbar " + (it.cls || "") },
    el("span", { class: "hbar-label" }, it.label),
    el("span", { class: "hbar-track" }, barFill(it.value / max)),
    el("span", { class: "hbar-text" }, it.text)));
  return el("div", { class: "chart-box" }, el("h3", {}, title), ...(rows.length ? rows : [el("p", { class: "muted" }, "none")]));
}

function barFill(frac) {
  const f = el("span", { class: "hbar-fill" });
  f.style.width = (100 * Math.min(1, Math.max(0, frac || 0))).toFixed(1) + "%"; // CSSOM, allowed by the CSP
  return f;
}

/// Completion times (finished − submitted) of the succeeded tasks in the timeline's window, with
/// the report's p50 and p99 (over all tasks) marked.
function completionChart(r) {
  const W = 300, H = 110, B = 16, L = 4;
  const times = S.timeline.filter((t) => t.state === "succeeded" && t.finished_ms).map((t) => (t.finished_ms - t.submitted_ms) / 1000);
  const top = Math.max(r.p99_completion_s || 0, ...times, 0.001);
  const BINS = 20;
  const counts = new Array(BINS).fill(0);
  for (const s of times) counts[Math.min(BINS - 1, Math.floor((s / top) * BINS))]++;
  const most = Math.max(1, ...counts);
  const bw = (W - L) / BINS;
  const kids = counts.map((n, i) => svg("rect", { class: "hist", x: L + i * bw + 1, y: H - B - ((H - B - 12) * n) / most, width: bw - 2, height: ((H - B - 12) * n) / most }, svg("title", {}, `${n} tasks`)));
  for (const [name, v] of [["p50", r.p50_completion_s], ["p99", r.p99_completion_s]]) {
    if (!v) continue;
    const xv = L + ((W - L) * Math.min(v, top)) / top;
    kids.push(svg("line", { class: "marker", x1: xv, y1: 8, x2: xv, y2: H - B }));
    kids.push(svg("text", { class: "tick", x: xv, y: 8, "text-anchor": name === "p99" ? "end" : "middle" }, name));
  }
  kids.push(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  kids.push(svg("text", { class: "tick", x: L, y: H - 3 }, "0"));
  kids.push(svg("text", { class: "tick", x: W, y: H - 3, "text-anchor": "end" }, secs(top)));
  return el("div", { class: "chart-box" },
    el("h3", {}, "completion time ", el("span", { class: "muted" }, `(${times.length} recent tasks)`)),
    svg("svg", { id: "completion", class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" }, ...kids));
}

// --- submitting ----------------------------------------------------------------------------------------

/// argv to a command line `splitArgs` reads back: a word bare if it is plain, else '...', or
/// "..." (with \" and \\) if it holds a '.
function joinArgs(argv) {
  return argv
    .map((a) => (/^[A-Za-z0-9_@%+=:,.\/-]+$/.test(a) ? a : !a.includes("'") ? `'${a}'` : `"${a.replace(/[\\"]/g, (c) => "\\" + c)}"`))
    .join(" ");
}

/// A command line to argv: whitespace separates, '...' is literal, "..." keeps \" and \\.
function splitArgs(line) {
  const out = [];
  let cur = null, quote = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null;
      else cur += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === "\\" && (line[i + 1] === '"' || line[i + 1] === "\\")) cur += line[++i];
      else cur += c;
    } else if (/\s/.test(c)) {
      if (cur !== null) out.push(cur), (cur = null);
    } else if (c === "'" || c === '"') {
      quote = c;
      cur = cur || "";
    } else if (c === "\\" && i + 1 < line.length) {
      cur = (cur || "") + line[++i];
    } else cur = (cur || "") + c;
  }
  if (quote) throw new Error(`unclosed ${quote}`);
  if (cur !== null) out.push(cur);
  return out;
}

$("#submit-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const result = $("#submit-result");
  try {
    const cmd = splitArgs($("#submit-cmd").value);
    if (!cmd.length) throw new Error("no command");
    const task = { cmd, priority: Number($("#submit-priority").value) || 0 };
    const group = $("#submit-group").value.trim();
    if (group) task.group = group;
    const count = Math.max(1, Math.floor(Number($("#submit-count").value) || 1));
    const r = await api("/api/v1/tasks", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ tasks: [task], count }),
    });
    const ids = r.ids;
    result.textContent = ids.length === 1 ? `submitted: task ${ids[0]}` : `submitted ${ids.length} tasks: ${ids[0]}–${ids[ids.length - 1]}`;
    result.className = "";
    S.heard = true;
  } catch (e) {
    result.textContent = "not submitted: " + e.message;
    result.className = "bad";
  }
});

// --- start ------------------------------------------------------------------------------------------------

// IMPORTANT: the first render comes from plain fetches, not from the event stream, so the page
// shows data at once (and a headless `--dump-dom` sees it).
const linked = /^#task=(\d+)$/.exec(location.hash);
refresh(true).then(async () => {
  if (linked) await showDetail(Number(linked[1]));
  streamEvents();
  setTimeout(tick, TICK_MS);
});
window.addEventListener("resize", () => renderTimeline());
