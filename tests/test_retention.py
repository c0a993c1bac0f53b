"""Retention through the real relay: a job past `server.retention` is gone from the API, one
still running or finished within it stays, a resume from before the sweep gets `relay.reset`,
the relay sweeps on its own, and the store's size stays flat over many cycles of jobs.

Real uvicorn, real SQLite files and the real Redis. Where a test needs a job "finished long
ago" it moves the sweep's clock, not the machine's: the cutoff falls between two jobs'
finishing moments read from the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import relay.store.retention as retention_module
from relay.app import create_app
from relay.config import Settings
from relay.fanout.resume import CURSOR_EXPIRED
from relay.models import Job
from relay.runtime.server import serving
from relay.store import finished, open_store
from relay.store.redis import RedisStore
from relay.store.retention import Retention
from relay.store.sqlite import SQLiteStore
from tests.consumers import Consumer, serving_consumer, subscribe
from tests.support import Relay, current_jobs, eventually, make_settings, redis_url, sse

pytestmark = pytest.mark.anyio

STORES = ["sqlite", "redis"]


def store_url(kind: str, tmp_path: Path) -> str:
    return redis_url() if kind == "redis" else f"sqlite:///{tmp_path}/relay.db"


@contextlib.asynccontextmanager
async def relay_with_retention(settings: Settings) -> AsyncIterator[tuple[Relay, Retention]]:
    """The real app on a real server, and its retention, to sweep now."""
    app = create_app(settings)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield Relay(url, app.state.store, client), app.state.retention


async def report(relay: Relay, external_id: str, status: str = "COMPLETED") -> dict[str, Any]:
    """A signed webhook about `external_id`: its answer (job_id, cursor)."""
    answer = await relay.webhook({"id": external_id, "status": status})
    assert answer.status_code == 202, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def job(relay: Relay, job_id: str) -> dict[str, Any]:
    answer = await relay.client.get(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def moment(job: dict[str, Any]) -> float:
    when = finished(Job.from_dict(job))
    assert when is not None
    return when


async def finished_apart(relay: Relay, first: str, second: str
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two jobs finished one after the other (their finishing moments differ)."""
    early = await report(relay, first)
    early_job = await job(relay, early["job_id"])
    await eventually(lambda: time.time() > moment(early_job) + 0.01)
    late = await report(relay, second)
    return early, late


def sweep_between(retention: Retention, early: dict[str, Any], late: dict[str, Any]) -> None:
    """Move the sweep's clock so that its cutoff falls between the two jobs' moments."""
    cutoff = (moment(early) + moment(late)) / 2
    retention.clock = lambda: cutoff + retention.keep


@pytest.mark.parametrize("kind", STORES)
async def test_a_job_past_retention_is_gone_and_unfinished_or_recent_ones_stay(kind, tmp_path):
    async with relay_with_retention(make_settings(store_url(kind, tmp_path), retention=60)
                                    ) as (relay, retention):
        running = await report(relay, "running", "PROCESSING")
        old, recent = await finished_apart(relay, "old", "recent")
        sweep_between(retention, await job(relay, old["job_id"]),
                      await job(relay, recent["job_id"]))

        assert await retention.sweep() == 1

        gone = await relay.client.get(f"/v1/jobs/{old['job_id']}")
        assert gone.status_code == 404 and gone.json()["error"] == "not_found"
        assert (await relay.client.get(f"/v1/jobs/{old['job_id']}/events")).status_code == 404
        for kept in (running, recent):
            assert (await job(relay, kept["job_id"]))["id"] == kept["job_id"]
        listed = (await relay.client.get("/v1/jobs", params={"provider": "gen"})).json()
        assert {j["external_id"] for j in listed["jobs"]} == {"running", "recent"}
        assert listed["total"] == 2
        assert await retention.sweep() == 0


@pytest.mark.parametrize("kind", STORES)
async def test_a_resume_from_before_the_sweep_gets_relay_reset_then_the_current_state(
        kind, tmp_path):
    async with relay_with_retention(make_settings(store_url(kind, tmp_path), retention=60)
                                    ) as (relay, retention):
        before = (await report(relay, "running", "PROCESSING"))["cursor"]
        old, recent = await finished_apart(relay, "old", "recent")
        sweep_between(retention, await job(relay, old["job_id"]),
                      await job(relay, recent["job_id"]))
        assert await retention.sweep() == 1
        current = await current_jobs(relay.client, "gen")

        async with sse(relay.client, "/v1/events?topic=provider:gen",
                       last_event_id=before) as stream:
            await stream.reset_then(CURSOR_EXPIRED, current)
            await report(relay, "running")
            live = await stream.next()
            assert (live.data["external_id"], live.data["state"]) == ("running", "succeeded")

        # From the swept job's own (last) event on, nothing after it is missing: no reset.
        async with sse(relay.client, "/v1/events?topic=provider:gen",
                       last_event_id=old["cursor"]) as stream:
            events = await stream.take(2)
            assert [(e.event, e.data["external_id"]) for e in events] == [
                ("job.updated", "recent"), ("job.updated", "running")]


