"""What only the Redis backend has to show: several instances on one Redis, and retention."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from relay.errors import CursorExpired, UnknownCursor
from relay.models import Source, State
from relay.store import open_store
from tests.support import NOW, REDIS, bump, job, put, redis_url, wipe_redis

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Any]:
    """A Redis store, open for the block."""
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def plain_redis() -> AsyncIterator[Any]:
    """A client of the Redis the stores use, to change it under them."""
    client = aioredis.Redis.from_url(REDIS)
    try:
        yield client
    finally:
        await client.aclose()


async def test_two_instances_applying_to_one_job_serialise_without_losing_a_change():
    url = redis_url()
    first, second = open_store(url), open_store(url)
    await first.open()
    await second.open()
    try:
        await put(first, job("a"))
        await asyncio.gather(*(store.apply("p", "a", bump(), source=Source.WEBHOOK,
                                           received_at=NOW)
                               for _ in range(25) for store in (first, second)))
        current = await second.find("p", "a")
        assert current.version == 51
        assert [e.job.version for e in await first.history(current.id)] == list(range(1, 52))
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("protocol", ["2", "3"])  # the reader parses XREAD's answer itself
async def test_an_event_written_by_one_instance_wakes_a_reader_on_another(protocol):
    url = redis_url(protocol=protocol)
    writer, reader = open_store(url), open_store(url)
    await writer.open()
    await reader.open()
    try:
        await put(writer, job("a"))
        cursor = await reader.last_cursor()
        waiting = asyncio.create_task(reader.wait(cursor, timeout=10))
        await asyncio.sleep(0.05)
        created = await put(writer, job("b"))
        await asyncio.wait_for(waiting, 5)
        [read] = await reader.read_since(cursor)
        assert read.cursor == created.event.cursor
        # The reader took the event with its job still encoded, and its head beside it.
        assert (read.head.id, read.head.state, read.head.version, read.head.topics) == (
            created.job.id, State.QUEUED, 1, created.job.topics)
        assert read.job == created.job and read == created.event
    finally:
        await writer.close()
        await reader.close()


async def test_the_log_is_read_at_the_streams_pace_only_while_streams_are_open():
    from relay.fanout.hub import Hub, Queued
    from relay.runtime.metrics import Metrics
    from relay.store.redis.store import IDLE_LINGER, READ_LINGER

    async with opened(redis_url()) as store:
        hub = Hub(store, Metrics())
        assert store.linger == IDLE_LINGER
        streams = [hub.subscribe(Queued([topic])) for topic in ("a", "b")]
        assert store.linger == READ_LINGER
        hub.unsubscribe(streams[0])
        assert store.linger == READ_LINGER
        hub.unsubscribe(streams[1])
        assert store.linger == IDLE_LINGER


async def test_events_written_before_they_carried_a_head_are_read_as_before():
    async with opened(redis_url()) as store, plain_redis() as client:
        before = await put(store, job("a"))
        old = job("b")
        await client.xadd(f"{store.prefix}events", {
            "j": json.dumps(old.to_dict()), "s": "api", "r": NOW})
        await asyncio.wait_for(store.wait(before.event.cursor, timeout=5), 10)
        [tailed] = await store.read_since(before.event.cursor)  # as the log's reader took it
        [scanned] = await store.read_since(before.event.cursor, topics=[f"job:{old.id}"])
        for read in (tailed, scanned):
            assert read.job == old and read.head.id == old.id and read.source is Source.API


async def test_a_cursor_older_than_retention_is_reported_expired():
    async with opened(redis_url(retention="1")) as store:
        first = (await put(store, job("a"))).event.cursor
        # MAXLEN ~ trims whole nodes, so write well past a node's worth of entries.
        for index in range(300):
            await put(store, job(f"x{index}"))
        with pytest.raises(CursorExpired):
            await store.read_since(first, topics=["job:a"])  # a stream resuming
        # The log's own followers read on from the instance's tail: no gap for them.
        followed = await store.read_since(first)
        assert followed and followed[0].job.external_id == "x0"
        newest = await store.last_cursor()
        assert await store.read_since(newest) == []


async def test_a_cursor_from_the_future_or_of_another_shape_is_unknown():
    async with opened(redis_url()) as store:
        await put(store, job("a"))
        for position in ["99999999999999-0", "12", "abc"]:
            with pytest.raises(UnknownCursor):
                await store.read_since(store.cursors.cursor(position))


async def test_a_lease_is_held_by_one_owner_until_released_or_lapsed():
    store = open_store(redis_url())
    leases = store.leases
    try:
        assert leases.shared
        assert await leases.claim(["poll:a", "poll:b"], "one", ttl=30) == {"poll:a", "poll:b"}
        assert await leases.claim(["poll:a", "poll:c"], "two", ttl=30) == {"poll:c"}
        assert await leases.claim(["poll:a"], "one", ttl=30) == {"poll:a"}  # renewed
        await leases.release(["poll:a"], "two")  # not two's to release
        assert await leases.claim(["poll:a"], "two", ttl=30) == set()
        await leases.release(["poll:a"], "one")
        assert await leases.claim(["poll:a"], "two", ttl=30) == {"poll:a"}
        assert await leases.claim(["poll:short"], "one", ttl=0.05) == {"poll:short"}
        await asyncio.sleep(0.1)  # the holder "died": its lease lapses after the ttl
        assert await leases.claim(["poll:short"], "two", ttl=30) == {"poll:short"}
    finally:
        await store.close()


async def test_single_process_stores_do_not_claim_to_lease():
    leases = open_store("memory://").leases
    assert not leases.shared
    assert await leases.claim(["poll:a"], "anyone", ttl=1) == {"poll:a"}


async def test_more_concurrent_commands_than_pooled_connections_wait_rather_than_fail():
    async with opened(redis_url()) as store:
        await put(store, job("a"))
        cursor = await store.last_cursor()
        # Blocking reads hold a connection each for their whole wait.
        waits = [asyncio.create_task(store.wait(cursor, timeout=0.3)) for _ in range(300)]
        reads = await asyncio.gather(*(store.get("id-p-a") for _ in range(300)))
        await asyncio.gather(*waits)
        assert all(found is not None for found in reads)


async def test_a_cursor_from_before_a_flush_under_a_running_store_is_unknown():
    url = redis_url()
    async with opened(url) as store:
        old = [(await put(store, job(name))).event.cursor for name in "ab"]
        wipe_redis(url)  # FLUSHDB as this store's keys see it; the new stream's ids are newer
        for name in "abcd":
            await put(store, job(name))
        for cursor in old:
            with pytest.raises(UnknownCursor):
                await store.read_since(cursor, topics=["provider:p"])
        # Once the store has seen the flush, it reads on from the cursors it gives now.
        latest = await store.last_cursor()
        assert latest not in old
        written = (await put(store, job("e"))).event
        assert await store.read_since(latest, topics=["provider:p"]) == [written]


async def test_a_task_cancelled_in_the_middle_of_redis_commands_ends():
    # redis-py can swallow a cancel that lands while a command is in flight; a loop of
    # commands (retention's, the scheduler's) then never ended and held up shutdown.
    moments = random.Random(7)
    async with opened(redis_url()) as store:

        async def claiming() -> None:
            while True:
                await store.leases.claim(["retention"], "owner", 0.2)
                await asyncio.sleep(0.001)

        for _ in range(40):
            task = asyncio.create_task(claiming())
            await asyncio.sleep(moments.random() * 0.01)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert done, "the task went on after it was cancelled"
            assert task.cancelled()


async def test_writes_go_on_after_redis_forgot_the_scripts():
    """As after a Redis restart: the apply script is sent again when Redis no longer has it."""
    async with opened(redis_url()) as store, plain_redis() as client:
        await put(store, job("a"))
        await client.script_flush()
        applied = await store.apply("p", "a", bump(), source=Source.WEBHOOK, received_at=NOW)
        assert applied.job.version == 2
        assert [e.job.version for e in await store.history(applied.job.id)] == [1, 2]
