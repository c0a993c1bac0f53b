"""One contract, every backend: what the rest of the relay may rely on from a store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from relay.errors import CursorExpired, UnknownCursor
from relay.models import Job, Source, State
from relay.store import JobQuery, Store, open_store
from relay.store.outbox import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Due,
    EventKind,
    Health,
    Outbox,
    OutboxStats,
    Outcome,
    Replayed,
    Retried,
    Subscription,
    SubscriptionStatus,
    event_kinds,
)
from tests.support import NOW, bump, job, put, redis_url, wipe_redis

pytestmark = pytest.mark.anyio



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


async def test_a_repeated_dedupe_key_is_a_duplicate_that_writes_nothing(store):
    first = await put(store, job("a"), dedupe_key="k1")
    applied = await store.apply("p", "a", bump(State.RUNNING), source=Source.WEBHOOK,
                                received_at=NOW, dedupe_key="k1")
    assert applied.duplicate and applied.event is None
    assert await store.find("p", "a") == first.job
    assert [e.cursor for e in await store.read_since(None)] == [first.event.cursor]


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
    # Positions past the end or of another shape, in this store's epoch and bare.
    positions = ["999999", "99999999999999-0", "not-a-cursor", "1\n2", "\u00b2", "\u00b2-\u00b3"]
    for cursor in [*positions, *map(store.cursors.cursor, positions)]:
        with pytest.raises(UnknownCursor):
            await store.read_since(cursor)
        with pytest.raises(UnknownCursor):
            await store.read_since(cursor, topics=["provider:p"])


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_a_cursor_from_an_earlier_incarnation_of_the_store_is_unknown(backend, tmp_path):
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/wiped.db",
           "redis": redis_url() if backend == "redis" else ""}[backend]
    before = open_store(url)
    await before.open()
    try:
        old = [(await put(before, job(name))).event.cursor for name in "ab"]
    finally:
        await before.close()
    if backend == "sqlite":
        for path in tmp_path.glob("wiped.db*"):
            path.unlink()
    elif backend == "redis":
        wipe_redis(url)
    after = open_store(url)  # memory://: a new store, as after a restart
    await after.open()
    try:
        # The new log is longer than the old one: the old positions exist in it.
        new = [(await put(after, job(name))).event.cursor for name in "abcd"]
        assert not set(old) & set(new)
        for cursor in old:
            with pytest.raises(UnknownCursor):
                await after.read_since(cursor)
            with pytest.raises(UnknownCursor):
                await after.read_since(cursor, topics=["provider:p"])
            with pytest.raises(UnknownCursor):
                await after.wait(cursor, timeout=0.01)
        assert [e.cursor for e in await after.read_since(new[0])] == new[1:]
    finally:
        await after.close()


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


# -- retention ---------------------------------------------------------------------------------

OLD, RECENT = "2026-01-01T00:00:00.000Z", "2026-01-03T00:00:00.000Z"
CUTOFF = datetime(2026, 1, 2, tzinfo=UTC).timestamp()


def finished_job(external_id: str, at: str, *, updated_at: str | None = None,
                 topics: tuple[str, ...] = ()) -> Job:
    return job(external_id, state=State.SUCCEEDED, topics=topics).replace(
        finished_at=at, updated_at=updated_at or at)


async def test_sweep_deletes_the_jobs_that_finished_before_the_cutoff_and_all_that_names_them(
        store):
    old = await put(store, finished_job("old", OLD, topics=("user:1",)))
    await put(store, job("running", topics=("user:1",)))
    await put(store, finished_job("recent", RECENT, topics=("user:1",)))
    # Tracked after the provider finished it long ago: kept from when relay learned it.
    await put(store, finished_job("late", OLD, updated_at=RECENT, topics=("user:1",)))
    assert await store.sweep(CUTOFF, 100) == 1
    assert await store.get(old.job.id) is None and await store.find("p", "old") is None
    assert await store.history(old.job.id) == []
    kept = ["running", "recent", "late"]
    jobs, total = await store.list_jobs(JobQuery(topic="user:1"))
    assert sorted(j.external_id for j in jobs) == sorted(kept) and total == 3
    assert (await store.list_jobs(JobQuery(external_id="old")))[1] == 0
    assert (await store.list_jobs(JobQuery(state="succeeded")))[1] == 2
    assert [e.job.external_id for e in await store.latest(["user:1"])] == kept
    assert [e.job.external_id for e in await store.read_since(None)] == kept
    assert await store.sweep(CUTOFF, 100) == 0
    again = await put(store, job("old"))  # the provider's id is free again: a new job
    assert again.event is not None and again.job.state is State.QUEUED


async def test_sweep_deletes_at_most_limit_jobs_the_oldest_first(store):
    for day in (3, 1, 2):
        await put(store, finished_job(f"day{day}", f"2026-01-0{day}T00:00:00.000Z"))
    later = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
    assert await store.sweep(later, 2) == 2
    assert [j.external_id for j in (await store.list_jobs(JobQuery()))[0]] == ["day3"]
    assert await store.sweep(later, 2) == 1


async def test_a_cursor_older_than_a_swept_event_is_expired_and_a_newer_one_is_not(store):
    first = await put(store, job("a"))
    swept = await put(store, finished_job("old", OLD))
    last = await put(store, job("b"))
    await store.sweep(CUTOFF, 100)
    for topics in (None, ["provider:p"]):
        with pytest.raises(CursorExpired):
            await store.read_since(first.event.cursor, topics=topics)
        found = await store.read_since(swept.event.cursor, topics=topics)
        assert [e.job.external_id for e in found] == ["b"]
    assert await store.last_cursor() == last.event.cursor
    assert [e.job.external_id for e in await store.read_since(None)] == ["a", "b"]


async def test_sweep_deletes_the_deliveries_of_the_jobs_it_deletes(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, finished_job("old", OLD))
    kept = await put(store, job("kept"))
    await store.sweep(CUTOFF, 100)
    assert [d.job_id for d in await outbox.deliveries("sub_all")] == [kept.job.id]
    due = await outbox.due("sub_all", time.time() + 1, 10)
    assert [d.job_id for d in due.deliveries] == [kept.job.id]
    assert (await outbox.outbox_stats()).pending == 1


# -- the outbox (outbound webhook subscriptions and deliveries) -------------------------------

def subscription(name: str, topics: tuple[str, ...] = ("*",), **fields) -> Subscription:
    return Subscription(id=f"sub_{name}", url=f"https://{name}.example/hook", topics=topics,
                        secret="whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
                        created_at=f"2026-01-01T00:00:0{len(name)}.000Z", **fields)


async def subscribed(store: Store, *subscriptions: Subscription) -> Outbox:
    outbox = store.outbox
    for sub in subscriptions:
        await outbox.save_subscription(sub)
    return outbox


def attempt(status: int | None = 500) -> Attempt:
    return Attempt(at=NOW, duration=0.01, status=status, error=None if status == 200 else "no")


def delivered(delivery: Delivery) -> Outcome:
    return Outcome(delivery.id, attempt(200), DeliveryStatus.DELIVERED)


def versions(deliveries: list[Delivery]) -> list[tuple[str, int]]:
    return [(d.event.job.external_id, d.event.job.version) for d in deliveries]


LATER = 4_000_000_000.0  # a Unix time far in the future: everything pending is due by then
OFF = Health(SubscriptionStatus.DISABLED, disabled_reason="gone")


def set_status(status: SubscriptionStatus, reason: str | None = None):
    return lambda health: dataclasses.replace(health, status=status, disabled_reason=reason)


async def test_an_event_adds_a_delivery_for_each_enabled_subscription_that_wants_it(store):
    outbox = await subscribed(store, subscription("all"), subscription("one", ("user:1",)),
                              subscription("other", ("provider:q",)),
                              subscription("off", health=OFF))
    applied = await put(store, job("a", topics=("user:1",)))
    for name, expected in [("all", 1), ("one", 1), ("other", 0), ("off", 0)]:
        due = (await outbox.due(f"sub_{name}", LATER, 10)).deliveries
        assert len(due) == expected, name
    [delivery] = (await outbox.due("sub_all", LATER, 10)).deliveries
    assert delivery.event.cursor == applied.event.cursor
    assert delivery.event.job == applied.job and delivery.status is DeliveryStatus.PENDING
    assert (await outbox.delivery(delivery.id)) == delivery


async def test_a_change_that_makes_no_event_makes_no_delivery(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, job("a"))
    await put(store, job("a"))  # no change
    with pytest.raises(ValueError):
        await store.apply("p", "z", lambda current: (_ for _ in ()).throw(ValueError()),
                          source=Source.API, received_at=NOW)
    assert len(await outbox.deliveries("sub_all")) == 1


async def test_only_the_head_of_a_jobs_queue_is_due_and_the_next_follows_once_it_is_sent(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, job("a"))
    await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    await put(store, job("b"))
    due = (await outbox.due("sub_all", LATER, 10)).deliveries
    assert sorted(versions(due)) == [("a", 1), ("b", 1)]
    await outbox.finish([delivered(d) for d in due if d.event.job.external_id == "a"])
    due = (await outbox.due("sub_all", LATER, 10)).deliveries
    assert sorted(versions(due)) == [("a", 2), ("b", 1)]
    assert len((await outbox.due("sub_all", LATER, 1)).deliveries) == 1
    others = (await outbox.due("sub_all", LATER, 10, exclude=[due[0].id])).deliveries
    assert others == due[1:]


async def test_a_head_to_retry_waits_and_is_superseded_by_the_newest_update_of_its_job(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, job("a"))
    [first] = (await outbox.due("sub_all", LATER, 10)).deliveries
    for _ in range(2):
        await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    now = first.created_at + 1
    await outbox.finish([Outcome(first.id, attempt(503), DeliveryStatus.PENDING, now + 100)])
    assert await outbox.due("sub_all", now, 10) == Due([], now + 100)
    [head] = (await outbox.due("sub_all", now + 100, 10)).deliveries
    assert versions([head]) == [("a", 3)]
    assert (head.tries, head.since, head.next_at) == (1, first.since, now + 100)
    old = await outbox.delivery(first.id)
    assert old.status is DeliveryStatus.SUPERSEDED and old.superseded_by == head.id
    assert [a.status for a in old.attempts] == [503]
    listed = await outbox.deliveries("sub_all")
    assert [d.status for d in listed] == [DeliveryStatus.PENDING, DeliveryStatus.SUPERSEDED,
                                          DeliveryStatus.SUPERSEDED]
    await outbox.finish([delivered(head)])
    assert (await outbox.delivery(head.id)).attempts[-1].status == 200
    assert (await outbox.due("sub_all", LATER, 10)) == Due([], None)


async def test_a_head_to_retry_alone_keeps_its_place_and_counts_its_tries(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, job("a"))
    [first] = (await outbox.due("sub_all", LATER, 10)).deliveries
    for count in (1, 2):
        await outbox.finish([Outcome(first.id, attempt(), DeliveryStatus.PENDING, 5.0)])
        [again] = (await outbox.due("sub_all", 5.0, 10)).deliveries
        assert (again.id, again.tries, len(again.attempts)) == (first.id, count, count)


async def test_a_failed_delivery_can_be_retried_unless_a_newer_update_was_sent(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, job("a"))
    await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    [first] = (await outbox.due("sub_all", LATER, 10)).deliveries
    await outbox.finish([Outcome(first.id, attempt(), DeliveryStatus.FAILED, reason="gave up")])
    assert (await outbox.delivery(first.id)).reason == "gave up"
    assert await outbox.retry_delivery(first.id, 10.0) is Retried.NEWER  # v2 is pending
    [second] = (await outbox.due("sub_all", LATER, 10)).deliveries
    assert versions([second]) == [("a", 2)]
    await outbox.finish([delivered(second)])
    assert await outbox.retry_delivery(first.id, 10.0) is Retried.NEWER  # v2 was delivered
    assert await outbox.retry_delivery(second.id, 10.0) is Retried.NOT_FAILED
    assert await outbox.retry_delivery("dlv_999999", 10.0) is Retried.MISSING
    assert await outbox.retry_delivery("nonsense", 10.0) is Retried.MISSING
    await put(store, job("b"))
    [third] = (await outbox.due("sub_all", LATER, 10)).deliveries
    await outbox.finish([Outcome(third.id, attempt(), DeliveryStatus.FAILED, reason="x")])
    assert await outbox.retry_delivery(third.id, 10.0) is Retried.RETRIED
    retried = await outbox.delivery(third.id)
    assert (retried.status, retried.tries, retried.next_at, retried.reason) == (
        DeliveryStatus.PENDING, 0, 10.0, None)
    assert (await outbox.due("sub_all", 10.0, 10)).deliveries == [retried]


async def test_disabling_a_subscription_fails_its_pending_deliveries_and_stops_new_ones(store):
    outbox = await subscribed(store, subscription("all"), subscription("other"))
    await put(store, job("a"))
    await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    before, after = await outbox.update_health(
        "sub_all", set_status(SubscriptionStatus.DISABLED, "the consumer answered 410"))
    assert (before.status, after.status) == (SubscriptionStatus.ACTIVE,
                                             SubscriptionStatus.DISABLED)
    sub = await outbox.subscription("sub_all")
    assert (sub.enabled, sub.health.disabled_reason) == (False, "the consumer answered 410")
    assert [(d.status, d.reason) for d in await outbox.deliveries("sub_all")] == [
        (DeliveryStatus.FAILED, "the consumer answered 410")] * 2
    await put(store, job("b"))
    assert len(await outbox.deliveries("sub_all")) == 2
    assert (await outbox.due("sub_all", LATER, 10)).deliveries == []
    assert len(await outbox.deliveries("sub_other")) == 3
    assert (await outbox.outbox_stats()).pending == 3  # sub_other's


async def test_enabling_a_disabled_subscription_lets_new_events_in_and_keeps_the_failed(store):
    outbox = await subscribed(store, subscription("all", ("user:1",), events=(
        EventKind.CREATED,), health=OFF))
    await put(store, job("a", topics=("user:1",)))
    assert await outbox.deliveries("sub_all") == []
    await outbox.update_health("sub_all", set_status(SubscriptionStatus.ACTIVE))
    await put(store, job("b", topics=("user:1",)))
    await put(store, job("c"))  # not its topic
    await store.apply("p", "b", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    assert versions(await outbox.deliveries("sub_all")) == [("b", 1)]  # created only
    await outbox.update_health("sub_all", set_status(SubscriptionStatus.DISABLED, "x"))
    await outbox.update_health("sub_all", set_status(SubscriptionStatus.FAILING))
    assert [d.status for d in await outbox.deliveries("sub_all")] == [DeliveryStatus.FAILED]
    await put(store, job("d", topics=("user:1",)))  # failing still receives
    assert versions((await outbox.due("sub_all", LATER, 10)).deliveries) == [("d", 1)]


async def test_a_health_change_is_applied_to_the_health_as_stored(store):
    outbox = await subscribed(store, subscription("all"))

    def count(h: Health) -> Health:
        return dataclasses.replace(h, consecutive_failures=h.consecutive_failures + 1,
                                   last_error=f"no {h.consecutive_failures}")

    await asyncio.gather(*(outbox.update_health("sub_all", count) for _ in range(20)))
    health = (await outbox.subscription("sub_all")).health
    assert (health.consecutive_failures, health.last_error) == (20, "no 19")
    assert await outbox.update_health("sub_none", count) is None
    failing = Health(SubscriptionStatus.FAILING, 7, "answered 500", 12.5, 2, 99.25, None)
    await outbox.update_health("sub_all", lambda h: failing)
    assert (await outbox.subscription("sub_all")).health == failing
    assert (await outbox.subscriptions())[0].health == failing


async def test_deleting_a_subscription_removes_it_and_its_deliveries(store):
    outbox = await subscribed(store, subscription("all"), subscription("other"))
    await put(store, job("a"))
    [delivery] = (await outbox.due("sub_all", LATER, 10)).deliveries
    assert await outbox.delete_subscription("sub_all") is True
    assert await outbox.delete_subscription("sub_all") is False
    assert await outbox.subscription("sub_all") is None
    assert await outbox.delivery(delivery.id) is None
    assert await outbox.deliveries("sub_all") == []
    assert [s.id for s in await outbox.subscriptions()] == ["sub_other"]
    assert (await outbox.outbox_stats()).pending == 1


async def test_saving_a_subscription_again_updates_it_and_keeps_its_creation_and_health(store):
    outbox = await subscribed(store, subscription("all", health=OFF))
    again = dataclasses.replace(subscription("all", ("user:1",)), secret="whsec_b3RoZXI=",
                                created_at="2027-01-01T00:00:00.000Z", name="billing",
                                events=(EventKind.TERMINAL, EventKind.STATE))
    await outbox.save_subscription(again)
    assert await outbox.subscription("sub_all") == dataclasses.replace(
        again, created_at=subscription("all").created_at, health=OFF)
    await outbox.update_health("sub_all", set_status(SubscriptionStatus.ACTIVE))
    await put(store, job("a", topics=("user:1",)))
    await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    assert versions(await outbox.deliveries("sub_all")) == [("a", 2)]


async def test_deliveries_are_listed_newest_first_and_filtered_by_status(store):
    outbox = await subscribed(store, subscription("all"))
    for name in "abc":
        await put(store, job(name))
    due = (await outbox.due("sub_all", LATER, 10)).deliveries
    await outbox.finish([delivered(d) for d in due if d.event.job.external_id == "b"])
    listed = await outbox.deliveries("sub_all")
    assert [d.event.job.external_id for d in listed] == ["c", "b", "a"]
    assert [d.event.job.external_id for d in await outbox.deliveries("sub_all", limit=2)] \
        == ["c", "b"]
    done = await outbox.deliveries("sub_all", status=DeliveryStatus.DELIVERED)
    assert [(d.event.job.external_id, [a.status for a in d.attempts]) for d in done] \
        == [("b", [200])]


async def test_outbox_stats_count_the_pending_deliveries_and_the_oldest(store):
    outbox = await subscribed(store, subscription("all"), subscription("one", ("user:1",)))
    assert await outbox.outbox_stats() == OutboxStats(0, None)
    await put(store, job("a", topics=("user:1",)))
    await put(store, job("b"))
    oldest = min(d.created_at for d in await outbox.deliveries("sub_all"))
    assert await outbox.outbox_stats() == OutboxStats(3, oldest)


async def test_subscriptions_are_listed_oldest_first(store):
    outbox = await subscribed(store, subscription("bb"), subscription("a"))
    assert [s.id for s in await outbox.subscriptions()] == ["sub_a", "sub_bb"]


# -- what a subscription receives: the kinds of each event ------------------------------------

def moved(**changes):
    def change(current: Job | None) -> Job | None:
        assert current is not None
        return current.replace(version=current.version + 1, **changes)
    return change


async def test_each_subscription_gets_only_the_kinds_of_event_it_names(store):
    kinds = {"created": ("created",), "progress": ("progress",), "state": ("state",),
             "terminal": ("terminal",), "end": ("state", "terminal"), "every": None}
    outbox = await subscribed(store, *(
        subscription(name, events=None if words is None else tuple(map(EventKind, words)))
        for name, words in kinds.items()))
    await put(store, job("a"))  # v1
    for change in (moved(progress=0.5), moved(provider_status="thinking"),
                   moved(state=State.RUNNING), moved(stage="two"),
                   moved(state=State.SUCCEEDED, progress=1.0)):  # v2 .. v6
        await store.apply("p", "a", change, source=Source.POLL, received_at=NOW)
    received = {name: sorted(v for _, v in versions(await outbox.deliveries(f"sub_{name}")))
                for name in kinds}
    assert received == {"created": [1], "progress": [2, 5], "state": [4, 6], "terminal": [6],
                        "end": [4, 6], "every": [1, 2, 3, 4, 5, 6]}


@pytest.mark.parametrize("previous, changes, expected", [
    (None, {}, {"created"}),
    (None, {"state": State.FAILED}, {"created", "terminal"}),
    ({}, {"state": State.RUNNING}, {"state"}),
    ({"state": State.RUNNING}, {"state": State.CANCELED}, {"state", "terminal"}),
    ({}, {"progress": 0.25}, {"progress"}),
    ({"progress": 0.25}, {"progress": 0.25, "stage": "b"}, {"progress"}),
    ({}, {"output": {"url": "https://o/1"}}, set()),
    ({"state": State.RUNNING}, {"state": State.RUNNING, "provider_status": "x"}, set()),
])
def test_event_kinds_classify_a_change_from_the_job_before_it(previous, changes, expected):
    base = job("k")
    before = None if previous is None else base.replace(**previous)
    after = (before or base).replace(**changes)
    assert event_kinds(before, after) == {EventKind(word) for word in expected}


# -- replay ------------------------------------------------------------------------------

async def finish_as(outbox: Outbox, external_id: str, status: DeliveryStatus) -> Delivery:
    [head] = [d for d in (await outbox.due("sub_all", LATER, 100)).deliveries
              if d.event.job.external_id == external_id]
    code = 200 if status is DeliveryStatus.DELIVERED else 500
    await outbox.finish([Outcome(head.id, attempt(code), status, reason="x")])
    return head


REPLAY_AT = 3_000_000_000.1000075  # after every delivery made here, and not LATER


async def test_a_replay_sends_each_jobs_newest_delivery_again_in_event_order(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, job("a"))
    await store.apply("p", "a", bump(State.RUNNING), source=Source.POLL, received_at=NOW)
    for name in "bcd":
        await put(store, job(name))
    await finish_as(outbox, "a", DeliveryStatus.FAILED)  # a v1: failed ...
    await finish_as(outbox, "a", DeliveryStatus.DELIVERED)  # ... but a v2 delivered
    await finish_as(outbox, "b", DeliveryStatus.FAILED)
    await finish_as(outbox, "c", DeliveryStatus.DELIVERED)  # d stays pending: on its way
    now = REPLAY_AT  # copies are due a microsecond apart; written to six decimals, they tie
    assert await outbox.replay("sub_all", 0.0, now, only_failed=True) == Replayed(1)
    assert versions((await outbox.due("sub_all", LATER, 10)).deliveries) == [
        ("d", 1), ("b", 1)]
    assert await outbox.replay("sub_all", 0.0, now + 1, only_failed=True) == Replayed(0)
    assert await outbox.replay("sub_all", 0.0, now + 2) == Replayed(2)  # a v2, c: delivered
    due = (await outbox.due("sub_all", LATER, 10)).deliveries
    assert versions(due) == [("d", 1), ("b", 1), ("a", 2), ("c", 1)]
    assert due[2].next_at < due[3].next_at  # in event order, which a tie would leave to chance
    copy = due[2]
    assert (copy.status, copy.tries, copy.created_at) == (DeliveryStatus.PENDING, 0, now + 2)
    assert copy.event == (await outbox.delivery(due[2].id)).event
    assert len(await outbox.deliveries("sub_all")) == 8  # the originals are kept as they were


async def test_a_replay_looks_back_only_to_since_and_stops_at_its_cap(store):
    outbox = await subscribed(store, subscription("all"))
    for name in "abc":
        await put(store, job(name))
        await finish_as(outbox, name, DeliveryStatus.FAILED)
    made = [d.created_at for d in await outbox.deliveries("sub_all")]
    assert await outbox.replay("sub_all", max(made) + 1, LATER) == Replayed(0)
    now = time.time() + 100
    assert await outbox.replay("sub_all", 0.0, now, limit=2) == Replayed(2, truncated=True)
    assert versions((await outbox.due("sub_all", LATER, 10)).deliveries) == [("b", 1), ("c", 1)]
    assert await outbox.replay("sub_all", 0.0, now + 1, limit=2) == Replayed(1)  # the rest


async def test_a_disabled_subscription_replays_nothing(store):
    outbox = await subscribed(store, subscription("all"))
    await put(store, job("a"))
    await outbox.update_health("sub_all", set_status(SubscriptionStatus.DISABLED, "off"))
    assert await outbox.replay("sub_all", 0.0, 10.0) == Replayed(0)
    assert await outbox.replay("sub_none", 0.0, 10.0) == Replayed(0)
    assert (await outbox.due("sub_all", LATER, 10)).deliveries == []


# -- what outlives the process ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_subscriptions_health_and_filter_outlive_the_store(kind, tmp_path):
    url = f"sqlite:///{tmp_path}/health.db" if kind == "sqlite" else redis_url()
    failing = Health(SubscriptionStatus.FAILING, 6, "answered 503", 10.0, 1, 20.0)
    first = open_store(url)
    await first.open()
    await first.outbox.save_subscription(subscription("all", events=(EventKind.TERMINAL,)))
    await first.outbox.update_health("sub_all", lambda h: failing)
    await first.close()
    again = open_store(url)
    await again.open()
    try:
        kept = await again.outbox.subscription("sub_all")
        await put(again, job("a"))
        await again.apply("p", "a", bump(State.SUCCEEDED), source=Source.POLL, received_at=NOW)
        delivered = versions(await again.outbox.deliveries("sub_all"))
    finally:
        await again.close()
    assert (kept.health, kept.events) == (failing, (EventKind.TERMINAL,))
    assert delivered == [("a", 2)]


# -- subscriptions written before health and events were kept ------------------------------------

async def test_a_sqlite_database_from_before_health_keeps_its_disabled_subscription(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the subscriptions table as it was
        conn.execute("CREATE TABLE subscriptions (id TEXT PRIMARY KEY, url TEXT NOT NULL,"
                     " topics TEXT NOT NULL, secret TEXT NOT NULL, origin TEXT NOT NULL,"
                     " enabled INTEGER NOT NULL, disabled_reason TEXT, created_at TEXT NOT NULL)")
        conn.executemany("INSERT INTO subscriptions VALUES (?, ?, '[\"*\"]', 's', 'api', ?, ?,"
                         " '2026-01-01T00:00:00.000Z')",
                         [("sub_on", "https://on.example/", 1, None),
                          ("sub_off", "https://off.example/", 0, "410")])
    old = open_store(f"sqlite:///{path}")
    await old.open()
    try:
        kept = {s.id: s for s in await old.outbox.subscriptions()}
        await put(old, job("a"))
        made = {name: len(await old.outbox.deliveries(name)) for name in kept}
    finally:
        await old.close()
    assert kept["sub_off"].health == Health(SubscriptionStatus.DISABLED, disabled_reason="410")
    assert (kept["sub_on"].status, kept["sub_on"].events) == (SubscriptionStatus.ACTIVE, None)
    assert made == {"sub_on": 1, "sub_off": 0}


async def test_redis_subscriptions_from_before_health_keep_their_status_and_receive():
    store = open_store(redis_url())
    await store.open()
    try:
        old = {"id": "sub_off", "url": "https://off.example/", "topics": ["*"], "secret": "s",
               "origin": "api", "enabled": False, "disabled_reason": "410",
               "created_at": "2026-01-01T00:00:00.000Z"}
        on = {**old, "id": "sub_on", "enabled": True, "disabled_reason": None}
        await store.redis.hset(store._key("subs"), mapping={
            "sub_off": json.dumps(old), "sub_on": json.dumps(on)})
        await store.redis.hset(store._key("subs:on"), "sub_on", '["*"]')  # as it was written
        await put(store, job("a"))
        kept = {s.id: s for s in await store.outbox.subscriptions()}
        made = len(await store.outbox.deliveries("sub_on"))
        enabled = await store.outbox.update_health("sub_off",
                                                   set_status(SubscriptionStatus.ACTIVE))
        await put(store, job("b"))
        after = versions(await store.outbox.deliveries("sub_off"))
    finally:
        await store.close()
    assert kept["sub_off"].health == Health(SubscriptionStatus.DISABLED, disabled_reason="410")
    assert kept["sub_on"].status is SubscriptionStatus.ACTIVE and made == 1
    assert enabled[0].status is SubscriptionStatus.DISABLED
    assert after == [("b", 1)]