@pytest.mark.parametrize("kind", STORES)
async def test_the_relay_sweeps_on_its_own_every_interval(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(retention_module, "EVERY", 0.2)
    async with relay_with_retention(make_settings(store_url(kind, tmp_path), retention=1)
                                    ) as (relay, _):
        running = await report(relay, "running", "PROCESSING")
        old = await report(relay, "old")

        async def gone() -> bool:
            answer = await relay.client.get(f"/v1/jobs/{old['job_id']}")
            return answer.status_code == 404

        await eventually(gone, timeout=20)
        assert (await job(relay, running["job_id"]))["state"] == "running"


async def test_retention_zero_keeps_everything(tmp_path):
    async with relay_with_retention(make_settings(store_url("sqlite", tmp_path), retention=0)
                                    ) as (relay, retention):
        old = await report(relay, "old")
        retention.clock = lambda: time.time() + 10 * 365 * 86400
        assert await retention.sweep() == 0
        assert (await job(relay, old["job_id"]))["state"] == "succeeded"


# -- the store's size stays flat -----------------------------------------------------------------

JOBS_PER_CYCLE = 100
CYCLES = 10


async def sqlite_size(store: SQLiteStore) -> int:
    """The database and its WAL, after a checkpoint (what the file system holds)."""
    with sqlite3.connect(store.path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return sum(p.stat().st_size for p in Path(store.path).parent.glob(
        Path(store.path).name + "*"))


async def redis_size(store: RedisStore) -> int:
    """The bytes Redis holds under the store's prefix (MEMORY USAGE of every key)."""
    keys = [key async for key in store.redis.scan_iter(match=f"{store.prefix}*", count=1000)]
    async with store.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        usages = await pipe.execute()
    return sum(usage or 0 for usage in usages)


async def no_pending_deliveries(relay: Relay) -> bool:
    return (await relay.store.outbox.outbox_stats()).pending == 0


async def store_size(relay: Relay) -> int:
    if isinstance(relay.store, SQLiteStore):
        return await sqlite_size(relay.store)
    assert isinstance(relay.store, RedisStore)
    # Redis lets a webhook's dedupe key go by itself, when its TTL (the retention, here
    # 1 s) runs out: measured before, the size would swing with how many are still due.
    await eventually(lambda: no_dedupe_keys(relay.store), timeout=10)
    return await redis_size(relay.store)


async def no_dedupe_keys(store: RedisStore) -> bool:
    return not [key async for key in store.redis.scan_iter(match=f"{store.prefix}dedupe:*")]


@pytest.mark.parametrize("kind", STORES)
async def test_the_store_stays_the_same_size_over_many_cycles_of_jobs(kind, tmp_path):
    consumer = Consumer()
    settings = make_settings(store_url(kind, tmp_path), retention=1, allow_private_targets=True)
    async with serving_consumer(consumer) as hook, relay_with_retention(settings) as (
            relay, retention):
        await subscribe(relay, hook)  # each event makes a delivery, swept with its job
        sizes = []
        for cycle in range(CYCLES):
            names = [f"c{cycle}-{n}" for n in range(JOBS_PER_CYCLE)]
            for status in ("PROCESSING", "COMPLETED"):
                await asyncio.gather(*(report(relay, name, status) for name in names))
            # Measured once the cycle's deliveries are sent, not while a worker still holds
            # some in flight: the size a quiet store settles at is what must stay flat.
            await eventually(lambda: no_pending_deliveries(relay), timeout=30)
            done = time.time()
            retention.clock = lambda done=done: done + 1.5  # every job so far is past 1 s
            assert await retention.sweep() == JOBS_PER_CYCLE
            assert (await relay.client.get("/v1/jobs")).json()["total"] == 0
            sizes.append(await store_size(relay))
        assert consumer.delivered(), "the subscription received deliveries meanwhile"
        assert sizes[-1] <= sizes[1] * 1.25, sizes


async def test_an_existing_database_is_upgraded_for_retention_at_open(tmp_path):
    """A database made before retention (no `jobs.finished`, no incremental vacuum) gets
    both when it is opened, and its finished jobs can be swept."""
    url = f"sqlite:///{tmp_path}/old.db"
    async with relay_with_retention(make_settings(url, retention=60)) as (relay, _):
        old = await report(relay, "old")
    with sqlite3.connect(tmp_path / "old.db", isolation_level=None) as conn:
        conn.execute("DROP INDEX jobs_finished")
        conn.execute("ALTER TABLE jobs DROP COLUMN finished")
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    store = open_store(url)
    await store.open()
    try:
        with sqlite3.connect(tmp_path / "old.db") as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert await store.sweep(time.time() + 1, 10) == 1
        assert await store.get(old["job_id"]) is None
    finally:
        await store.close()

