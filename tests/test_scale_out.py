"""Scale-out on Redis: several schedulers share the polling through leases, an instance that
dies hands its jobs over, and a subscriber behind the retained log is told so.

Real Redis, real simulated providers over HTTP, real relay processes where a death is the
point. Leases last 10 s at least in a relay process, so the takeover test takes about that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from relay.config import Settings
from relay.fanout.resume import CURSOR_EXPIRED
from relay.ingest.providers import ProviderClients
from relay.ingest.recorder import Recorder
from relay.polling.leases import MIN_TTL
from relay.polling.scheduler import Scheduler
from relay.runtime.metrics import Metrics
from relay.runtime.server import serving, serving_in_thread
from relay.settings import parse_settings
from relay.sim import JobStatusProvider, jobstatus_timeline
from relay.store import open_store
from tests.browser import opened_page, wait_until
from tests.senders import signed
from tests.support import (
    RelayProcess,
    SSEEvent,
    SSEStream,
    current_jobs,
    eventually,
    free_port,
    gen_config,
    make_settings,
    redis_url,
    running_relay,
    sse,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEY = "sim-api-key"
FAST = {"poll_interval": 0.05, "poll_max_interval": 0.2}


class Tagged:
    """A simulated provider behind `/<tag>/…`: each relay instance is given its own base URL,
    so every poll says which instance made it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state  # the server signals shutdown through it
        self.polls: list[tuple[str, str, float]] = []  # (tag, provider job id, when)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            tag, _, rest = scope["path"].lstrip("/").partition("/")
            scope = {**scope, "path": f"/{rest}", "raw_path": f"/{rest}".encode()}
            job = parse_qs(scope["query_string"].decode()).get("jobId", [""])[0]
            self.polls.append((tag, job, time.monotonic()))
        await self.app(scope, receive, send)

    def pollers(self, job: str, after: float = 0.0) -> set[str]:
        return {tag for tag, polled, at in self.polls if polled == job and at > after}


# -- an instance that dies hands its jobs over ---------------------------------------------

