"""GET /client.js in headless Chromium against a real relay process: resume across a killed
relay, relay.reset after a store reset, a token refreshed through the callback, and the stop
on 204 without a reconnect loop."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.fanout.wire import RETRY_MS
from tests.browser import page, wait_until
from tests.senders import WEBHOOK_SECRET, post_update
from tests.support import RelayProcess, free_port

__all__ = ["page"]  # the fixture, used by name

pytestmark = pytest.mark.slow

# Installs the client in the page and records what it reports, in order, in window.log.
# With `refresh`, the token callback mints a new subscribe token of that body (the relay is
# open on loopback, as a page's own backend would be for it).
SUBSCRIBE = """async ([url, refresh]) => {
  const { subscribe } = await import("/client.js");
  window.log = []; window.tokenCalls = 0;
  const token = refresh && (async () => {
    window.tokenCalls += 1;
    const answer = await fetch("/v1/tokens", {method: "POST",
      headers: {"content-type": "application/json"}, body: JSON.stringify(refresh)});
    return (await answer.json()).token;
  });
  window.subscription = subscribe(url, {
    onJob: (job) => window.log.push(["job", job.external_id, job.version, job.state]),
    onReset: (reason) => window.log.push(["reset", reason]),
    onError: (error) => window.log.push(["error", error.status, error.error, error.retrying]),
    token,
  });
}"""


def relay_process(tmp_path: Path, store: str) -> RelayProcess:
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nstore = "{store}"\n\n[providers.gen]\n'
                      f'schema = "generation"\nwebhook_secret = "{WEBHOOK_SECRET}"\n')
    return RelayProcess(config, free_port())


@contextlib.contextmanager
def running(process: RelayProcess) -> Iterator[RelayProcess]:
    process.start()
    try:
        yield process
    finally:
        process.stop()


def track(relay: RelayProcess, external_id: str) -> dict[str, Any]:
    answer = httpx.post(f"{relay.url}/v1/jobs",
                        json={"provider": "gen", "external_id": external_id}, timeout=10)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def log(page: Any) -> list[list[Any]]:
    return page.evaluate("window.log")  # type: ignore[no-any-return]


def jobs(page: Any) -> list[list[Any]]:
    return [entry for entry in log(page) if entry[0] == "job"]


def expired(token: str) -> bool:
    payload = token.split(".")[0]
    return time.time() > json.loads(base64.urlsafe_b64decode(payload + "==="))["e"]


def test_client_js_is_an_es_module_any_origin_may_import(tmp_path):
    with running(relay_process(tmp_path, "memory://")) as relay:
        answer = httpx.get(f"{relay.url}/client.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "export function subscribe(url" in answer.text


def test_resumes_across_a_killed_relay_with_nothing_missed_or_repeated(tmp_path, page):
    with running(relay_process(tmp_path, f"sqlite:///{tmp_path}/relay.db")) as relay:
        tracked = track(relay, "resume")
        page.goto(f"{relay.url}/healthz")
        page.evaluate(SUBSCRIBE, [tracked["events_url"], None])
        wait_until(page, lambda: jobs(page), what="the first state")
        relay.kill()
        relay.start()  # same port, same SQLite file: the token and the cursors still hold
        # Stored while the browser was away: it gets them through Last-Event-ID.
        post_update(relay.url, "resume", "PROCESSING", 30)
        post_update(relay.url, "resume", "PROCESSING", 60)
        wait_until(page, lambda: len(jobs(page)) == 3, timeout=30, what="the missed events")
        post_update(relay.url, "resume", "COMPLETED")
        wait_until(page, lambda: page.evaluate("window.subscription.closed"), what="the end")
    assert [entry[2] for entry in jobs(page)] == [1, 2, 3, 4]
    assert jobs(page)[-1][3] == "succeeded"
    assert ["error", None, "disconnected", True] in log(page)  # told while it reconnected


def test_relay_reset_after_the_store_was_reset_then_the_current_state(tmp_path, page):
    with running(relay_process(tmp_path, "memory://")) as relay:
        track(relay, "before")
        page.goto(f"{relay.url}/healthz")
        page.evaluate(SUBSCRIBE, ["/v1/events?topic=provider:gen", None])
        for percent in (20, 40, 60):
            post_update(relay.url, "before", "PROCESSING", percent)
        wait_until(page, lambda: len(jobs(page)) == 4, what="four events")
        relay.kill()
        # A memory store starts empty, with a new cursor epoch: the browser's cursor names
        # no event of the new log, which the relay answers with relay.reset.
        relay.start()
        track(relay, "after")
        wait_until(page, lambda: ["reset", "unknown_cursor"] in log(page), timeout=30,
                   what="relay.reset")
        wait_until(page, lambda: jobs(page)[-1][1] == "after", what="the current state")
    after_reset = log(page)[log(page).index(["reset", "unknown_cursor"]):]
    assert [e for e in after_reset if e[0] != "error"] == [
        ["reset", "unknown_cursor"], ["job", "after", 1, "queued"]]


def test_an_expired_token_is_replaced_through_the_callback_and_events_keep_flowing(
        tmp_path, page):
    with running(relay_process(tmp_path, f"sqlite:///{tmp_path}/relay.db")) as relay:
        job_id = track(relay, "refresh")["job"]["id"]
        short = httpx.post(f"{relay.url}/v1/tokens", json={"jobs": [job_id], "ttl": 1}).json()
        page.goto(f"{relay.url}/healthz")
        page.evaluate(SUBSCRIBE, [f"/v1/jobs/{job_id}/events?token={short['token']}",
                                  {"jobs": [job_id], "ttl": 60}])
        wait_until(page, lambda: jobs(page), what="the first state")
        post_update(relay.url, "refresh", "PROCESSING", 50)
        wait_until(page, lambda: expired(short["token"]), timeout=5, what="the token's expiry")
        # The open stream outlives its token; the reconnect after a restart needs a new one.
        relay.kill()
        relay.start()
        wait_until(page, lambda: page.evaluate("window.tokenCalls") == 1, timeout=30,
                   what="the token callback")
        post_update(relay.url, "refresh", "COMPLETED")
        wait_until(page, lambda: page.evaluate("window.subscription.closed"), what="the end")
    assert [entry[2] for entry in jobs(page)] == [1, 2, 3]
    assert page.evaluate("window.tokenCalls") == 1
    assert not [e for e in log(page) if e[0] == "error" and not e[3]]  # nothing fatal


def test_a_stream_over_before_its_cursor_stops_on_204_without_reconnecting(tmp_path, page):
    with running(relay_process(tmp_path, "memory://")) as relay:
        tracked = track(relay, "over")
        post_update(relay.url, "over", "COMPLETED")
        history = httpx.get(f"{relay.url}/v1/jobs/{tracked['job']['id']}/history").json()
        cursor = history["events"][-1]["cursor"]
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url)
                if "/events" in request.url else None)
        page.goto(f"{relay.url}/healthz")
        page.evaluate(SUBSCRIBE, [f"{tracked['events_url']}&last_event_id={cursor}", None])
        wait_until(page, lambda: page.evaluate("window.subscription.closed"), what="the stop")
        # EventSource's own reconnect would come after the relay's `retry:`; watch past it.
        page.wait_for_timeout(RETRY_MS + 1000)
    # The EventSource, then one fetch asking why it was closed (204: over), then nothing.
    assert len(requests) == 2, requests
    assert log(page) == []
