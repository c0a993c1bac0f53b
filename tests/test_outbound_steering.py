"""Outbound deliveries an operator can steer: the `events` filter, a
subscription's status (failing, probed one request at a time, disabled, enabled again),
replay, the operational events, config subscriptions on a rolling deploy, and cookies. Against
real consumers served by uvicorn (tests/test_outbound.py's `Consumer`, which fails on command)
and real relays on SQLite and on Redis."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.app import create_app
from relay.config import OutboundConfig, Settings
from relay.errors import ConfigError
from relay.models import Job, Source, isoformat, utcnow
from relay.outbound.health import (
    ACTIVE,
    DISABLED,
    FAILING,
    FAILING_AFTER,
    after_attempts,
    enabled,
)
from relay.outbound.policy import GONE, JITTER, SCHEDULE, Policy
from relay.outbound.service import Outbound
from relay.runtime.metrics import Metrics
from relay.settings import parse_settings
from relay.store import Store, open_store
from relay.store.outbox import Attempt, DeliveryStatus, Health, Outcome, Subscription
from tests.consumers import (
    SCALE,
    SECRET,
    Consumer,
    deliveries,
    outbound_settings,
    serving_consumer,
    subscribe,
    update,
)
from tests.senders import WEBHOOK_SECRET
from tests.support import Relay, eventually, redis_url, running_relay

pytestmark = pytest.mark.anyio

JOBS = 8


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path}/relay.db" if request.param == "sqlite" else redis_url()


async def subscription(relay: Relay, subscription_id: str) -> dict[str, Any]:
    answer = await relay.client.get(f"/v1/subscriptions/{subscription_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def status_is(relay: Relay, subscription_id: str, status: str) -> bool:
    return (await subscription(relay, subscription_id))["status"] == status


async def metric(relay: Relay, line: str) -> bool:
    return line in (await relay.client.get("/metrics")).text


def newest(consumer: Consumer) -> dict[str, int]:
    """The newest version each job was delivered in."""
    found: dict[str, int] = {}
    for received in consumer.delivered():
        job_id = received.payload["data"]["id"]
        found[job_id] = max(found.get(job_id, 0), received.version)
    return found


# -- failing, probes, recovery -------------------------------------------------------------------

async def test_five_failures_in_a_row_make_it_failing_and_probed_one_request_at_a_time(
        store_url):
    consumer = Consumer(status=500, delay=0.05)
    async with serving_consumer(consumer) as url, \
            running_relay(outbound_settings(store_url)) as relay:
        sub_id = (await subscribe(relay, url))["id"]
        for index in range(JOBS):
            await update(relay, f"p-{index}")
        await eventually(lambda: status_is(relay, sub_id, "failing"), timeout=10)
        failing = await subscription(relay, sub_id)
        began = len(consumer.received)
        await eventually(lambda: len(consumer.received) >= began + 2, timeout=10)  # 2 probes
        consumer.status = 200
        await eventually(lambda: status_is(relay, sub_id, "active"), timeout=15)
        await eventually(lambda: len(newest(consumer)) == JOBS, timeout=10)
        active = await subscription(relay, sub_id)
        await eventually(lambda: metric(relay, 'relay_outbound_subscriptions{status="active"} '
                                               '1.0'), timeout=5)
        text = (await relay.client.get("/metrics")).text

    recovered = next(i for i, r in enumerate(consumer.received) if r.status == 200)
    probes = consumer.received[began:recovered + 1]
    assert len(probes) >= 3 and all(r.concurrent == 1 for r in probes)  # one at a time
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(probes)]
    assert gaps == sorted(gaps)  # further apart after each failed probe
    assert max(r.concurrent for r in consumer.received[recovered + 1:]) > 1  # full width
    assert failing["consecutive_failures"] >= FAILING_AFTER
    assert (failing["last_error"], failing["enabled"]) == ("answered 500", True)
    assert (active["consecutive_failures"], active["last_error"]) == (0, "answered 500")
    assert 'relay_outbound_transitions_total{status="failing"} 1.0' in text
    assert 'relay_outbound_transitions_total{status="active"} 1.0' in text
    probed = next(line for line in text.splitlines()
                  if line.startswith("relay_outbound_probes_total"))
    assert float(probed.split()[1]) >= 2


async def test_a_410_disables_it_and_enable_makes_it_active_again(store_url):
    consumer = Consumer(answers=[410])
    async with serving_consumer(consumer) as url, \
            running_relay(outbound_settings(store_url)) as relay:
        sub_id = (await subscribe(relay, url))["id"]
        await relay.track("gen", "e-1")
        await eventually(lambda: status_is(relay, sub_id, "disabled"), timeout=10)
        disabled = await subscription(relay, sub_id)
        await update(relay, "e-1", percent=30)  # while disabled: never addressed to it
        refused = await relay.client.post(f"/v1/subscriptions/{sub_id}/replay",
                                          json={"since": "2020-01-01T00:00:00Z"})
        enabled = await relay.client.post(f"/v1/subscriptions/{sub_id}/enable")
        await update(relay, "e-1", percent=60)
        await eventually(lambda: len(consumer.delivered()) == 1, timeout=10)
        listed = await deliveries(relay, sub_id)
        missing = await relay.client.post("/v1/subscriptions/sub_none/enable")

    assert (disabled["status"], disabled["enabled"]) == ("disabled", False)
    assert "410" in disabled["disabled_reason"]
    assert (refused.status_code, refused.json()["error"]) == (409, "subscription_disabled")
    assert enabled.status_code == 200
    assert {k: enabled.json()[k] for k in ("status", "enabled", "disabled_reason")} == {
        "status": "active", "enabled": True, "disabled_reason": None}
    assert [r.version for r in consumer.received] == [1, 3]
    assert [(d["job_version"], d["status"]) for d in listed] == [(3, "delivered"),
                                                                 (1, "failed")]
    assert missing.status_code == 404


# -- replay ---------------------------------------------------------------------------------------

async def test_a_replay_after_an_outage_sends_each_jobs_newest_state_again(store_url):
    consumer = Consumer(status=503)
    settings = outbound_settings(store_url, delivery_max_age=1.0)
    async with serving_consumer(consumer) as url, running_relay(settings) as relay:
        sub_id = (await subscribe(relay, url))["id"]
        path = f"/v1/subscriptions/{sub_id}"
        since = isoformat(utcnow())
        for percent in (10, 50):
            for index in range(3):
                await update(relay, f"o-{index}", percent=percent)
        # Failing for longer than delivery_max_age: disabled, every delivery failed.
        await eventually(lambda: status_is(relay, sub_id, "disabled"), timeout=15)
        consumer.status = 200
        assert (await relay.client.post(f"{path}/enable")).status_code == 200
        replayed = await relay.client.post(f"{path}/replay",
                                           json={"since": since, "only_failed": True})
        await eventually(lambda: len(consumer.delivered()) == 3, timeout=10)
        copies = (await deliveries(relay, sub_id))[:3]
        again = await relay.client.post(f"{path}/replay", json={"since": since})
        await eventually(lambda: len(consumer.delivered()) == 6, timeout=10)
        history = [(await relay.client.get(f"/v1/jobs/{d['job_id']}/history")).json()
                   for d in reversed(copies)]

    assert replayed.status_code == 202
    assert replayed.json() == {"replayed": 3, "truncated": False}
    assert again.json() == {"replayed": 3, "truncated": False}  # the delivered, sent again
    assert all(r.version == 2 for r in consumer.delivered())  # each job's newest state
    assert len(newest(consumer)) == 3
    assert [d["job_version"] for d in copies] == [2, 2, 2]
    replayed_cursors = [d["webhook_id"] for d in reversed(copies)]  # oldest copy first
    newest_cursors = [h["events"][-1]["cursor"] for h in history]
    assert replayed_cursors == newest_cursors  # the same webhook-id as the event
    assert [h["events"][-1]["job"]["external_id"] for h in history] == ["o-0", "o-1", "o-2"]


@pytest.mark.parametrize("body, field_name", [
    ({}, "since"), ({"since": "yesterday"}, "since"), ({"since": 1700000000}, "since"),
    ({"since": "2026-01-01T00:00:00"}, "since"),  # no offset: which day is it?
    ({"since": "2026-01-01T00:00:00Z", "only_failed": "yes"}, "only_failed"),
])
async def test_a_replay_with_a_bad_field_is_a_422_naming_it(body, field_name):
    async with running_relay(outbound_settings()) as relay:
        sub_id = (await subscribe(relay, "http://127.0.0.1:9/hook"))["id"]
        answer = await relay.client.post(f"/v1/subscriptions/{sub_id}/replay", json=body)
        missing = await relay.client.post("/v1/subscriptions/sub_none/replay",
                                          json={"since": "2026-01-01T00:00:00Z"})
    assert (answer.status_code, answer.json()["details"]["field"]) == (422, field_name)
    assert missing.status_code == 404


# -- the events filter ------------------------------------------------------------------------

async def test_a_subscription_to_terminal_events_receives_only_the_terminal_update(store_url):
    ends, every = Consumer(), Consumer()
    async with serving_consumer(ends) as ends_url, serving_consumer(every) as every_url, \
            running_relay(outbound_settings(store_url)) as relay:
        filtered = await subscribe(relay, ends_url, events=["terminal"])
        await subscribe(relay, every_url)
        await relay.track("gen", "t-1")  # created
        await update(relay, "t-1", percent=20)  # state: queued -> running
        await update(relay, "t-1", percent=60)  # progress
        await update(relay, "t-1", "COMPLETED")  # state and terminal
        await eventually(lambda: len(every.delivered()) == 4, timeout=10)
        await eventually(lambda: len(ends.delivered()) == 1, timeout=10)
        listed = await deliveries(relay, filtered["id"])

    assert filtered["events"] == ["terminal"]
    assert [r.payload["data"]["state"] for r in ends.received] == ["succeeded"]
    assert [r.version for r in ends.received] == [4] and len(listed) == 1


@pytest.mark.parametrize("events", [[], ["finished"], "terminal", [1]])
async def test_an_unknown_event_word_is_a_422_naming_events(events):
    async with running_relay(outbound_settings()) as relay:
        answer = await relay.client.post("/v1/subscriptions", json={
            "url": "http://127.0.0.1:9/hook", "events": events})
    assert (answer.status_code, answer.json()["details"]["field"]) == (422, "events")


@pytest.mark.parametrize("entry, key", [
    ({"events": ["finished"]}, r"subscriptions\[0\]\.events: unknown event 'finished'"),
    ({"events": []}, r"subscriptions\[0\]\.events"),
    ({"events": "terminal"}, r"subscriptions\[0\]\.events"),
    ({"name": "bill ing"}, r"subscriptions\[0\]\.name"),
])
def test_a_bad_events_or_name_key_fails_startup_naming_it(entry, key):
    with pytest.raises(ConfigError, match=key):
        create_app(config_settings("memory://", [{"url": "https://consumer.example/hook",
                                                  "secret": SECRET, **entry}]))


def test_two_config_subscriptions_with_one_name_fail_startup():
    entries = [{"url": f"https://{host}.example/hook", "secret": SECRET, "name": "billing"}
               for host in ("a", "b")]
    with pytest.raises(ConfigError, match=r"subscriptions\[1\]: the same name"):
        Outbound(config_settings("memory://", entries).outbound, open_store("memory://"),
                 Metrics())


# -- cookies --------------------------------------------------------------------------------------

async def test_a_consumers_cookie_is_never_sent_back(store_url):
    consumer = Consumer(headers={"set-cookie": "session=s3cr3t; Path=/"})
    async with serving_consumer(consumer) as url, \
            running_relay(outbound_settings(store_url)) as relay:
        await subscribe(relay, url)
        await relay.track("gen", "c-1")
        for percent in (20, 40, 60):  # one job: its deliveries go one by one, on one client
            await update(relay, "c-1", percent=percent)
        await eventually(lambda: len(consumer.delivered()) == 4, timeout=10)

    assert [r.version for r in consumer.received] == [1, 2, 3, 4]
    assert not any("cookie" in r.headers for r in consumer.received)


# -- config subscriptions on a rolling deploy ---------------------------------------------------

def config_settings(store: str, subscriptions: list[dict[str, Any]]) -> Settings:
    return parse_settings({
        "server": {"store": store, "allow_private_targets": True,
                   "delivery_retry_scale": SCALE},
        "providers": {"gen": {"schema": "generation", "webhook_secret": WEBHOOK_SECRET}},
        "subscriptions": subscriptions,
    })


async def test_instances_with_different_config_subscriptions_on_one_redis_keep_each_others():
    store = redis_url()
    old, new = Consumer(), Consumer()
    async with serving_consumer(old) as old_url, serving_consumer(new) as new_url:
        before = config_settings(store, [{"name": "billing", "url": old_url, "secret": SECRET}])
        after = config_settings(store, [{"name": "billing", "url": old_url, "secret": SECRET,
                                         "events": ["terminal"]},
                                        {"url": new_url, "secret": SECRET}])
        async with running_relay(before) as first, running_relay(after) as second:
            listed = (await first.client.get("/v1/subscriptions")).json()["subscriptions"]
            unnamed = next(s["id"] for s in listed if s["name"] is None)
            await update(first, "r-1")
            await update(second, "r-1", "COMPLETED")
            await eventually(lambda: len(new.delivered()) == 2, timeout=10)
            await eventually(lambda: len(old.delivered()) == 1, timeout=10)
            declared = [await second.client.delete(f"/v1/subscriptions/{sub_id}")
                        for sub_id in ("sub_cfg-billing", unnamed)]
        async with running_relay(before) as restarted:  # the old config starts again
            still = (await restarted.client.get("/v1/subscriptions")).json()["subscriptions"]
            refused = await restarted.client.delete("/v1/subscriptions/sub_cfg-billing")
            gone = await restarted.client.delete(f"/v1/subscriptions/{unnamed}")

    assert sorted(s["id"] for s in listed) == sorted(["sub_cfg-billing", unnamed])
    # The newer config's definition of billing (the last one registered) is the one in use.
    assert [r.payload["data"]["state"] for r in old.received] == ["succeeded"]
    assert [answer.status_code for answer in declared] == [409, 409]
    assert sorted(s["id"] for s in still) == sorted(["sub_cfg-billing", unnamed])
    assert (refused.status_code, gone.status_code) == (409, 204)


# -- operational events ---------------------------------------------------------------------------

class Recorder:
    """An `on_ops` callback that remembers what it was told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.told.append((event, data))


