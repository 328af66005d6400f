// fleet's dashboard: reads the API v1 JSON and follows /fleet/v1/events (server-sent events),
// updating what is shown without reloading. Plain JS, no build step, no dependency: see the
// README's "Observe: the dashboard".
"use strict";

const API = "/fleet/v1";
const PAGE = 100;
const KINDS = ["submitted", "desired", "destroyed", "placed", "moved", "unscheduled",
  "unplaceable", "started", "failed", "stopped", "state", "machine-joined", "machine-lost",
  "drained", "undrained", "leader", "resync", "lagged"];

const state = {
  units: new Map(),    // name -> unit (API v1 JSON)
  states: new Map(),   // name -> [unit state (API v1 JSON)]
  machines: new Map(), // id -> machine (API v1 JSON)
  drains: new Map(),   // id -> drained machine (GET /fleet/v1/drain)
  leases: null,        // id -> presence lease (GET /fleet/v1/leases); null: not known
  events: [],          // newest last, at most 1000
  seen: new Set(),     // events already taken in (a reconnect replays the recent ones)
  filter: { name: "", state: "", machine: "", meta: "" },
  page: 0,
};

// ----- talking to fleetd -----

async function api(path, options) {
  const r = await fetch(API + path, Object.assign({ credentials: "same-origin" }, options));
  if (r.status === 404 && (!options || !options.method)) return null;
  const text = await r.text();
  if (!r.ok) {
    let message = text;
    try { message = JSON.parse(text).error.message; } catch (_) { /* not JSON: as is */ }
    throw new Error(`${options && options.method || "GET"} ${path}: ${r.status} ${message}`);
  }
  return text ? JSON.parse(text) : null;
}

// Every item of a paged listing, following nextPageToken.
async function all(path, key) {
  const items = [];
  let token = "";
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(token ? `${path}${sep}nextPageToken=${encodeURIComponent(token)}` : path);
    if (!page) return items;
    items.push(...(page[key] || []));
    if (!page.nextPageToken || page.nextPageToken === token) return items;
    token = page.nextPageToken;
  }
}

function groupStates(list) {
  const m = new Map();
  for (const s of list) {
    if (!m.has(s.name)) m.set(s.name, []);
    m.get(s.name).push(s);
  }
  return m;
}

// The listing being read, if one is: unit refreshes wait for it (they would only compete with
// it for the browser's few connections to the server).
let loading = null;
function loadAll() {
  if (!loading) loading = readAll().finally(() => { loading = null; });
  return loading;
}

async function readAll() {
  try {
    const [units, states, machines, drains, leases] = await Promise.all([
      all("/units", "units"), all("/state", "states"), all("/machines", "machines"), readDrains(),
      readLeases()]);
    state.units = new Map(units.map(u => [u.name, u]));
    state.states = groupStates(states);
    state.machines = new Map(machines.map(m => [m.id, m]));
    state.drains = drains;
    state.leases = leases;
    state.loadedOnce = true;
    showError("");
  } catch (e) { showError(e.message); }
  render();
}

// The drained machines, by id. A fleetd without drain answers 404 (`api` gives null): none.
async function readDrains() {
  const page = await api("/drain");
  return new Map(((page && page.machines) || []).map(d => [d.machineID, d]));
}

// Each machine's presence lease, by id. A fleetd without the route answers 404: null, "not
// known" (shown as a dash).
async function readLeases() {
  const page = await api("/leases");
  return page ? new Map((page.machines || []).map(l => [l.machineID, l])) : null;
}

async function loadMachines() {
  try {
    const [machines, drains, leases] = await Promise.all([
      all("/machines", "machines"), readDrains(), readLeases()]);
    state.machines = new Map(machines.map(m => [m.id, m]));
    state.drains = drains;
    state.leases = leases;
  } catch (e) { showError(e.message); }
  render();
}

// Leases are renewed every few seconds and no event says so: while the machines page is
// shown, they are read again on a timer (one small request).
const LEASE_REFRESH_MS = 2000;
setInterval(async () => {
  if (route().view !== "machines" || document.hidden) return;
  try {
    state.leases = await readLeases();
  } catch (e) { showError(e.message); return; }
  render();
}, LEASE_REFRESH_MS);

