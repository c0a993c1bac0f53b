// The relay console: everything through the public API, like any client. Jobs are a window
// of one page from GET /v1/jobs (newest first, by creation), kept live over /client.js: an
// update to a row in the window redraws it, a new job that belongs on the first page goes on
// top and the oldest row leaves, so the page never holds more than PAGE rows. Providers and
// subscriptions are read every few seconds. With API keys, the key is asked for once and
// exchanged for a session token (kept in this tab, renewed before it expires); the key and
// the session only ever travel in headers.
import { subscribe } from "/client.js";

const $ = (id) => document.getElementById(id);
const config = JSON.parse($("relay-config").textContent);
const PAGE = 25;
const REFRESH_MS = 3000;
const STREAM_TOKEN_TTL = 900; // seconds: a stream token is only checked when a stream opens
const STATES = ["queued", "running", "succeeded", "failed", "canceled"];
const CANCELLABLE = new Set(["jobstatus"]); // the schemas whose providers can cancel a job

const view = { offset: 0, total: 0, provider: "", state: "", topic: "", external_id: "" };
const shown = new Map(); // job id -> job, for the rows of the window
let drawerJob = null;
let drawerReload = null;
const openDeliveries = new Set(); // subscription ids whose deliveries are unfolded
const notes = new Map(); // subscription id -> what its last button press answered

// -- small helpers -------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node[name] = value;
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) node.append(child);
  }
  return node;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function percent(progress) {
  return `${Math.round(progress * 100)}%`;
}

function badge(state) {
  return el("span", { className: `state ${state}` }, state);
}

class Problem extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error;
  }
}

// -- access: an API key exchanged for a session --------------------------------------------

const access = { session: JSON.parse(sessionStorage.getItem("relay.session") || "null"),
                 asking: null, renewal: null };

function sessionLive() {
  return access.session && access.session.expires_at - Date.now() / 1000 > 5;
}

async function signedIn() {
  if (!config.keys || sessionLive()) return;
  access.asking ??= askForKey().finally(() => { access.asking = null; });
  await access.asking;
}

function askForKey() {
  const dialog = $("sign-in");
  $("sign-in-error").hidden = true;
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => {
    $("sign-in-form").onsubmit = async (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      try {
        keep(await post("/v1/sessions", key));
      } catch (problem) {
        $("sign-in-error").textContent = problem.status === 401
          ? "That key is not one of this relay's API keys." : problem.message;
        $("sign-in-error").hidden = false;
        return;
      }
      $("api-key").value = "";
      dialog.close();
      resolve();
    };
  });
}

