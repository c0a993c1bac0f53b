// relay's browser client: follow jobs over server-sent events.
// An ES module with no dependencies, served at GET /client.js.
//
//   import { subscribe } from "https://relay.example.com/client.js";
//   const subscription = subscribe(tracked.events_url, {
//     onJob: (job) => render(job),               // every state, in order, none twice
//     onReset: (reason) => {},                   // the relay lost our place; current state follows
//     onError: ({ status, error, message, retrying }) => {},
//     onOpen: () => {},                          // the stream is open (again)
//     token: () => fetchFreshToken(),            // optional: a new subscribe token (or a Promise)
//   });
//   subscription.close();
//
// The browser's EventSource resends Last-Event-ID by itself after a dropped connection. What
// it cannot do is told apart here: an answer other than 200 closes an EventSource for good
// (readyState CLOSED) without saying which. So a closed stream is asked once more with fetch
// to learn the status: 204 means the job ended before our cursor (stop), 401 an expired
// token (ask `token()` for a fresh one and reopen from the last cursor, sent as
// ?last_event_id= since a new EventSource cannot send the header), 429/5xx or no answer a
// passing trouble (reopen later), anything else a refusal (onError, stop).

const SINGLE_JOB = /\/v1\/jobs\/[^/]+\/events$/;
const RETRY_MS = 3000; // what the relay's `retry:` asks of EventSource's own reconnects

export function subscribe(url, options = {}) {
  const {
    onJob = () => {},
    onReset = () => {},
    onError = () => {},
    onOpen = () => {},
    token = null,
    retryMs = RETRY_MS,
  } = options;
  const target = new URL(url, globalThis.location?.href);
  const singleJob = SINGLE_JOB.test(target.pathname);
  let lastEventId = target.searchParams.get("last_event_id");
  let source = null;
  let timer = null;
  let closed = false;
  let refreshing = false; // a fresh token was asked for and has not opened a stream yet

  function streamUrl() {
    const next = new URL(target);
    if (lastEventId) next.searchParams.set("last_event_id", lastEventId);
    return next.href;
  }

  function open() {
    if (closed) return;
    source = new EventSource(streamUrl());
    source.addEventListener("job.updated", received);
    source.addEventListener("relay.reset", (event) => onReset(JSON.parse(event.data).reason));
    source.onopen = () => { refreshing = false; onOpen(); };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) refused();
      else onError({ status: null, error: "disconnected", message: "reconnecting", retrying: true });
    };
  }

  function received(event) {
    if (event.lastEventId) lastEventId = event.lastEventId;
    const job = JSON.parse(event.data);
    onJob(job);
    // The relay ends a single-job stream after its terminal state; reconnecting would only
    // hear 204, so the stream is closed here instead.
    if (singleJob && job.terminal) close();
  }

  async function refused() {
    source.close();
    if (closed) return;
    const answer = await probe();
    if (closed) return;
    if (answer.status === 204) close();
    else if (answer.status === 401 && token && !refreshing) refresh();
    else if (passing(answer.status)) retryLater(answer);
    else fail(answer);
  }

  async function probe() {
    const abort = new AbortController();
    try {
      const response = await fetch(streamUrl(), {
        headers: { Accept: "text/event-stream" }, cache: "no-store", signal: abort.signal,
      });
      const envelope = response.ok ? null : await response.json().catch(() => null);
      return { status: response.status, error: envelope?.error ?? null,
               message: envelope?.message ?? "" };
    } catch (problem) {
      return { status: null, error: "unreachable", message: String(problem) };
    } finally {
      abort.abort(); // a 200 here is a live stream: it was only asked for its status
    }
  }

  function passing(status) {
    return status === null || status === 200 || status === 429 || status >= 500;
  }

  function retryLater(answer) {
    onError({ ...answer, retrying: true });
    timer = setTimeout(open, retryMs);
  }

  function fail(answer) {
    onError({ ...answer, retrying: false });
    close();
  }

  async function refresh() {
    refreshing = true;
    try {
      target.searchParams.set("token", await token());
    } catch (problem) {
      fail({ status: 401, error: "token_refresh_failed", message: String(problem) });
      return;
    }
    open();
  }

  function close() {
    closed = true;
    clearTimeout(timer);
    source?.close();
  }

  if (token && !target.searchParams.has("token")) refresh();
  else open();
  return { close, get closed() { return closed; } };
}