// One unit again, after an event about it (a few requests, whatever the cluster's size). Past
// this many units at once (a burst, or the recent events replayed on connecting), one listing
// costs less than a request per unit.
const REFRESH_MAX = 50;
const pendingUnits = new Set();
let unitTimer = null;
function refreshUnit(name) {
  pendingUnits.add(name);
  if (!unitTimer) unitTimer = setTimeout(refreshPending, 100);
}
async function refreshPending() {
  if (loading) await loading;
  unitTimer = null;
  const names = [...pendingUnits];
  pendingUnits.clear();
  if (names.length > REFRESH_MAX) return loadAll();
  await Promise.all(names.map(async name => {
    try {
      const q = encodeURIComponent(name);
      const [u, states] = await Promise.all([api(`/units/${q}`), all(`/state?unitName=${q}`, "states")]);
      if (u) state.units.set(name, u); else state.units.delete(name);
      if (states.length) state.states.set(name, states); else state.states.delete(name);
    } catch (e) { showError(e.message); }
  }));
  render();
}

function follow() {
  const live = document.getElementById("live");
  const es = new EventSource(API + "/events");
  // Read everything once the stream is open (again): the server took its recent events before
  // answering, so the listing holds their effects, and events from now on are live.
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; loadAll(); };
  es.onerror = () => {
    live.textContent = "offline"; live.className = "live off";
    if (!state.loadedOnce) loadAll(); // show what there is, if not live
  };
  const take = msg => {
    let e;
    try { e = JSON.parse(msg.data); } catch (_) { return; }
    const key = `${e.revision}/${e.kind}/${e.unit}/${e.machineID}`;
    if (e.revision && state.seen.has(key)) return;
    state.seen.add(key);
    state.events.push(e);
    if (state.events.length > 1000) {
      const gone = state.events.shift();
      state.seen.delete(`${gone.revision}/${gone.kind}/${gone.unit}/${gone.machineID}`);
    }
    // The recent past replayed on connecting is already in the listing read on `open`.
    if (!e.recent) {
      if (e.kind === "resync" || e.kind === "lagged") loadAll();
      else if (e.kind.startsWith("machine-") || e.kind.endsWith("drained")) loadMachines();
      if (e.unit) refreshUnit(e.unit);
    }
    scheduleRender();
  };
  // Named events reach only listeners of their name, not onmessage.
  for (const k of KINDS) es.addEventListener(k, take);
}

// ----- drawing -----

function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") n.className = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) n.append(c instanceof Node ? c : String(c));
  }
  return n;
}

function showError(message) {
  const p = document.getElementById("error");
  p.textContent = message;
  p.hidden = !message;
}

let renderTimer = null;
function scheduleRender() {
  if (!renderTimer) renderTimer = setTimeout(() => { renderTimer = null; render(); }, 100);
}

function route() {
  const h = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  if (h.startsWith("unit/")) return { view: "unit", name: h.slice(5) };
  return { view: ["machines", "events"].includes(h) ? h : "units" };
}

let drawn = null; // the view whose frame (filters) is on screen
function render() {
  const r = route();
  for (const v of ["units", "machines", "events"]) {
    document.getElementById(`nav-${v}`).className = r.view === v ? "current" : "";
  }
  const main = document.getElementById("main");
  const key = r.view + (r.name || "");
  if (drawn !== key) {
    main.replaceChildren();
    drawn = key;
    if (r.view === "units") main.append(unitsFrame());
  }
  if (r.view === "units") drawUnits();
  else if (r.view === "machines") main.replaceChildren(machinesView());
  else if (r.view === "events") main.replaceChildren(eventsTable(state.events));
  else main.replaceChildren(unitView(r.name));
}

function machineLabel(id) {
  if (!id) return "-";
  const m = state.machines.get(id);
  return `${id.slice(0, 8)}…/${m ? m.primaryIP : "?"}`;
}

function activeOf(name) {
  return (state.states.get(name) || []).map(s => s.systemdActiveState).join(",");
}

function unitMatches(u) {
  const f = state.filter;
  if (f.name && !u.name.includes(f.name)) return false;
  if (f.state && ![u.desiredState, u.currentState, ...activeOf(u.name).split(",")].includes(f.state)) return false;
  if (f.machine) {
    const m = state.machines.get(u.machineID);
    if (!(u.machineID || "").startsWith(f.machine) && !(m && m.primaryIP === f.machine)) return false;
  }
  if (f.meta) {
    const [k, v] = f.meta.split("=");
    const m = state.machines.get(u.machineID);
    if (!m || !m.metadata || m.metadata[k] !== v) return false;
  }
  return true;
}