@pytest.fixture
async def stores(request, tmp_path) -> AsyncIterator[list[Store]]:
    """One SQLite store, or two Redis stores on one Redis (two instances)."""
    kind = request.param
    urls = [f"sqlite:///{tmp_path}/ops.db"] if kind == "sqlite" else [redis_url()] * 2
    opened = [open_store(url) for url in urls]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


@pytest.mark.parametrize("stores", ["sqlite", "redis"], indirect=True)
async def test_failing_and_disabled_are_told_once_each_with_the_subscription(stores, caplog):
    consumer = Consumer(status=500)
    config = OutboundConfig(allow_private_targets=True, delivery_retry_scale=SCALE)
    recorders = [Recorder() for _ in stores]
    services = [Outbound(config, store, Metrics(), on_ops=recorder)
                for store, recorder in zip(stores, recorders, strict=True)]
    caplog.set_level(logging.INFO, logger="relay.outbound.health")
    async with serving_consumer(consumer) as url:
        await stores[0].outbox.save_subscription(Subscription("sub_ops", url, ("*",), SECRET))
        for service in services:
            await service.start()
        try:
            for index in range(6):
                new = Job(id=f"job-{index}", provider="gen", schema="generation",
                          external_id=f"x-{index}", version=1)
                await stores[0].apply("gen", new.external_id, lambda _, new=new: new,
                                      source=Source.API, received_at=isoformat(utcnow()))
            await eventually(lambda: sum(len(r.told) for r in recorders) == 1, timeout=15)
            consumer.status = 410  # to the next probe
            await eventually(lambda: sum(len(r.told) for r in recorders) == 2, timeout=15)
        finally:
            for service in services:
                await service.stop()

    told = [item for recorder in recorders for item in recorder.told]
    assert [event for event, _ in told] == ["relay.subscription.failing",
                                            "relay.subscription.disabled"]
    failing, disabled = (data for _, data in told)
    assert (failing["id"], failing["status"], failing["last_error"]) == (
        "sub_ops", "failing", "answered 500")
    assert (disabled["status"], disabled["enabled"]) == ("disabled", False)
    assert "410" in disabled["disabled_reason"]
    assert "secret" not in failing
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.outbound.health"]
    assert lines == ["subscription sub_ops is failing: answered 500",
                     f"subscription sub_ops is disabled: {disabled['disabled_reason']}"]


