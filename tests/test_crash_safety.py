"""Crash safety with real processes: a relay killed with SIGKILL in the middle of a burst of
webhooks has, once restarted on the same store (the SQLite file, or the Redis), every webhook
it had acknowledged, and replays them over SSE; none that it refused is there.

A 202 is only sent after the commit (SQLite: synchronous=FULL; Redis: the script call has
returned), so what was acknowledged is stored whatever the moment of the kill. Deliveries in
flight at the kill have no answer: they may or may not be stored, as their sender would retry
them anyway.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest

from relay.models import Job, Source
from relay.store.sqlite import SQLiteStore
from tests.senders import signed
from tests.support import RelayProcess, eventually, free_port, redis_url, sse

pytestmark = pytest.mark.anyio

SECRET = "crash-test-secret"
GOOD = 300  # signed deliveries, one job each
BAD = 60  # deliveries signed with the wrong secret, mixed in
KILL_AFTER = 120  # acknowledged deliveries before the SIGKILL
CLIENTS = 32  # concurrent connections


def write_config(tmp_path: Path, store: str | None = None) -> Path:
    config = tmp_path / "relay.toml"
    store = store or f"sqlite:///{tmp_path}/relay.db"
    config.write_text(f'[server]\nstore = "{store}"\n\n'
                      f'[providers.lipsync]\nschema = "generation"\n'
                      f'webhook_secret = "{SECRET}"\n')
    return config


async def deliver(client: httpx.AsyncClient, job: str, secret: str) -> int | None:
    """The status the relay answered, or None when it died before answering."""
    body, headers = signed({"id": job, "status": "PROCESSING", "progress_percent": 50}, secret)
    try:
        response = await client.post("/hooks/lipsync", content=body, headers=headers)
    except httpx.HTTPError:
        return None
    return response.status_code


async def burst_then_kill(relay: RelayProcess, jobs: dict[str, str]) -> dict[str, int | None]:
    """Sends the deliveries from CLIENTS concurrent connections and SIGKILLs the relay once
    KILL_AFTER are acknowledged. Deliveries not sent by then are left out of the outcomes."""
    outcomes: dict[str, int | None] = {}
    queue = list(jobs.items())
    killed = asyncio.Event()

    async def sender(client: httpx.AsyncClient) -> None:
        while queue and not killed.is_set():
            job, secret = queue.pop(0)
            outcomes[job] = await deliver(client, job, secret)

    # A client (a pool) per sender: httpx's pool slows down with many connections in it.
    tls = ssl.create_default_context()  # made once: it costs milliseconds per client
    clients = [httpx.AsyncClient(base_url=relay.url, timeout=10, verify=tls)
               for _ in range(CLIENTS)]
    try:
        sending = [asyncio.create_task(sender(client)) for client in clients]
        await eventually(lambda: list(outcomes.values()).count(202) >= KILL_AFTER, timeout=30)
        relay.kill()
        killed.set()
        await asyncio.gather(*sending)
    finally:
        for client in clients:
            await client.aclose()
    return outcomes


async def replayed_jobs(client: httpx.AsyncClient, cursor: str, expected: set[str]) -> set[str]:
    """The external ids in the SSE replay of the provider's topic after `cursor`, read until
    every expected one has come (or the stream goes quiet for 5 s)."""
    seen: set[str] = set()
    async with sse(client, "/v1/events?topic=provider:lipsync", last_event_id=cursor) as stream:
        while not expected <= seen:
            try:
                event = await stream.next(timeout=5)
            except (TimeoutError, StopAsyncIteration):
                break
            seen.add(event.data["external_id"])
    return seen


async def stored_jobs(client: httpx.AsyncClient) -> set[str]:
    ids: set[str] = set()
    while True:
        page = (await client.get("/v1/jobs", params={"provider": "lipsync", "limit": 200,
                                                     "offset": len(ids)})).json()
        ids |= {job["external_id"] for job in page["jobs"]}
        if not page["jobs"] or len(ids) >= page["total"]:
            return ids


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_sigkill_mid_burst_loses_no_acknowledged_webhook_and_keeps_no_refused_one(
        tmp_path, kind):
    config = write_config(tmp_path, redis_url() if kind == "redis" else None)
    good = {f"good-{i}": SECRET for i in range(GOOD)}
    bad = {f"bad-{i}": "not-the-secret" for i in range(BAD)}
    jobs: dict[str, str] = {}
    for i in range(GOOD):  # one badly signed delivery after every five good ones
        jobs[f"good-{i}"] = SECRET
        if i % (GOOD // BAD) == GOOD // BAD - 1:
            jobs[f"bad-{i // (GOOD // BAD)}"] = "not-the-secret"

    relay = RelayProcess(config, free_port()).start()
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=10) as client:
            body, headers = signed({"id": "marker", "status": "PENDING"}, SECRET)
            marker = (await client.post("/hooks/lipsync", content=body, headers=headers)
                      ).json()["cursor"]
        outcomes = await burst_then_kill(relay, jobs)
    finally:
        relay.kill()

    acknowledged = {job for job, status in outcomes.items() if status in (200, 202)}
    assert len(acknowledged) >= KILL_AFTER
    assert acknowledged <= set(good)
    assert 401 in outcomes.values()  # some bad ones were answered before the kill...
    assert all(outcomes.get(job) in (401, None) for job in bad)  # ...and none accepted

    restarted = RelayProcess(config, free_port()).start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as client:
            replayed = await replayed_jobs(client, marker, acknowledged)
            stored = await stored_jobs(client)
    finally:
        restarted.stop()

    assert acknowledged - replayed == set(), "acknowledged webhooks missing from the replay"
    assert acknowledged <= stored
    assert stored & set(bad) == set(), "a refused delivery was stored"
    assert replayed <= set(good)


# -- two writers on one file (a restart that overlaps the old process) --------------------------

def bump(current: Job | None) -> Job:
    job = current or Job(id="job-1", provider="p", schema="generation", external_id="e-1",
                         topics=("job:job-1", "provider:p"))
    return job.replace(version=job.version + 1)


async def test_two_stores_on_one_file_each_build_on_the_others_writes(tmp_path):
    first, second = SQLiteStore(str(tmp_path / "relay.db")), SQLiteStore(str(tmp_path / "relay.db"))
    await first.open()
    await second.open()
    try:
        versions = []
        for store in (first, second, first, second, first):
            applied = await store.apply("p", "e-1", bump, source=Source.WEBHOOK, received_at="t")
            assert applied.job is not None and applied.event is not None
            versions.append((applied.job.version, first.cursors.number(applied.event.cursor)))
        # Neither store answered from a stale memory of the job, nor reused a cursor.
        assert versions == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
        assert [e.job.version for e in await second.history("job-1")] == [1, 2, 3, 4, 5]
    finally:
        await first.close()
        await second.close()


async def test_a_delivery_whose_update_failed_is_not_a_duplicate_when_retried(tmp_path):
    store = SQLiteStore(str(tmp_path / "relay.db"))
    await store.open()

    def broken(current: Job | None) -> Job:
        raise RuntimeError("the update could not be applied")

    try:
        with pytest.raises(RuntimeError):
            await store.apply("p", "e-1", broken, source=Source.WEBHOOK, received_at="t",
                              dedupe_key="p:e-1:msg_1")
        retried = await store.apply("p", "e-1", bump, source=Source.WEBHOOK, received_at="t",
                                    dedupe_key="p:e-1:msg_1")
        assert not retried.duplicate and retried.event is not None
        again = await store.apply("p", "e-1", bump, source=Source.WEBHOOK, received_at="t",
                                  dedupe_key="p:e-1:msg_1")
        assert again.duplicate and again.event is None
    finally:
        await store.close()