function unitsFrame() {
  const f = state.filter;
  const input = (key, placeholder) => el("input", {
    id: `filter-${key}`, placeholder, value: f[key],
    oninput: e => { f[key] = e.target.value.trim(); state.page = 0; drawUnits(); },
  });
  const select = el("select", { id: "filter-state", onchange: e => { f.state = e.target.value; state.page = 0; drawUnits(); } },
    ["", "launched", "loaded", "inactive", "active", "failed"].map(s =>
      el("option", s === f.state ? { value: s, selected: "" } : { value: s }, s || "any state")));
  return el("div", {},
    el("div", { class: "filters" }, input("name", "unit name contains"), select,
      input("machine", "machine id or IP"), input("meta", "metadata key=value")),
    el("div", { class: "pager", id: "pager" }),
    el("table", { id: "units" }, el("thead", {}, el("tr", {},
      ["UNIT", "DESIRED", "CURRENT", "ACTIVE", "MACHINE", "HASH", "REASON"].map(h => el("th", {}, h)))),
    el("tbody")));
}

function drawUnits() {
  const rows = [...state.units.values()].filter(unitMatches).sort((a, b) => a.name.localeCompare(b.name));
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  state.page = Math.min(state.page, pages - 1);
  const shown = rows.slice(state.page * PAGE, (state.page + 1) * PAGE);
  const go = d => () => { state.page += d; drawUnits(); };
  document.getElementById("pager").replaceChildren(
    el("button", state.page > 0 ? { onclick: go(-1) } : { disabled: "" }, "‹ prev"),
    `page ${state.page + 1} of ${pages} (${rows.length} of ${state.units.size} units)`,
    el("button", state.page < pages - 1 ? { onclick: go(1) } : { disabled: "" }, "next ›"));
  document.querySelector("#units tbody").replaceChildren(...shown.map(u => {
    const states = state.states.get(u.name) || [];
    const active = activeOf(u.name);
    return el("tr", { "data-unit": u.name },
      el("td", {}, el("a", { href: `#/unit/${encodeURIComponent(u.name)}` }, u.name)),
      el("td", { class: `s-${u.desiredState}` }, u.desiredState),
      el("td", { class: `s-${u.currentState}` }, u.currentState || "-"),
      el("td", { class: `s-${active}` }, active || "-"),
      el("td", { class: "mono", "data-machine": u.machineID || "" }, machineLabel(u.machineID)),
      el("td", { class: "mono" }, states.length ? states[0].hash.slice(0, 7) : "-"),
      el("td", { class: "wrap" }, u.reason || ""));
  }));
}