# -- the rules of a subscription's health, on their own -------------------------------------------

NOW = 1_000_000.0
POLICY = Policy(max_age=3600.0, rng=random.Random(7))


def ended(status: int | None, delivery_id: str = "dlv_1", retry_after: float = 0.0) -> Outcome:
    attempt = Attempt("t", 0.1, status, None if status == 200 else f"answered {status}")
    if status == 200:
        return Outcome(delivery_id, attempt, DeliveryStatus.DELIVERED)
    if status == 410:
        return Outcome(delivery_id, attempt, DeliveryStatus.FAILED, reason=GONE)
    return Outcome(delivery_id, attempt, DeliveryStatus.PENDING, NOW + 5,
                   retry_after=retry_after)


def test_the_fifth_failure_in_a_row_makes_it_failing_and_a_success_resets_the_count():
    four = after_attempts(Health(), [ended(500)] * 4, NOW, POLICY)
    assert (four.status, four.consecutive_failures) == (ACTIVE, 4)
    assert after_attempts(four, [ended(200)], NOW, POLICY).consecutive_failures == 0
    five = after_attempts(four, [ended(503)], NOW, POLICY)
    assert (five.status, five.since, five.probes, five.last_error) == (
        FAILING, NOW, 0, "answered 503")
    first_wait = SCHEDULE[0]
    assert NOW + first_wait * (1 - JITTER) <= five.probe_at <= NOW + first_wait * (1 + JITTER)
    back = after_attempts(five, [ended(503), ended(200)], NOW + 9, POLICY)
    assert (back.status, back.consecutive_failures, back.since, back.last_error) == (
        ACTIVE, 0, NOW + 9, "answered 503")


