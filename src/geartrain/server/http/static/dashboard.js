// geard's dashboard: polls the JSON API (every 1.5 s) and redraws. No framework, no build step.
"use strict";

const PAGE = 50;
const state = { offset: 0, q: "", sort: "name", token: sessionStorage.getItem("geard-token") };

function $(id) { return document.getElementById(id); }

async function api(path, options = {}) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({ headers }, options));
  if (response.status === 401) {
    const token = prompt("This server wants a bearer token (--http-token-file):");
    if (token) { state.token = token; sessionStorage.setItem("geard-token", token); }
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error((await response.text()).trim() || response.statusText);
  return response.json();
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function jobLink(td, handle) {
  const a = document.createElement("a");
  a.textContent = handle;
  a.onclick = () => { location.hash = "job=" + encodeURIComponent(handle); };
  td.appendChild(a);
}

function fill(tbody, items, draw) {
  const fresh = document.createElement("tbody");
  for (const item of items) draw(fresh.insertRow(), item);
  tbody.replaceWith(fresh);
}

function drawStatus(status) {
  const s = status.server;
  $("server-line").textContent = `geartrain ${s.version} · pid ${s.pid} · up ${Math.round(s.uptime)} s · ${s.jobs} jobs`;
  $("ready").textContent = s.ready ? "ready" : "not ready";
  $("ready").className = "badge " + (s.ready ? "ok" : "bad");
  $("total-queued").textContent = s.queued;
  $("total-running").textContent = s.running;
  $("total-workers").textContent = s.connections.worker;
  $("total-clients").textContent = s.connections.client + s.connections.http;
  const finished = (s.totals && s.totals.finished) || {};
  $("total-complete").textContent = finished.complete ?? "-";
  $("total-failed").textContent = finished.fail === undefined ? "-" : finished.fail + finished.exception;
  drawThroughput(s.throughput);
  $("function-count").textContent = `(${status.total})`;
  const last = Math.min(status.offset + status.functions.length, status.total);
  $("page").textContent = status.total ? `${status.offset + 1}–${last} of ${status.total}` : "none";
  $("prev").disabled = status.offset === 0;
  $("next").disabled = last >= status.total;
  const tbody = document.querySelector("#functions tbody");
  fill(tbody, status.functions, (row, f) => {
    row.dataset.function = f.name;
    if (f.queued || f.running) row.className = "busy";
    cell(row, f.name, "text name");
    cell(row, f.waiting.high, "high");
    cell(row, f.waiting.normal, "normal");
    cell(row, f.waiting.low, "low");
    cell(row, f.running, "running");
    cell(row, f.workers, "workers");
    cell(row, f.oldest.toFixed(1), "oldest");
    cell(row, f.rate, "rate");
    const done = f.finished || {};
    cell(row, done.complete ?? "-", "complete");
    cell(row, done.fail ?? "-", "fail");
    cell(row, done.exception ?? "-", "exception");
  });
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function drawThroughput(history) {
  const svg = $("throughput");
  if (!history.length) { svg.innerHTML = ""; return; }
  const values = history.map(h => h[1]);
  const max = Math.max(1, ...values);
  const step = 300 / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(58 - 56 * v / max).toFixed(1)}`).join(" ");
  svg.innerHTML = `<polyline points="${points}"></polyline>`;
  $("rate-now").textContent = values[values.length - 1];
}

function drawWorkers(data) {
  $("worker-count").textContent = `(${data.total})`;
  fill(document.querySelector("#workers tbody"), data.workers, (row, w) => {
    cell(row, w.id);
    cell(row, w.client_id, "text");
    cell(row, w.address + (w.tls ? " (TLS " + (w.subject || "") + ")" : ""), "text");
    cell(row, w.functions.join(" "), "text");
    const td = cell(row, w.running.length ? "" : (w.sleeping ? "asleep" : "idle"), "text");
    for (const job of w.running) { jobLink(td, job.handle); td.append(" (" + job.function + ") "); }
  });
}

function drawFailures(data) {
  fill(document.querySelector("#failures tbody"), data.failures.slice(0, 20), (row, f) => {
    cell(row, new Date(f.when * 1000).toLocaleTimeString());
    cell(row, f.function, "text");
    cell(row, f.handle, "text");
    cell(row, f.result);
    cell(row, f.detail, "text");
  });
}

async function showJob(handle) {
  const box = $("job");
  $("job-handle").value = handle;
  try {
    const job = await api("/api/jobs/" + encodeURIComponent(handle));
    box.innerHTML = "";
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(job, null, 2);
    box.appendChild(pre);
    if (job.state !== "running") {
      const button = document.createElement("button");
      button.textContent = "cancel this job";
      button.onclick = async () => {
        try { await api("/api/jobs/" + encodeURIComponent(handle), { method: "DELETE" }); showJob(handle); }
        catch (e) { box.append(" " + e.message); }
      };
      box.appendChild(button);
    }
  } catch (e) {
    box.textContent = e.message;
  }
}

async function refresh() {
  const query = new URLSearchParams({ offset: state.offset, limit: PAGE, sort: state.sort, q: state.q });
  try {
    const [status, workers, failures] = await Promise.all([
      api("/api/status?" + query), api("/api/workers?limit=100"), api("/api/failures")]);
    drawStatus(status);
    drawWorkers(workers);
    drawFailures(failures);
  } catch (e) {
    $("updated").textContent = "update failed: " + e.message;
  }
  const match = location.hash.match(/^#job=(.+)$/);
  if (match) showJob(decodeURIComponent(match[1]));
}

let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { state.q = $("search").value; state.offset = 0; refresh(); }, 250);
});
$("sort").addEventListener("change", () => { state.sort = $("sort").value; state.offset = 0; refresh(); });
$("prev").onclick = () => { state.offset = Math.max(0, state.offset - PAGE); refresh(); };
$("next").onclick = () => { state.offset += PAGE; refresh(); };
$("job-form").addEventListener("submit", (event) => {
  event.preventDefault();
  location.hash = "job=" + encodeURIComponent($("job-handle").value.trim());
});
window.addEventListener("hashchange", refresh);

refresh();
setInterval(refresh, 1500);
