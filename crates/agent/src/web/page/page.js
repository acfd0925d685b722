"use strict";
// Everything below builds the DOM from nodes and text: comm and container names come from
// processes on this node and are attacker-controlled. No HTML strings, ever.
const REFRESH_MS = 2000;
const TIMEOUT_MS = 8000;
const WINDOW_S = 900;
const SVG_NS = "http://www.w3.org/2000/svg";

const CAUSES = {
  disk_stalled: "disk stalled: I/O in flight, nothing completing",
  ebs_credits: "EBS burst credits",
  memory: "memory: reclaim and thrashing",
  writeback: "writeback: a flush storm",
  lock: "lock: threads in D behind a lock, not a disk",
  disk_saturated: "disk saturated: a device at its limit",
  cpu: "CPU: run-queue saturation",
  none: "none",
};
const IO_CAUSES = ["disk_stalled", "ebs_credits", "writeback", "disk_saturated"];
const CAUSE_ORDER = ["disk_stalled", "ebs_credits", "memory", "writeback", "lock", "disk_saturated", "cpu"];
// [key, label, unit, floor of the y axis]
const SERIES = [
  ["psi_io_some", "I/O pressure (some)", "ratio", 0.1],
  ["psi_io_full", "I/O pressure (full)", "ratio", 0.1],
  ["psi_cpu_some", "CPU pressure", "ratio", 0.1],
  ["psi_memory_some", "Memory pressure", "ratio", 0.1],
  ["d_threads", "Threads in D", "count", 4],
  ["procs_blocked", "procs_blocked", "count", 4],
  ["writeback_bytes", "Writeback", "bytes", 64 << 20],
  ["dirty_bytes", "Dirty", "bytes", 64 << 20],
  ["written_bytes_per_second", "Written", "bytes/s", 64 << 20],
  ["disk_await_seconds_max", "Disk latency (max await)", "seconds", 0.05],
  ["disk_utilisation_max", "Disk utilisation (max)", "ratio", 1],
  ["disk_queue_max", "Disk queue (max)", "count", 4],
  ["burst_balance_min", "EBS burst balance (min)", "percent", 100],
  ["probe_latency_seconds_max", "Write probe latency", "seconds", 0.05],
];
const UNIT_OF = Object.fromEntries(SERIES.map(s => [s[0], s[2]]));

const $ = id => document.getElementById(id);

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
function s(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  setAttrs(e, attrs);
  return e;
}
function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.setAttribute("class", v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
}