async function post(path, bearer) {
  const response = await fetch(path, { method: "POST", cache: "no-store",
                                       headers: { Authorization: `Bearer ${bearer}` } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Problem(response.status, body);
  return body;
}

function keep(session) {
  access.session = session;
  sessionStorage.setItem("relay.session", JSON.stringify(session));
  $("sign-out").hidden = false;
  clearTimeout(access.renewal);
  const left = session.expires_at * 1000 - Date.now();
  access.renewal = setTimeout(renew, Math.max(1000, left - Math.min(120_000, left / 3)));
}

async function renew() {
  try {
    keep(await post("/v1/sessions", access.session.token));
  } catch (problem) {
    if (problem.status === 401) forget();
    else access.renewal = setTimeout(renew, 10_000); // the relay is away: try again soon
  }
}

function forget() {
  access.session = null;
  sessionStorage.removeItem("relay.session");
  clearTimeout(access.renewal);
}

async function api(path, { method = "GET", body } = {}) {
  await signedIn();
  const headers = body ? { "content-type": "application/json" } : {};
  if (config.keys) headers.Authorization = `Bearer ${access.session.token}`;
  const response = await fetch(path, { method, headers, cache: "no-store",
                                       body: body ? JSON.stringify(body) : undefined });
  if (response.status === 401 && config.keys) {
    forget(); // the key was removed, or the session lapsed while the tab slept
    return api(path, { method, body });
  }
  const answer = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new Problem(response.status, answer);
  return answer;
}

// -- jobs: a window of one page, kept live ---------------------------------------------------

function bar(job) {
  const progress = el("td", { className: "progress-col" });
  const track = el("div", { className: "bar" }, el("span"));
  let label;
  if (job.progress != null) {
    label = percent(job.progress);
  } else if (job.state === "succeeded") {
    label = "done";
  } else if (job.terminal) {
    track.classList.add("none"); // failed or canceled with no progress known: nothing to fill
    label = "—";
  } else {
    track.classList.add("indeterminate");
    label = "…";
  }
  progress.title = job.progress != null ? label : "progress not reported";
  progress.append(el("div", { className: "progress" }, track, el("span", { className: "pct" }, label)));
  return progress;
}

function barWidth(job) {
  if (job.progress != null) return `${job.progress * 100}%`;
  if (job.state === "succeeded") return "100%";
  return job.terminal ? "0%" : "";
}

function resultCell(job) {
  const td = el("td", { className: "col-result" });
  if (job.error) {
    td.className += " error";
    td.textContent = job.error.code;
    td.title = job.error.message || "";
    return td;
  }
  const [link] = outputLinks(job.output);
  if (link) td.append(el("a", { href: link[1], target: "_blank", rel: "noopener" }, "output"));
  return td;
}

function row(job) {
  const tr = el("tr", { className: job.state, tabIndex: 0,
                        dataset: { id: job.id, provider: job.provider, state: job.state } },
    el("td", {}, job.provider),
    el("td", { className: "col-schema" }, job.schema),
    el("td", { className: "mono" }, job.external_id),
    el("td", {}, badge(job.state)),
    el("td", { className: "col-stage" }, job.stage ?? ""),
    bar(job),
    resultCell(job),
    el("td", { className: "col-time", title: job.created_at }, time(job.created_at)));
  tr.setAttribute("aria-label", `job ${job.external_id}`);
  return tr;
}

function draw(job, old) {
  const tr = row(job);
  const span = tr.querySelector(".bar span");
  if (old) {
    span.style.width = old.querySelector(".bar span").style.width;
    old.replaceWith(tr);
  }
  // Set after insertion, so the bar slides from where it was.
  requestAnimationFrame(() => { span.style.width = barWidth(job); });
  return tr;
}

function rowOf(id) {
  return $("jobs").querySelector(`tr[data-id="${CSS.escape(id)}"]`);
}

async function loadJobs() {
  const params = new URLSearchParams({ limit: PAGE, offset: view.offset });
  for (const name of ["provider", "state", "topic", "external_id"]) {
    if (view[name]) params.set(name, view[name]);
  }
  const page = await api(`/v1/jobs?${params}`);
  // The stream may have brought a job's newer version while the page was on its way.
  const streamed = new Map(shown);
  shown.clear();
  const body = $("jobs");
  body.replaceChildren();
  for (const listed of page.jobs) {
    const newer = streamed.get(listed.id);
    const job = newer && newer.version > listed.version ? newer : listed;
    shown.set(job.id, job);
    body.append(draw(job));
  }
  view.total = page.total;
  paged();
}

function paged() {
  const first = shown.size ? view.offset + 1 : 0;
  $("page-info").textContent = `${first}–${view.offset + shown.size} of ${view.total}`;
  $("newer").disabled = view.offset === 0;
  $("older").disabled = view.offset + shown.size >= view.total;
  $("empty").hidden = shown.size > 0;
}

function matches(job) {
  return (!view.provider || job.provider === view.provider) &&
    (!view.state || job.state === view.state) &&
    (!view.topic || job.topics.includes(view.topic)) &&
    (!view.external_id || job.external_id === view.external_id);
}

function belongsOnTop(job) {
  if (view.offset !== 0 || !matches(job)) return false;
  if (shown.size < PAGE) return true;
  const oldest = [...shown.values()].at(-1);
  return job.created_at > oldest.created_at;
}

function received(job) {
  const known = shown.get(job.id);
  if (known) {
    if (job.version <= known.version) return;
    shown.set(job.id, job);
    draw(job, rowOf(job.id));
  } else if (belongsOnTop(job)) {
    insert(job);
  }
  if (drawerJob === job.id) reloadDrawerSoon();
  countsSoon();
}

let countsTimer = null;

function countsSoon() {
  // The counts are the providers' (GET /v1/providers), read again shortly after jobs move.
  countsTimer ??= setTimeout(() => {
    countsTimer = null;
    loadProviders().catch(console.warn);
  }, 1000);
}

function insert(job) {
  const body = $("jobs");
  const later = [...body.children].find((tr) => shown.get(tr.dataset.id).created_at < job.created_at);
  shown.set(job.id, job);
  body.insertBefore(draw(job), later ?? null);
  view.total += 1;
  while (shown.size > PAGE) {
    const last = body.lastElementChild;
    shown.delete(last.dataset.id);
    last.remove();
  }
  paged();
}

function setConnection(state, text) {
  const status = $("connection");
  status.className = `connection ${state}`;
  status.textContent = text || state;
}

function follow() {
  const topics = config.providers.map((name) => `provider:${name}`);
  const params = new URLSearchParams();
  for (const topic of topics) params.append("topic", topic);
  subscribe(`/v1/events?${params}`, {
    onJob: received,
    onOpen: () => setConnection("live"),
    onReset: (reason) => console.info(`relay: resynchronising from the current state (${reason})`),
    onError: ({ retrying, message }) => setConnection(
      retrying ? "reconnecting" : "disconnected", retrying ? "reconnecting…" : message),
    // A short-lived token, asked for again whenever the stream is refused for an old one.
    token: async () => (await api("/v1/tokens", { method: "POST",
                                                   body: { topics, ttl: STREAM_TOKEN_TTL } })).token,
  });
}

function filtersChanged() {
  view.provider = $("filter-provider").value;
  view.state = $("filter-state").value;
  view.topic = $("filter-topic").value.trim();
  view.external_id = $("filter-external").value.trim();
  view.offset = 0;
  loadJobs().catch(shownProblem);
}

// -- a job's drawer ----------------------------------------------------------------------------

function outputLinks(output, path = "", found = []) {
  if (typeof output === "string" && /^https?:\/\//.test(output)) found.push([path || "output", output]);
  else if (output && typeof output === "object" && found.length < 20) {
    for (const [key, value] of Object.entries(output)) {
      outputLinks(value, path ? `${path}.${key}` : key, found);
    }
  }
  return found;
}

async function openDrawer(id) {
  drawerJob = id;
  $("drawer").hidden = false;
  $("drawer-message").hidden = true;
  document.body.classList.add("drawer-open");
  await loadDrawer();
}

function closeDrawer() {
  drawerJob = null;
  $("drawer").hidden = true;
  document.body.classList.remove("drawer-open");
}

function reloadDrawerSoon() {
  clearTimeout(drawerReload);
  drawerReload = setTimeout(() => loadDrawer().catch(shownProblem), 250);
}

async function loadDrawer() {
  const id = drawerJob;
  const [job, history] = await Promise.all([api(`/v1/jobs/${encodeURIComponent(id)}`),
                                            api(`/v1/jobs/${encodeURIComponent(id)}/history`)]);
  if (drawerJob !== id) return;
  $("drawer-title").textContent = `${job.provider} · ${job.external_id}`;
  $("drawer-body").replaceChildren(...drawerParts(job, history.events).filter(Boolean));
}

function drawerParts(job, events) {
  const facts = [["state", badge(job.state)], ["schema", job.schema],
                 ["provider status", job.provider_status], ["stage", job.stage],
                 ["progress", job.progress == null ? "not reported" : percent(job.progress)],
                 ["created", time(job.created_at)], ["started", time(job.started_at)],
                 ["finished", time(job.finished_at)], ["topics", job.topics.join(" ")],
                 ["relay id", el("span", { className: "mono" }, job.id)]];
  return [
    el("dl", { className: "facts" },
       facts.filter(([, value]) => value).map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)])),
    cancelButton(job),
    job.error && errorBlock(job.error),
    linksBlock(job.output),
    el("h3", {}, "History"),
    el("ol", { className: "timeline", id: "timeline" }, events.map(timelineEntry)),
    dataBlock("provider data", job.provider_data),
    dataBlock("metadata", job.metadata),
  ];
}

