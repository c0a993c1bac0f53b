"""One contract, every backend: what the rest of the relay may rely on from a store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay.errors import InvalidCursor
from relay.models import Job, Source, State
from relay.store import JobQuery, Store, open_store
from tests.support import redis_url

pytestmark = pytest.mark.anyio

NOW = "2026-01-01T00:00:00.000Z"


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request, tmp_path) -> AsyncIterator[Store]:
    if request.param == "redis":
        url = redis_url()
    else:
        url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/contract.db"}[
            request.param]
    backend = open_store(url)
    await backend.open()
    yield backend
    await backend.close()


def job(external_id: str, *, provider: str = "p", version: int = 1, state: State = State.QUEUED,
        topics: tuple[str, ...] = ()) -> Job:
    job_id = f"id-{provider}-{external_id}"
    return Job(id=job_id, provider=provider, schema="generation", external_id=external_id,
               state=state, version=version,
               topics=(f"job:{job_id}", f"provider:{provider}", *topics))


def create(new: Job):
    return lambda current: new if current is None else None


def bump(state: State | None = None):
    def change(current: Job | None) -> Job | None:
        assert current is not None
        return current.replace(version=current.version + 1, state=state or current.state)
    return change


async def put(store: Store, new: Job, **kwargs):
    return await store.apply(new.provider, new.external_id, create(new), source=Source.API,
                             received_at=NOW, **kwargs)


async def test_apply_creates_a_job_and_returns_its_event(store):
    applied = await put(store, job("a"))
    assert applied.event is not None and applied.event.job == applied.job
    assert await store.get(applied.job.id) == applied.job
    assert await store.find("p", "a") == applied.job
    assert await store.last_cursor() == applied.event.cursor


async def test_a_change_that_returns_none_makes_no_event(store):
    await put(store, job("a"))
    cursor = await store.last_cursor()
    again = await put(store, job("a"))
    assert again.event is None and again.job == await store.find("p", "a")
    assert await store.last_cursor() == cursor


async def test_a_repeated_dedupe_key_is_a_duplicate_without_calling_change(store):
    await put(store, job("a"), dedupe_key="k1")
    calls = []
    applied = await store.apply("p", "a", lambda cur: calls.append(cur) or None,
                                source=Source.WEBHOOK, received_at=NOW, dedupe_key="k1")
    assert applied.duplicate and applied.event is None and calls == []


async def test_read_since_returns_exactly_the_events_after_a_cursor_in_order(store):
    first = (await put(store, job("a"))).event
    await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    await put(store, job("b"))
    after = await store.read_since(first.cursor)
    assert [(e.job.external_id, e.job.version) for e in after] == [("a", 2), ("b", 1)]
    assert [e.source for e in after] == [Source.POLL, Source.API]
    everything = await store.read_since(None)
    assert [e.cursor for e in everything] == [first.cursor] + [e.cursor for e in after]
    assert await store.read_since(after[-1].cursor) == []


async def test_read_since_filters_by_topic_and_honours_the_limit(store):
    for name in "abcde":
        await put(store, job(name, topics=("user:1",) if name in "bd" else ()))
    found = await store.read_since(None, topics=["user:1"])
    assert [e.job.external_id for e in found] == ["b", "d"]
    assert len(await store.read_since(None, limit=3)) == 3


async def test_an_unknown_cursor_is_refused(store):
    await put(store, job("a"))
    for cursor in ["999999", "not-a-cursor", "1\n2", "\u00b2", "\u00b2-\u00b3"]:
        with pytest.raises(InvalidCursor):
            await store.read_since(cursor)


async def test_latest_gives_the_newest_event_of_each_job(store):
    await put(store, job("a"))
    await put(store, job("b"))
    await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    latest = await store.latest(["provider:p"])
    assert sorted((e.job.external_id, e.job.version) for e in latest) == [("a", 2), ("b", 1)]
    log = [e.cursor for e in await store.read_since(None)]
    assert [log.index(e.cursor) for e in latest] == sorted(log.index(e.cursor) for e in latest)
    assert [e.job.external_id for e in await store.latest(["provider:p"], limit=1)] == ["b"]


async def test_history_lists_one_jobs_events_oldest_first(store):
    created = await put(store, job("a"))
    await put(store, job("b"))
    await store.apply("p", "a", bump(State.RUNNING), source=Source.WEBHOOK, received_at=NOW)
    history = await store.history(created.job.id)
    assert [e.job.version for e in history] == [1, 2]


async def test_list_jobs_filters_and_paginates_most_recent_first(store):
    for name in "abc":
        await put(store, job(name))
    await put(store, job("x", provider="q", topics=("team:red",)))
    await store.apply("p", "b", bump(State.SUCCEEDED), source=Source.POLL, received_at=NOW)
    jobs, total = await store.list_jobs(JobQuery(provider="p", limit=2))
    assert total == 3 and [j.external_id for j in jobs] == ["c", "b"]
    jobs, _ = await store.list_jobs(JobQuery(provider="p", limit=2, offset=2))
    assert [j.external_id for j in jobs] == ["a"]
    assert [j.external_id for j in (await store.list_jobs(JobQuery(terminal=True)))[0]] == ["b"]
    assert [j.external_id for j in (await store.list_jobs(JobQuery(state="succeeded")))[0]] \
        == ["b"]
    assert [j.external_id for j in (await store.list_jobs(JobQuery(topic="team:red")))[0]] \
        == ["x"]
    assert (await store.list_jobs(JobQuery(external_id="a")))[1] == 1


async def test_wait_returns_when_an_event_arrives(store):
    cursor = await store.last_cursor()
    waiter = asyncio.create_task(store.wait(cursor, timeout=10))
    await asyncio.sleep(0)
    await put(store, job("a"))
    await asyncio.wait_for(waiter, 5)


async def test_wait_times_out_when_nothing_arrives(store):
    await put(store, job("a"))
    await store.wait(await store.last_cursor(), timeout=0.05)


async def test_concurrent_applies_to_one_job_serialise(store):
    await put(store, job("a"))
    await asyncio.gather(*(store.apply("p", "a", bump(), source=Source.WEBHOOK, received_at=NOW)
                           for _ in range(50)))
    current = await store.find("p", "a")
    assert current.version == 51
    assert [e.job.version for e in await store.history(current.id)] == list(range(1, 52))


async def test_a_failing_change_fails_only_its_own_apply(store):
    def broken(current):
        raise ValueError("boom")

    results = await asyncio.gather(
        put(store, job("a")),
        store.apply("p", "z", broken, source=Source.API, received_at=NOW),
        put(store, job("b")), return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert await store.find("p", "a") is not None and await store.find("p", "b") is not None
    assert await store.find("p", "z") is None


async def test_secret_is_generated_once_and_kept(store):
    first = await store.secret("relay", lambda: "one")
    assert first == "one"
    assert await store.secret("relay", lambda: "two") == "one"


async def test_ping_succeeds_on_an_open_store(store):
    await store.ping()