def write_config(tmp_path: Path, store: str, provider_url: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(f"""
[server]
store = "{store}"
[providers.jobs]
schema = "jobstatus"
base_url = "{provider_url}/${{RELAY_TAG}}"
api_key = "{KEY}"
poll_interval = {FAST["poll_interval"]}
poll_max_interval = {FAST["poll_max_interval"]}
""")
    return path


async def drain(stream: SSEStream) -> list[SSEEvent]:
    """Every event the stream received until its connection ended."""
    events = []
    with contextlib.suppress(StopAsyncIteration):
        while True:
            events.append(await stream.next(timeout=5))
    return events


async def until_terminal(stream: SSEStream, jobs: set[str]) -> list[SSEEvent]:
    """Events until each of `jobs` (relay ids) had its terminal one."""
    events, open_jobs = [], set(jobs)
    while open_jobs:
        event = await stream.next(timeout=MIN_TTL + 10)
        events.append(event)
        if event.data["terminal"]:
            open_jobs.discard(event.data["id"])
    return events


def versions(events: list[SSEEvent]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for event in events:
        seen[event.data["id"]].append(event.data["version"])
    return seen


async def test_a_killed_instance_s_jobs_are_taken_over_and_resuming_subscribers_miss_nothing(
        tmp_path):
    provider = JobStatusProvider(KEY)
    tagged = Tagged(provider.app)
    with serving_in_thread(tagged) as provider_url:
        config = write_config(tmp_path, redis_url(), provider_url)
        instances = {tag: RelayProcess(config, free_port(), env={"RELAY_TAG": tag}).start()
                     for tag in ("a", "b")}
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = {tag: await stack.enter_async_context(
                    httpx.AsyncClient(base_url=relay.url, timeout=10))
                    for tag, relay in instances.items()}
                streams = {tag: await stack.enter_async_context(
                    sse(client, "/v1/events?topic=provider:jobs"))
                    for tag, client in clients.items()}
                # Each job runs for about 5 s: past the death, not past the takeover.
                externals = [provider.create_job(jobstatus_timeline(step=1.0))
                             for _ in range(8)]
                ids = {}
                for index, external in enumerate(externals):
                    answer = await clients["ab"[index % 2]].post(
                        "/v1/jobs", json={"provider": "jobs", "external_id": external})
                    ids[external] = answer.json()["job"]["id"]
                await eventually(lambda: all(tagged.pollers(e) for e in externals))

                # Every job is polled by one instance; the one polling more of them dies.
                holders = {e: tagged.pollers(e) for e in externals}
                assert all(len(tags) == 1 for tags in holders.values()), holders
                held = Counter(next(iter(tags)) for tags in holders.values())
                victim = max(held, key=lambda tag: held[tag])
                survivor = "b" if victim == "a" else "a"
                orphans = [e for e in externals if holders[e] == {victim}]
                instances[victim].kill()
                killed_at = time.monotonic()

                before = await drain(streams[victim])
                async with sse(clients[survivor], "/v1/events?topic=provider:jobs",
                               last_event_id=before[-1].id) as resumed:
                    after = await until_terminal(resumed, set(ids.values()))
                live = await until_terminal(streams[survivor], set(ids.values()))
        finally:
            for relay in instances.values():
                relay.stop()

    # The survivor polled the orphans once their leases lapsed, and only then; nobody else
    # ever polled a job another instance held.
    for external in orphans:
        assert tagged.pollers(external) == {victim, survivor}
        assert tagged.pollers(external, after=killed_at) == {survivor}
    for external in set(externals) - set(orphans):
        assert tagged.pollers(external) == {survivor}
    # Every job completed, and the resumed stream continued the dead one exactly.
    finals = {event.data["id"]: event.data for event in after if event.data["terminal"]}
    assert {job["state"] for job in finals.values()} == {"succeeded"}
    received = versions(before + after)
    assert received == {job_id: list(range(1, finals[job_id]["version"] + 1))
                        for job_id in ids.values()}
    assert versions(live) == received  # what the survivor's own subscriber saw live


# -- two schedulers split the jobs -----------------------------------------------------------

TTL = 1.5


@contextlib.asynccontextmanager
async def scheduler(tag: str, settings: Settings, polls: list[tuple[str, str]]
                    ) -> AsyncIterator[Scheduler]:
    """One instance's poll scheduler on its own Redis connection; its polls go in `polls`."""
    store = open_store(settings.server.store)
    await store.open()

    async def note(request: httpx.Request) -> None:
        polls.append((tag, request.url.params["jobId"]))

    metrics = Metrics()
    async with httpx.AsyncClient(event_hooks={"request": [note]}, timeout=5) as http:
        clients = ProviderClients(settings.providers, http)
        clients.open()
        polling = Scheduler(settings.providers, store, Recorder(store, metrics), clients,
                            metrics, lease_ttl_seconds=TTL)
        await polling.start()
        try:
            yield polling
        finally:
            await polling.stop()
            await store.close()


def pollers(polls: list[tuple[str, str]], start: int = 0) -> dict[str, set[str]]:
    by_job: dict[str, set[str]] = defaultdict(set)
    for tag, job in polls[start:]:
        by_job[job].add(tag)
    return by_job


async def track(polling: Scheduler, externals: list[str]) -> None:
    provider = polling.providers["jobs"]
    for external in externals:
        await polling.recorder.track(provider, external)


async def test_two_schedulers_on_one_redis_split_the_jobs_instead_of_both_polling_all():
    provider = JobStatusProvider(KEY)
    async with serving(provider.app) as provider_url:
        settings = parse_settings({"server": {"store": redis_url()}, "providers": {"jobs": {
            "schema": "jobstatus", "base_url": provider_url, "api_key": KEY, **FAST}}})

        def new_jobs(count: int) -> list[str]:  # running for longer than the test
            return [provider.create_job(jobstatus_timeline(step=60)) for _ in range(count)]

        polls: list[tuple[str, str]] = []
        first, second = new_jobs(5), new_jobs(5)
        async with contextlib.AsyncExitStack() as a_stack:
            a = await a_stack.enter_async_context(scheduler("a", settings, polls))
            await track(a, first)
            await eventually(lambda: set(first) <= pollers(polls).keys())
            async with scheduler("b", settings, polls) as b:
                b_started, mark = time.monotonic(), len(polls)
                await track(b, second)
                # Past two lease lifetimes: held leases are renewed, not lost to the other.
                await eventually(lambda: set(first + second) <= pollers(polls, mark).keys()
                                 and time.monotonic() > b_started + 2 * TTL)
                shared = pollers(polls, mark)
                assert all(len(tags) == 1 for tags in shared.values()), shared
                assert all(shared[job] == {"a"} for job in first)  # A held them first
                assert a.pollers["jobs"].jobs.keys().isdisjoint(b.pollers["jobs"].jobs.keys())

                await a_stack.aclose()  # a clean stop releases A's leases at once
                mark = len(polls)
                await eventually(lambda: set(first + second) <= pollers(polls, mark).keys(),
                                 timeout=3 * TTL)
                assert set(b.pollers["jobs"].jobs) == set(first + second)
                assert all(tags == {"b"} for tags in pollers(polls, mark).values())


# -- a cursor older than what Redis keeps ------------------------------------------------------

async def test_a_cursor_older_than_retention_gets_relay_reset_then_the_current_state():
    # The hub's own cursor is trimmed away during the burst too: the live event at the end
    # arrives only because the hub goes on from the newest event.
    async with running_relay(make_settings(redis_url(retention="1"))) as relay:
        early = await relay.webhook({"id": "early", "status": "PROCESSING"})
        expired, early_id = early.json()["cursor"], early.json()["job_id"]
        await relay.webhook({"id": "early", "status": "COMPLETED"})

        async def progress(name: str) -> None:
            for percent in range(100):  # MAXLEN ~ trims whole nodes: well past one's worth
                answer = await relay.webhook({"id": name, "status": "PROCESSING",
                                              "progress_percent": percent})
                assert answer.status_code == 202

        await asyncio.gather(*(progress(name) for name in ("x", "y", "z")))
        current = await current_jobs(relay.client, "gen")

        async with sse(relay.client, "/v1/events?topic=provider:gen",
                       last_event_id=expired) as stream:
            await stream.reset_then(CURSOR_EXPIRED, current)
            await relay.webhook({"id": "x", "status": "COMPLETED"})
            live = await stream.next()
            assert (live.data["external_id"], live.data["state"]) == ("x", "succeeded")

        async with sse(relay.client, f"/v1/jobs/{early_id}/events",
                       last_event_id=expired) as stream:
            reset, final = await stream.take(2)
            assert reset.event == "relay.reset"
            assert final.data == current[early_id]
            assert await stream.closed()


ROWS = """() => [...document.querySelectorAll('#jobs tr')].map(tr => [
    tr.children[2].textContent, tr.dataset.state, tr.querySelector('.bar span').style.width])"""


def post(url: str, payload: dict[str, Any]) -> None:
    body, headers = signed(payload)
    assert httpx.post(f"{url}/hooks/gen", content=body, headers=headers).status_code == 202


def test_the_dashboard_resumes_from_an_expired_cursor_by_itself(tmp_path):
    config = gen_config(tmp_path, redis_url(retention="1"))
    shown, other = (RelayProcess(config, free_port()).start() for _ in range(2))
    try:
        with opened_page() as page:
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(shown.url + "/")
            post(other.url, {"id": "early", "status": "PROCESSING"})
            # No progress reported yet: the bar is drawn as unknown, not as 0 %.
            wait_until(page, lambda: page.evaluate(ROWS) == [["early", "running", ""]])
            shown.kill()  # the browser keeps its Last-Event-ID ...
            wait_until(page, lambda: page.inner_text("#connection") != "live")
            for percent in range(1, 61):  # ... which these push out of what Redis keeps
                post(other.url, {"id": "late", "status": "PROCESSING",
                                 "progress_percent": percent})
            post(other.url, {"id": "early", "status": "COMPLETED"})
            shown.start()
            assert wait_until(page, lambda: sorted(page.evaluate(ROWS)) == [
                ["early", "succeeded", "100%"], ["late", "running", "60%"]], timeout=30)
            assert page.inner_text("#connection") == "live"
            assert any("resynchronising" in line and "cursor_expired" in line
                       for line in console), console
    finally:
        shown.stop()
        other.stop()