function cancelButton(job) {
  if (job.terminal || !CANCELLABLE.has(job.schema)) return null;
  const button = el("button", { id: "cancel", type: "button", className: "danger" }, "cancel job");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      received(await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" }));
      await loadDrawer();
    } catch (problem) {
      shownProblem(problem);
      button.disabled = false;
    }
  });
  return el("div", { className: "actions" }, button);
}

function errorBlock(error) {
  return el("div", { className: "error-block" },
    el("strong", {}, error.code), error.message && el("p", {}, error.message),
    error.fix && el("p", { className: "fix" }, el("b", {}, "fix: "), error.fix),
    error.retryable != null && el("p", { className: "muted" },
                                  error.retryable ? "retryable" : "not retryable"));
}

function linksBlock(output) {
  const links = outputLinks(output);
  if (!links.length) return null;
  return el("div", {}, el("h3", {}, "Output"), el("ul", { className: "links" },
    links.map(([name, url]) => el("li", {}, el("a", { href: url, target: "_blank", rel: "noopener" }, name)))));
}

function timelineEntry(event) {
  const job = event.job;
  return el("li", { className: job.state },
    el("time", { dateTime: event.received_at }, time(event.received_at)),
    el("span", { className: `source ${event.source}` }, event.source),
    badge(job.state),
    job.progress != null && el("span", { className: "pct" }, percent(job.progress)),
    job.stage && el("span", { className: "muted" }, job.stage));
}