// ---- formatting -------------------------------------------------------------------------------
function num(v, digits) {
  if (typeof v !== "number" || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (digits === undefined) digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  return v.toFixed(digits).replace(/\.0+$|(\.\d*?)0+$/, "$1");
}
function bytes(v) {
  if (typeof v !== "number" || !isFinite(v)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return num(v, i === 0 ? 0 : undefined) + " " + units[i];
}
function seconds(v) {
  if (typeof v !== "number" || !isFinite(v)) return "–";
  if (v < 1) return num(v * 1000) + " ms";
  if (v < 120) return num(v) + " s";
  if (v < 7200) return num(v / 60, 1) + " min";
  return num(v / 3600, 1) + " h";
}
function fmt(v, unit) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  switch (unit) {
    case "ratio": return num(v * 100) + "%";
    case "percent": return num(v) + "%";
    case "bytes": return bytes(v);
    case "bytes/s": case "B/s": return bytes(v) + "/s";
    case "seconds": case "s": return seconds(v);
    case "count": return num(v, 0);
    case "1/s": return num(v) + "/s";
    default: return num(v) + (unit ? " " + unit : "");
  }
}
function clock(unix) {
  if (typeof unix !== "number") return "–";
  return new Date(unix * 1000).toISOString().slice(11, 19) + "Z";
}
function stamp(unix) {
  if (typeof unix !== "number") return "–";
  return new Date(unix * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";
}
function causeName(c) { return CAUSES[c] ? c.replace("_", " ") : String(c); }
function causeClass(c) { return "c-" + (CAUSES[c] ? c : "other"); }
function ioTag(io) { return io ? h("span", {class: "tag io"}, "I/O") : h("span", {class: "tag notio"}, "not I/O"); }
function arr(x) { return Array.isArray(x) ? x : []; }
function incidentHref(id) { return "#incident/" + encodeURIComponent(String(id)); }

// A table of `rows` with `cols` = [[label, row => value, class?]]; values are text or nodes.
function table(rows, cols, empty) {
  if (!rows.length) return h("p", {class: "empty"}, empty || "none");
  return h("div", {class: "scroll"}, h("table", {},
    h("thead", {}, h("tr", {}, cols.map(c => h("th", {class: c[2] || null}, c[0])))),
    h("tbody", {}, rows.map(r => h("tr", {}, cols.map(c => {
      let v;
      try { v = c[1](r); } catch (e) { v = "?"; }
      return h("td", {class: c[2] || null}, v === null || v === undefined ? "–" : v);
    }))))));
}

// ---- fetching ----------------------------------------------------------------------------------
async function getJSON(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const r = await fetch(path, {signal: ctl.signal, cache: "no-store", credentials: "same-origin",
                                 headers: {"Accept": "application/json"}});
    if (!r.ok) {
      let why = "HTTP " + r.status;
      try { const j = await r.json(); if (j && j.error) why += ": " + j.error; } catch (e) { /* not JSON */ }
      const err = new Error(why);
      err.status = r.status;
      throw err;
    }
    return await r.json();
  } catch (e) {
    if (e.name === "AbortError") throw new Error("no answer within " + TIMEOUT_MS / 1000 + " s");
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

// The last 15 minutes, merged from small incremental fetches (only the seconds since the last
// one), so a phone on a slow link does not pull 900 points × 14 series every 2 s.
const timeline = {t: [], stalled: [], cause: [], series: {}, fetchedAt: 0};
function mergeTimeline(tl) {
  const t = arr(tl.t_unix);
  const last = timeline.t.length ? timeline.t[timeline.t.length - 1] : -Infinity;
  const keys = Object.keys(tl.series || {});
  for (const k of keys) if (!timeline.series[k]) timeline.series[k] = timeline.t.map(() => null);
  for (let i = 0; i < t.length; i++) {
    if (!(t[i] > last + 0.5)) continue;
    timeline.t.push(t[i]);
    timeline.stalled.push(arr(tl.stalled)[i] ?? null);
    timeline.cause.push(arr(tl.cause)[i] ?? null);
    for (const k of Object.keys(timeline.series)) {
      const col = tl.series && tl.series[k];
      timeline.series[k].push(Array.isArray(col) ? (col[i] ?? null) : null);
    }
  }
  const newest = timeline.t.length ? timeline.t[timeline.t.length - 1] : 0;
  let drop = 0;
  while (drop < timeline.t.length && timeline.t[drop] < newest - WINDOW_S) drop++;
  if (drop) {
    timeline.t.splice(0, drop); timeline.stalled.splice(0, drop); timeline.cause.splice(0, drop);
    for (const k of Object.keys(timeline.series)) timeline.series[k].splice(0, drop);
  }
}
function timelineSeconds() {
  if (!timeline.t.length || !timeline.fetchedAt) return WINDOW_S;
  return Math.min(WINDOW_S, Math.ceil((Date.now() - timeline.fetchedAt) / 1000) + 5);
}

// ---- sparklines --------------------------------------------------------------------------------
// One SVG per series, x = time (so gaps stay gaps), stalled seconds as a red band behind.
function sparkline(t, col, stalled, floor, t0, t1) {
  const W = 900, H = 40;
  const span = Math.max(1, t1 - t0);
  let max = floor || 0;
  for (const v of col) if (typeof v === "number" && isFinite(v) && v > max) max = v;
  if (!(max > 0)) max = 1;
  const svg = s("svg", {viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img"});
  const x = ti => ((ti - t0) / span) * W;
  // Stalled runs.
  let runStart = null;
  for (let i = 0; i <= t.length; i++) {
    const on = i < t.length && stalled[i] === 1;
    if (on && runStart === null) runStart = i;
    if (!on && runStart !== null) {
      const x0 = x(t[runStart]), x1 = i < t.length ? x(t[i]) : W;
      svg.append(s("rect", {class: "band", x: x0.toFixed(1), y: 0, width: Math.max(1, x1 - x0).toFixed(1), height: H}));
      runStart = null;
    }
  }
  // Line segments, broken at unknown values and at missing seconds.
  let pts = [];
  const flush = () => {
    if (pts.length === 1) pts.push((parseFloat(pts[0]) + 2).toFixed(1) + "," + pts[0].split(",")[1]);
    if (pts.length) svg.append(s("polyline", {class: "line", points: pts.join(" "), "vector-effect": "non-scaling-stroke"}));
    pts = [];
  };
  for (let i = 0; i < t.length; i++) {
    const v = col[i];
    if (typeof v !== "number" || !isFinite(v) || (i > 0 && t[i] - t[i - 1] > 2.5)) flush();
    if (typeof v !== "number" || !isFinite(v)) continue;
    pts.push(x(t[i]).toFixed(1) + "," + (H - 1 - (Math.min(v, max) / max) * (H - 2)).toFixed(1));
  }
  flush();
  return {svg, max};
}

function renderSparks(target, tl, labelled) {
  const t = tl.t;
  const box = h("div", {class: "sparks"});
  if (!t.length) { target.replaceChildren(h("p", {class: "empty"}, "no samples yet")); return; }
  const t1 = t[t.length - 1], t0 = Math.min(t[0], t1 - (labelled ? WINDOW_S : 0));
  const known = new Set(SERIES.map(x => x[0]));
  const defs = SERIES.concat(Object.keys(tl.series).filter(k => !known.has(k)).map(k => [k, k, "", 0]));
  for (const [key, label, unit, floor] of defs) {
    const col = tl.series[key];
    if (!Array.isArray(col)) continue;
    const {svg, max} = sparkline(t, col, tl.stalled, floor, t0, t1);
    let peak = null;
    for (const v of col) if (typeof v === "number") peak = peak === null ? v : Math.max(peak, v);
    svg.append(s("title", {})); svg.lastChild.textContent = label;
    box.append(h("div", {class: "spark", "data-series": key},
      h("div", {class: "top"}, h("span", {class: "label", title: key}, label),
        h("span", {class: "now"}, fmt(col.length ? col[col.length - 1] : null, unit), " ",
          h("span", {class: "mut"}, "peak " + fmt(peak, unit)))),
      svg,
      h("div", {class: "axis"}, h("span", {}, clock(t0)), h("span", {}, "scale 0–" + fmt(max, unit)), h("span", {}, clock(t1)))));
  }
  target.replaceChildren(box);
}

function renderStrip(target, tl) {
  const t = tl.t;
  if (!t.length) { target.replaceChildren(); return; }
  const t1 = t[t.length - 1], t0 = Math.min(t[0], t1 - WINDOW_S), span = Math.max(1, t1 - t0);
  const svg = s("svg", {viewBox: "0 0 900 10", preserveAspectRatio: "none", role: "img"});
  const seen = new Set();
  let i = 0;
  while (i < t.length) {
    const c = tl.cause[i] || "none";
    let j = i + 1;
    while (j < t.length && (tl.cause[j] || "none") === c && t[j] - t[j - 1] < 2.5) j++;
    const x0 = ((t[i] - t0) / span) * 900, x1 = j < t.length ? ((t[j] - t0) / span) * 900 : 900;
    if (c !== "none") {
      seen.add(c);
      svg.append(s("rect", {class: causeClass(c), x: x0.toFixed(1), y: 0, width: Math.max(1, x1 - x0).toFixed(1), height: 10}));
    }
    i = j;
  }
  const legend = h("div", {class: "legend"}, h("span", {class: "mut"}, "verdict over time:"),
    seen.size ? CAUSE_ORDER.concat([...seen].filter(c => !CAUSES[c])).filter(c => seen.has(c)).map(c =>
      h("span", {}, h("i", {class: causeClass(c)}), causeName(c))) : h("span", {}, "not stalled"));
  target.replaceChildren(svg, legend);
}

// ---- the verdict -------------------------------------------------------------------------------
function whoList(who) {
  who = who || {};
  const items = [];
  for (const d of arr(who.devices)) {
    items.push(h("li", {}, "device ", h("code", {}, String(d.name)),
      d.volume_id ? [" (", h("code", {}, String(d.volume_id)), ")"] : null));
  }
  for (const c of arr(who.containers)) {
    items.push(h("li", {}, "container ", h("code", {}, String(c.name || c.id || "?")),
      c.runtime ? " (" + c.runtime + (c.id ? " " + String(c.id).slice(0, 12) : "") + ")" : null,
      typeof c.d_threads === "number" ? ", " + c.d_threads + " in D" : null));
  }
  for (const g of arr(who.groups)) {
    const w = arr(g.wchans).map(x => String(x.wchan) + " ×" + x.threads).join(", ");
    items.push(h("li", {}, "group ", h("code", {}, String(g.group)),
      typeof g.d_threads === "number" ? ", " + g.d_threads + " in D" : null,
      w ? [" waiting in ", h("code", {}, w)] : null));
  }
  return items.length ? h("ul", {class: "who"}, items) : null;
}

function renderCause(c) {
  return h("div", {class: "cause", "data-cause": c.cause},
    h("div", {class: "head"}, causeName(c.cause), " ", ioTag(c.io), " ",
      c.severity ? h("span", {class: "tag sev-" + c.severity}, c.severity) : null,
      h("span", {class: "mut"}, typeof c.since_seconds === "number" ? " for " + seconds(c.since_seconds) : "")),
    c.summary ? h("div", {}, c.summary) : null,
    table(arr(c.evidence), [
      ["signal", e => h("code", {}, String(e.signal))],
      ["subject", e => e.subject, "name"],
      ["value", e => fmt(e.value, e.unit), "num"],
      ["threshold", e => fmt(e.threshold, e.unit), "num"],
    ], "no evidence listed"),
    whoList(c.who));
}

function renderVerdict(v) {
  const box = $("verdict");
  box.className = "verdict " + (v.stalled ? (v.io ? "io" : "notio") : "ok");
  box.dataset.stalled = v.stalled ? "true" : "false";
  box.dataset.cause = String(v.cause);
  box.dataset.io = v.io ? "true" : "false";
  const line = $("verdict-line");
  if (!v.stalled) {
    line.replaceChildren(h("span", {class: "what"}, "Not stalled"));
  } else {
    line.replaceChildren(h("span", {class: "what"}, "Stalled: " + causeName(v.cause)), " ", ioTag(v.io),
      h("span", {class: "mut"}, " since " + clock(v.since_unix) +
        (typeof v.since_seconds === "number" ? " (" + seconds(v.since_seconds) + ")" : "")));
  }
  $("verdict-summary").textContent = v.summary || "";
  const notio = $("verdict-notio");
  if (v.stalled && !v.io) {
    notio.hidden = false;
    notio.textContent = "Not I/O: the disks are not what is slow. It is " + (CAUSES[v.cause] || String(v.cause)) + ".";
  } else {
    notio.hidden = true;
    notio.textContent = "";
  }
  $("verdict-incident").replaceChildren(v.incident
    ? h("div", {}, "Incident ", h("a", {href: incidentHref(v.incident)}, String(v.incident)), " is being recorded.")
    : []);
  $("causes").replaceChildren(...arr(v.causes).map(renderCause));
}

function dstateTable(rows, withStacks) {
  const cols = [
    ["thread", d => h("code", {}, String(d.comm)), "name"],
    ["pid / tid", d => d.pid === d.tid ? String(d.pid) : d.pid + " / " + d.tid, "num"],
    ["group", d => d.group, "name"],
    ["waiting in", d => d.wchan ? h("code", {}, String(d.wchan)) : "–", "name"],
    ["in D", d => seconds(d.seconds), "num"],
    ["container", d => d.container ? String(d.container.name || String(d.container.id || "").slice(0, 12)) : (d.kernel_thread ? "(kernel thread)" : "–"), "name"],
  ];
  const t = table(rows, cols, "no thread in D state");
  if (!withStacks) return t;
  const stacks = rows.filter(d => d.stack).map(d =>
    h("details", {}, h("summary", {}, "stack of ", h("code", {}, String(d.comm)), " (" + d.pid + " / " + d.tid + ")"),
      h("pre", {}, String(d.stack))));
  return h("div", {}, t, stacks);
}

// The containers the verdict names: its `containers` list when the API gives one, otherwise the
// containers of its causes and of the threads in D.
function containerRows(v) {
  if (Array.isArray(v.containers)) return v.containers;
  const by = new Map();
  const add = (c, dthreads) => {
    if (!c) return;
    const key = String(c.id || c.name);
    const row = by.get(key) || {id: c.id, name: c.name, runtime: c.runtime, d_threads: 0, causes: new Set()};
    row.d_threads = Math.max(row.d_threads, dthreads || 0);
    by.set(key, row);
    return row;
  };
  for (const c of arr(v.causes)) for (const k of arr((c.who || {}).containers)) { const r = add(k, k.d_threads); r.causes.add(c.cause); }
  const counted = new Map();
  for (const d of arr(v.dstate)) if (d.container) { const k = String(d.container.id || d.container.name); counted.set(k, (counted.get(k) || 0) + 1); add(d.container, 0); }
  for (const [k, n] of counted) { const r = by.get(k); r.d_threads = Math.max(r.d_threads, n); }
  return [...by.values()].map(r => Object.assign(r, {causes: [...r.causes].join(", ")}))
    .sort((a, b) => b.d_threads - a.d_threads);
}

function containersTable(rows, empty) {
  const cols = [
    ["container", c => h("code", {}, String(c.name || "–")), "name"],
    ["runtime", c => c.runtime || "–"],
    ["id", c => c.id ? h("code", {}, String(c.id).slice(0, 12)) : "–"],
  ];
  const numeric = [
    ["d_threads", "in D", "count"], ["read_bytes_per_second", "read", "bytes/s"],
    ["write_bytes_per_second", "write", "bytes/s"], ["iops", "IOPS", ""], ["psi_io_some", "I/O pressure", "ratio"],
    ["psi_cpu_some", "CPU pressure", "ratio"], ["psi_memory_some", "mem pressure", "ratio"],
  ];
  for (const [k, label, unit] of numeric) if (rows.some(r => k in r)) cols.push([label, c => fmt(c[k], unit), "num"]);
  if (rows.some(r => r.causes)) cols.push(["named by", c => c.causes || "–"]);
  return table(rows, cols, empty);
}

// ---- incidents ----------------------------------------------------------------------------------
function duration(i) { return typeof i.duration_seconds === "number" ? seconds(i.duration_seconds) : "–"; }

function renderIncidents(list) {
  const rows = arr(list.incidents);
  $("incidents").replaceChildren(table(rows, [
    ["started", i => h("a", {href: incidentHref(i.id)}, stamp(i.start_unix))],
    ["lasted", i => i.open ? h("strong", {}, duration(i) + ", ongoing") : duration(i), "num"],
    ["cause", i => h("span", {}, h("i", {class: causeClass(i.cause)}), " " + arr(i.causes).concat(i.causes ? [] : [i.cause]).map(causeName).join(", "))],
    ["summary", i => i.summary, "name"],
  ], "no incident recorded since the agent started"));
}

let openIncident = null;   // id shown now
let incidentData = null;   // its last record
function wantedIncident() {
  const m = location.hash.match(/^#incident\/(.+)$/);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch (e) { return null; }
}

function renderIncident(rec) {
  const sec = $("incident");
  const tl = rec.timeline || {};
  const itl = {t: arr(tl.t_unix), stalled: arr(tl.stalled), cause: arr(tl.cause), series: tl.series || {}};
  const peaks = Object.entries(rec.peaks || {});
  // Verdict changes only: one row per change of the active causes, not one per second.
  const changes = [];
  for (const v of arr(rec.verdicts)) {
    const key = arr(v.causes).join(",") || String(v.cause);
    if (!changes.length || changes[changes.length - 1].key !== key) changes.push({key, v});
  }
  const sparks = h("div", {});
  renderSparks(sparks, itl, false);
  const strip = h("div", {class: "strip"});
  renderStrip(strip, itl);
  sec.replaceChildren(
    h("a", {class: "close", href: "#"}, "close"),
    h("h2", {}, "Incident ", h("code", {}, String(rec.id))),
    h("p", {}, (arr(rec.causes).length ? arr(rec.causes) : [rec.cause]).map((c, i) =>
        [i ? ", " : "", h("strong", {}, causeName(c)), " ", ioTag(IO_CAUSES.includes(c))]),
      " from " + stamp(rec.start_unix) + " " + (rec.open ? "— ongoing, " + duration(rec) + " so far" : "to " + stamp(rec.end_unix) + " (" + duration(rec) + ")")),
    rec.summary ? h("p", {}, rec.summary) : null,
    arr(rec.missing).length ? h("div", {class: "missing"}, h("h3", {}, "Missing from this record"),
      h("ul", {}, arr(rec.missing).map(m => h("li", {}, String(m))))) : null,
    h("h3", {}, "Verdicts over time"),
    strip,
    table(changes.slice(-100), [
      ["from", c => clock(c.v.t_unix)],
      ["causes", c => arr(c.v.causes).map(causeName).join(", ") || causeName(c.v.cause)],
      ["summary", c => c.v.summary, "name"],
    ], "no verdicts recorded"),
    h("h3", {}, "Peaks"),
    table(peaks, [["signal", p => h("code", {}, p[0])], ["peak", p => fmt(p[1], UNIT_OF[p[0]]), "num"]], "no peaks"),
    h("h3", {}, "Threads in D (with kernel stacks)"),
    dstateTable(arr(rec.dstate), true),
    h("h3", {}, "Containers"),
    containersTable(arr(rec.containers), "no container recorded"),
    h("h3", {}, "Disks"),
    table(arr(rec.disks), [
      ["disk", d => h("code", {}, String(d.name))], ["volume", d => d.volume_id || "–"],
      ["util", d => fmt(d.utilisation, "ratio"), "num"], ["await", d => fmt(d.await_seconds, "seconds"), "num"],
      ["queue", d => fmt(d.queue, ""), "num"], ["IOPS", d => fmt(d.iops, ""), "num"],
      ["throughput", d => fmt(d.bytes_per_second, "bytes/s"), "num"],
      ["stalled", d => fmt(d.stalled_seconds, "seconds"), "num"],
    ], "no disk recorded"),
    h("h3", {}, "EBS"),
    table(arr(rec.ebs), [
      ["volume", e => h("code", {}, String(e.volume_id))], ["type", e => e.type || "–"],
      ["burst balance", e => fmt(e.balance_percent, "percent"), "num"],
      ["empty in", e => e.seconds_to_empty === null || e.seconds_to_empty === undefined ? "not draining" : seconds(e.seconds_to_empty), "num"],
    ], "no EBS volume on this node"),
    h("h3", {}, "Signals during the incident"),
    sparks);
  sec.dataset.incident = String(rec.id);
  sec.hidden = false;
}

async function refreshIncident(force) {
  const want = wantedIncident();
  const sec = $("incident");
  if (!want) { openIncident = null; incidentData = null; sec.hidden = true; sec.replaceChildren(); return; }
  // A closed incident never changes: fetch it once.
  if (!force && want === openIncident && incidentData && !incidentData.open) return;
  try {
    const rec = await getJSON("api/v1/incidents/" + encodeURIComponent(want));
    if (wantedIncident() !== want) return;
    const first = openIncident !== want;
    openIncident = want; incidentData = rec;
    renderIncident(rec);
    if (first) sec.scrollIntoView({block: "start"});
  } catch (e) {
    openIncident = want; incidentData = null;
    sec.hidden = false;
    sec.replaceChildren(h("a", {class: "close", href: "#"}, "close"),
      h("h2", {}, "Incident ", h("code", {}, want)), h("p", {class: "missing"}, "Cannot load it: " + e.message));
  }
}

// ---- the loop -----------------------------------------------------------------------------------
let lastOk = 0;
function setStatus(ok, err) {
  const st = $("status");
  if (ok) {
    lastOk = Date.now();
    document.body.dataset.state = "ok";
    st.className = "mut";
    st.textContent = "updated " + clock(lastOk / 1000);
  } else {
    document.body.dataset.state = lastOk ? "stale" : "error";
    st.className = "stale";
    st.textContent = "agent not answering (" + err + ")" +
      (lastOk ? "; data below is " + seconds((Date.now() - lastOk) / 1000) + " old" : "");
  }
}

function section(id, fn) {
  try { fn(); } catch (e) { $(id).replaceChildren(h("p", {class: "missing"}, "cannot show this: " + e.message)); }
}

async function refresh() {
  const [v, tl, inc] = await Promise.all([
    getJSON("api/v1/verdict"),
    getJSON("api/v1/timeline?seconds=" + timelineSeconds()),
    getJSON("api/v1/incidents"),
  ]);
  timeline.fetchedAt = Date.now();
  section("verdict-line", () => renderVerdict(v));
  section("sparks", () => { mergeTimeline(tl); renderStrip($("strip"), timeline); renderSparks($("sparks"), timeline, true); });
  section("dstate", () => {
    const rows = arr(v.dstate);
    $("dstate-title").textContent = "Threads in D state (" + rows.length + (rows.length >= 50 ? "+, longest first)" : ")");
    $("dstate").replaceChildren(dstateTable(rows, false));
  });
  section("containers", () => $("containers").replaceChildren(containersTable(containerRows(v), "no container named by the verdict")));
  section("incidents", () => renderIncidents(inc));
  await refreshIncident(false);
}

// One request set at a time: the next starts REFRESH_MS after the last one ended, so a slow
// agent gets fewer requests, never a pile of them. Hidden tabs do not poll.
let timer = null, busy = false;
async function tick() {
  clearTimeout(timer);
  if (busy) return;
  if (document.hidden) { timer = setTimeout(tick, REFRESH_MS); return; }
  busy = true;
  try {
    await refresh();
    setStatus(true);
  } catch (e) {
    setStatus(false, e.message || String(e));
  } finally {
    busy = false;
    timer = setTimeout(tick, REFRESH_MS);
  }
}
$("host").textContent = location.host;
document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
window.addEventListener("hashchange", () => { refreshIncident(true); });
tick();