def test_only_probes_space_the_next_probe_and_retry_after_is_a_floor():
    failing = Health(FAILING, 7, "answered 500", NOW, probes=1, probe_at=NOW + 10)
    late = after_attempts(failing, [ended(500, "dlv_9")], NOW + 1, POLICY)  # in flight before
    assert (late.probes, late.probe_at, late.consecutive_failures) == (1, NOW + 10, 8)
    probed = after_attempts(failing, [ended(500, "dlv_2")], NOW + 1, POLICY, probes={"dlv_2"})
    third_wait = SCHEDULE[2]
    assert probed.probes == 2
    assert NOW + 1 + third_wait * (1 - JITTER) <= probed.probe_at
    floored = after_attempts(failing, [ended(503, "dlv_2", retry_after=9000.0)], NOW + 1,
                             POLICY, probes={"dlv_2"})
    assert floored.probe_at == NOW + 1 + 9000.0


def test_a_410_or_failing_past_the_max_age_disables_and_disabled_stays_put():
    gone = after_attempts(Health(), [ended(410), ended(200)], NOW, POLICY)
    assert (gone.status, gone.disabled_reason) == (DISABLED, GONE)
    failing = Health(FAILING, 9, "answered 500", NOW - 3600.0, probes=3)
    expired = after_attempts(failing, [], NOW, POLICY)
    assert expired.status is DISABLED
    assert expired.disabled_reason == "failing for more than 3600 s: answered 500"
    assert after_attempts(failing, [], NOW - 1, POLICY) == failing
    again = enabled(expired, NOW + 5)
    assert (again.status, again.consecutive_failures, again.disabled_reason, again.since) == (
        ACTIVE, 0, None, NOW + 5)
    assert again.last_error == "answered 500"  # what went wrong last is still shown