function dataBlock(name, data) {
  if (!data || !Object.keys(data).length) return null;
  return el("details", { open: true }, el("summary", {}, name),
            el("pre", {}, JSON.stringify(data, null, 2)));
}

function shownProblem(problem) {
  if (!drawerJob) {
    console.warn("relay console:", problem);
    return;
  }
  $("drawer-message").textContent = problem.message;
  $("drawer-message").hidden = false;
}

// -- providers ---------------------------------------------------------------------------------

function healthLine(health) {
  switch (health.polling) {
    case "ok": return ["ok", "ok"];
    case "throttled": return ["throttled", `rate-limited until ${time(health.until)}`];
    case "off": return ["off", "not polled (no base_url)"];
    default: return ["unauthorized",
                     `${health.polling.replace("_", " ")} (HTTP ${health.status}) since ${time(health.since)}`];
  }
}

function providerCard(provider) {
  const [kind, text] = healthLine(provider.health);
  const rate = (value) => (value == null ? "—" : value.toFixed(1));
  return el("article", { className: `card ${kind}`, dataset: { provider: provider.name } },
    el("header", {}, el("h3", {}, provider.name), el("span", { className: "muted" }, provider.schema)),
    el("p", { className: `health ${kind}`, title: provider.health.message || "" }, text),
    el("p", { className: "by-state" }, STATES.filter((s) => provider.jobs[s])
      .map((s) => el("span", { className: `state ${s}` }, `${s} ${provider.jobs[s]}`))),
    el("p", { className: "muted rates" },
       el("span", {}, `polls ${rate(provider.per_minute.polls)}/min`),
       el("span", {}, `webhooks ${rate(provider.per_minute.webhooks)}/min`)));
}

async function loadProviders() {
  const { providers } = await api("/v1/providers");
  $("providers").replaceChildren(...providers.map(providerCard));
  const totals = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const provider of providers) for (const s of STATES) totals[s] += provider.jobs[s];
  $("counts").replaceChildren(...STATES.map((s) =>
    el("span", {}, `${s} `, el("b", { dataset: { count: s } }, String(totals[s])))));
}

// -- subscriptions -----------------------------------------------------------------------------

let subscriptionsShown = "";

async function loadSubscriptions() {
  const { subscriptions } = await api("/v1/subscriptions");
  // Redrawn only when something changed, so a button is not replaced under a click.
  const shownNow = JSON.stringify([subscriptions, [...notes], [...openDeliveries]]);
  if (shownNow === subscriptionsShown && !openDeliveries.size) return;
  subscriptionsShown = shownNow;
  const cards = await Promise.all(subscriptions.map(subscriptionCard));
  $("subscriptions").replaceChildren(...cards);
  $("no-subscriptions").hidden = subscriptions.length > 0;
}