function machinesView() {
  const count = new Map();
  for (const u of state.units.values()) if (u.machineID) count.set(u.machineID, (count.get(u.machineID) || 0) + 1);
  const rows = [...state.machines.values()].sort((a, b) => a.id.localeCompare(b.id)).map(m =>
    el("tr", { "data-machine": m.id },
      el("td", { class: "mono" }, m.id),
      el("td", {}, m.primaryIP || "-"),
      el("td", { class: "wrap" }, Object.entries(m.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "-"),
      el("td", {}, count.get(m.id) || 0),
      leaseCell(state.leases && state.leases.get(m.id)),
      drainedCell(state.drains.get(m.id))));
  return el("table", { id: "machines" }, el("thead", {}, el("tr", {},
    ["MACHINE", "IP", "METADATA", "UNITS", "LEASE", "DRAINED"].map(h => el("th", {}, h)))),
  el("tbody", {}, rows));
}

// Lease age: each renewal restores the remaining time to the granted TTL, so granted -
// remaining is the time since the last one. Without the granted TTL, the time left is shown.
function leaseCell(l) {
  if (!l) return el("td", { class: "muted lease" }, "—");
  const left = `${l.remaining.toFixed(1)} s left`;
  if (l.granted == null) return el("td", { class: "lease" }, `lease: ${left}`);
  const age = Math.max(0, l.granted - l.remaining);
  return el("td", { class: "lease", title: left },
    `renewed ${age.toFixed(1)} s ago (TTL ${l.granted} s)`);
}

function drainedCell(d) {
  if (!d) return el("td", { class: "muted" }, "no");
  const since = new Date(d.since * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  const left = (d.units || []).length;
  return el("td", { class: "s-drained", title: `drained since ${since}` },
    left ? `drained, ${left} unit(s) left` : "drained");
}

function eventsTable(events) {
  return el("table", { id: "events" }, el("thead", {}, el("tr", {},
    ["TIME", "KIND", "UNIT", "MACHINE", "DETAIL"].map(h => el("th", {}, h)))),
  el("tbody", {}, [...events].reverse().slice(0, 500).map(e => el("tr", { "data-kind": e.kind },
    el("td", { class: "mono" }, e.time), el("td", { class: `s-${e.kind}` }, e.kind),
    el("td", {}, e.unit || "-"), el("td", { class: "mono" }, machineLabel(e.machineID)),
    el("td", { class: "wrap" }, e.detail)))));
}

function unitFile(u) {
  const sections = new Map();
  for (const o of u.options || []) {
    if (!sections.has(o.section)) sections.set(o.section, []);
    sections.get(o.section).push(`${o.name}=${o.value}`);
  }
  return [...sections].map(([s, lines]) => `[${s}]\n${lines.join("\n")}\n`).join("\n");
}

// A unit's recent output (GET /output/NAME): kept by the process supervisor of the machine
// that runs it, so another machine's fleetd answers 404 naming where it is. Asked again at
// most every 2 s while the page is drawn.
const outputCache = new Map(); // name -> { at, lines } or { at, message }
function outputOf(name) {
  const kept = outputCache.get(name);
  if (!kept || Date.now() - kept.at > 2000) {
    outputCache.set(name, Object.assign({}, kept || { message: "…" }, { at: Date.now() }));
    fetch(`${API}/output/${encodeURIComponent(name)}?lines=100`, { credentials: "same-origin" })
      .then(async r => {
        const body = await r.json().catch(() => ({}));
        outputCache.set(name, r.ok ? { at: Date.now(), lines: body.lines || [] }
          : { at: Date.now(), message: (body.error && body.error.message) || `${r.status}` });
        scheduleRender();
      })
      .catch(e => outputCache.set(name, { at: Date.now(), message: e.message }));
  }
  const o = outputCache.get(name);
  return o.lines ? el("pre", { id: "unit-output" }, o.lines.join("\n") || "(no output yet)")
    : el("p", { class: "muted", id: "unit-output" }, o.message);
}

const whyCache = new Map();
function unitView(name) {
  const u = state.units.get(name);
  if (!u) return el("p", {}, `No unit ${name} (destroyed, or not loaded yet).`);
  const set = desired => async () => {
    try {
      await api(`/units/${encodeURIComponent(name)}`, {
        method: "PUT", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ desiredState: desired }),
      });
      refreshUnit(name);
    } catch (e) { showError(e.message); }
  };
  if (!whyCache.has(name)) {
    whyCache.set(name, "…");
    api(`/why/${encodeURIComponent(name)}`).then(a => {
      whyCache.set(name, a && a.units && a.units[0] ? a.units[0].reason : "");
      scheduleRender();
    }).catch(e => whyCache.set(name, e.message));
  }
  const states = state.states.get(name) || [];
  return el("div", { id: "unit" },
    el("h2", {}, name),
    el("p", {}, `desired ${u.desiredState}, current ${u.currentState || "-"}, on `,
      el("span", { class: "mono", id: "unit-machine" }, machineLabel(u.machineID))),
    el("p", {}, el("button", { id: "start", onclick: set("launched") }, "Start"), " ",
      el("button", { id: "stop", onclick: set("loaded") }, "Stop"),
      el("span", { class: "muted" }, "  (needs the write role over TCP)")),
    el("p", {}, "The engine: ", u.reason || whyCache.get(name) || ""),
    el("h3", {}, "Unit file"), el("pre", { id: "unit-file" }, unitFile(u)),
    el("h3", {}, "On each machine"),
    el("table", {}, el("thead", {}, el("tr", {}, ["MACHINE", "LOAD", "ACTIVE", "SUB", "HASH"].map(h => el("th", {}, h)))),
      el("tbody", {}, states.map(s => el("tr", {}, el("td", { class: "mono" }, machineLabel(s.machineID)),
        el("td", {}, s.systemdLoadState), el("td", { class: `s-${s.systemdActiveState}` }, s.systemdActiveState),
        el("td", {}, s.systemdSubState), el("td", { class: "mono" }, s.hash))))),
    el("h3", {}, "Recent output"), outputOf(name),
    el("h3", {}, "Events"), eventsTable(state.events.filter(e => e.unit === name)));
}

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", () => { render(); follow(); });
