// The relay dashboard: one EventSource on every provider's topic. The stream starts with the
// current state of each job, then sends every change; the browser resumes with Last-Event-ID.
// A resume the relay cannot serve exactly (the events were trimmed away) starts with a
// `relay.reset` event, then the current state of each job: the rows stay, and the snapshot
// is applied over them like any update.
"use strict";

const config = JSON.parse(document.getElementById("relay-config").textContent);
const rows = new Map();          // job id -> <tr>
const jobs = new Map();          // job id -> job
let lastEventId = null;
let source = null;

const $ = (id) => document.getElementById(id);

function setConnection(state, text) {
  const badge = $("connection");
  badge.className = `connection ${state}`;
  badge.textContent = text || state;
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text ?? "";
  return td;
}

function resultCell(job) {
  const td = document.createElement("td");
  if (job.error) {
    td.className = "error";
    td.textContent = `${job.error.code}${job.error.message ? ": " + job.error.message : ""}`;
    return td;
  }
  const output = job.output || {};
  const url = output.outputUrl || output.url || output.image_url ||
    (output.scenes && output.scenes[0] && output.scenes[0].image_url);
  if (url) {
    const link = document.createElement("a");
    link.href = url; link.textContent = "output"; link.target = "_blank"; link.rel = "noopener";
    td.appendChild(link);
  }
  return td;
}

function render(job) {
  const tr = document.createElement("tr");
  tr.dataset.id = job.id;
  tr.dataset.provider = job.provider;
  tr.dataset.state = job.state;
  tr.className = job.state;
  const state = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = `state ${job.state}`;
  badge.textContent = job.state;
  state.appendChild(badge);
  const progress = document.createElement("td");
  progress.innerHTML = '<div class="bar"><span></span></div>';
  const percent = job.progress == null ? (job.terminal ? 100 : 0) : job.progress * 100;
  progress.title = `${Math.round(percent)}%`;
  tr.append(cell(job.provider), cell(job.schema), cell(job.external_id, "mono"), state,
            cell(job.stage), progress, resultCell(job),
            cell(new Date(job.updated_at).toLocaleTimeString()));
  // Set the width after insertion so the bar animates from its previous value.
  requestAnimationFrame(() => { progress.querySelector("span").style.width = `${percent}%`; });
  return tr;
}

function upsert(job) {
  const known = jobs.get(job.id);
  if (known && known.version >= job.version) return;
  jobs.set(job.id, job);
  const tr = render(job);
  const old = rows.get(job.id);
  if (old) {
    tr.querySelector(".bar span").style.width = old.querySelector(".bar span").style.width;
    old.replaceWith(tr);
  } else {
    insertNewestFirst(tr, job);
    addProviderOption(job.provider);
  }
  rows.set(job.id, tr);
  applyFilter(tr);
  updateCounts();
}

function insertNewestFirst(tr, job) {
  const body = $("jobs");
  for (const other of body.children) {
    if ((jobs.get(other.dataset.id).created_at || "") < (job.created_at || "")) {
      body.insertBefore(tr, other);
      return;
    }
  }
  body.appendChild(tr);
}

function addProviderOption(name) {
  const select = $("filter-provider");
  if ([...select.options].some((o) => o.value === name)) return;
  select.add(new Option(name, name));
}

function applyFilter(tr) {
  const provider = $("filter-provider").value;
  const state = $("filter-state").value;
  const hidden = (provider && tr.dataset.provider !== provider) ||
                 (state && tr.dataset.state !== state);
  tr.classList.toggle("hidden", Boolean(hidden));
}

function updateCounts() {
  const counts = {};
  for (const job of jobs.values()) counts[job.state] = (counts[job.state] || 0) + 1;
  $("counts").innerHTML = ["queued", "running", "succeeded", "failed", "canceled"]
    .map((s) => `<span>${s} <b data-count="${s}">${counts[s] || 0}</b></span>`).join("");
  $("empty").hidden = jobs.size > 0;
}

function connect() {
  const params = new URLSearchParams();
  for (const topic of config.topics) params.append("topic", topic);
  params.set("token", config.token);
  // A new EventSource cannot send Last-Event-ID itself; the relay also reads it from the query.
  if (lastEventId) params.set("last_event_id", lastEventId);
  source = new EventSource(`/v1/events?${params}`);
  source.onopen = () => setConnection("live");
  source.addEventListener("job.updated", (event) => {
    lastEventId = event.lastEventId || lastEventId;
    upsert(JSON.parse(event.data));
  });
  source.addEventListener("relay.reset", (event) => {
    const reason = JSON.parse(event.data).reason;
    console.info(`relay: resynchronising from the current state (${reason})`);
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (the server refused or was away too long): start again ourselves.
      setConnection("reconnecting", "reconnecting…");
      setTimeout(connect, 2000);
    } else {
      setConnection("reconnecting", "reconnecting…");
    }
  };
}

for (const id of ["filter-provider", "filter-state"]) {
  $(id).addEventListener("change", () => rows.forEach(applyFilter));
}
for (const name of config.providers) addProviderOption(name);
updateCounts();
if (config.token) {
  connect();
} else {
  setConnection("disconnected", "API keys are configured: the dashboard needs open access");
}