async function subscriptionCard(sub) {
  const act = (label, path, body) => el("button", { type: "button", onclick: async (event) => {
    event.target.disabled = true;
    try {
      const answer = await api(`/v1/subscriptions/${sub.id}/${path}`, { method: "POST", body });
      notes.set(sub.id, path === "replay" ? `replayed ${answer.replayed}` : "enabled");
    } catch (problem) {
      notes.set(sub.id, problem.message);
    }
    await loadSubscriptions().catch(console.warn);
  } }, label);
  const note = el("span", { className: "muted note" }, notes.get(sub.id) ?? "");
  const hourAgo = new Date(Date.now() - 3600_000).toISOString();
  const card = el("article", { className: `subscription ${sub.status}`, dataset: { id: sub.id } },
    el("header", {},
       el("span", { className: `sub-status ${sub.status}` }, sub.status),
       el("span", { className: "mono url" }, sub.url)),
    el("p", { className: "muted" }, `topics ${sub.topics.join(" ")} · failures in a row `,
       el("b", { className: "failures" }, String(sub.consecutive_failures))),
    sub.last_error && el("p", { className: "error last-error" }, `last error: ${sub.last_error}`),
    el("div", { className: "actions" },
       sub.enabled && act("replay last hour", "replay", { since: hourAgo }),
       sub.status !== "active" && act("enable", "enable"),
       el("button", { type: "button", onclick: () => toggleDeliveries(sub.id) },
          openDeliveries.has(sub.id) ? "hide deliveries" : "deliveries"),
       note));
  if (openDeliveries.has(sub.id)) card.append(await deliveriesList(sub.id));
  return card;
}

function toggleDeliveries(id) {
  if (!openDeliveries.delete(id)) openDeliveries.add(id);
  loadSubscriptions().catch(console.warn);
}

async function deliveriesList(id) {
  const { deliveries } = await api(`/v1/subscriptions/${id}/deliveries?limit=20`);
  return el("ol", { className: "deliveries" }, deliveries.map((d) => {
    const last = d.attempts.at(-1);
    const outcome = last ? (last.status ? `answered ${last.status}` : last.error) : "not sent yet";
    return el("li", { className: d.status },
      el("span", { className: `sub-status ${d.status}` }, d.status),
      el("span", { className: "mono" }, `${d.job_id} v${d.job_version}`),
      el("span", { className: "muted" }, `${d.attempts.length} attempt${d.attempts.length === 1 ? "" : "s"} · ${outcome}`));
  }));
}

// -- start -------------------------------------------------------------------------------------

async function refreshLoop() {
  await Promise.all([loadProviders(), loadSubscriptions()]).catch(console.warn);
  setTimeout(refreshLoop, REFRESH_MS);
}

function start() {
  for (const name of config.providers) $("filter-provider").add(new Option(name, name));
  for (const id of ["filter-provider", "filter-state"]) $(id).addEventListener("change", filtersChanged);
  for (const id of ["filter-topic", "filter-external"]) $(id).addEventListener("change", filtersChanged);
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); filtersChanged(); });
  $("newer").addEventListener("click", () => {
    view.offset = Math.max(0, view.offset - PAGE);
    loadJobs().catch(shownProblem);
  });
  $("older").addEventListener("click", () => { view.offset += PAGE; loadJobs().catch(shownProblem); });
  $("jobs").addEventListener("click", (event) => {
    const tr = event.target.closest("tr");
    if (tr && !event.target.closest("a")) openDrawer(tr.dataset.id).catch(shownProblem);
  });
  $("jobs").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.dataset.id) openDrawer(event.target.dataset.id).catch(shownProblem);
  });
  $("drawer-close").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDrawer(); });
  $("sign-out").addEventListener("click", () => { forget(); location.reload(); });
  if (config.keys && sessionLive()) keep(access.session);
  signedIn().then(() => {
    loadJobs().catch(shownProblem);
    follow();
    refreshLoop();
  });
}

start();
