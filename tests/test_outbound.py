"""Outbound webhooks against real consumers: tiny Starlette apps served by
uvicorn on loopback (so these relays allow private targets), signatures checked with the
`standardwebhooks` package, retry schedules shrunk through `server.delivery_retry_scale`; and
the retry policy and the SSRF guard's pinning on their own. The crash test is in
tests/test_outbound_restart.py."""

from __future__ import annotations

import ipaddress
import random
import time

import httpx
import pytest

from relay.app import create_app
from relay.errors import ConfigError
from relay.models import Event, Job, Source
from relay.outbound import targets
from relay.outbound.policy import JITTER, REPEAT_EVERY, SCHEDULE, Policy
from relay.outbound.sending import Sent
from relay.outbound.targets import Guard, Target
from relay.outbound.worker import MAX_IN_FLIGHT
from relay.runtime.server import serving
from relay.settings import parse_settings
from relay.store.outbox import Attempt, Delivery, DeliveryStatus, Subscription
from tests.consumers import (
    SECRET,
    Consumer,
    deliveries,
    outbound_settings,
    serving_consumer,
    subscribe,
    update,
    verified,
)
from tests.senders import WEBHOOK_SECRET
from tests.support import (
    Relay,
    eventually,
    make_settings,
    redis_url,
    running_relay,
    sse,
)

pytestmark = pytest.mark.anyio


# -- delivery ---------------------------------------------------------------------------------

async def test_a_consumer_receives_every_update_of_a_job_once_in_order_and_signed():
    consumer = Consumer()
    async with serving_consumer(consumer) as url, running_relay(outbound_settings()) as relay:
        created = await subscribe(relay, url, topics=["provider:gen"])
        assert created["secret"].startswith("whsec_") and created["topics"] == ["provider:gen"]
        job_id = (await relay.track("gen", "o-1"))["job"]["id"]
        await update(relay, "o-1", percent=20)
        await update(relay, "o-1", percent=60)
        await update(relay, "o-1", "COMPLETED")
        await eventually(lambda: len(consumer.received) >= 4, timeout=5)
        history = (await relay.client.get(f"/v1/jobs/{job_id}/history")).json()["events"]
        listed = await deliveries(relay, created["id"])

    payloads = [verified(created["secret"], r) for r in consumer.received]
    assert [r.headers["webhook-id"] for r in consumer.received] == [e["cursor"] for e in history]
    assert [p["data"] for p in payloads] == [e["job"] for e in history]
    assert [p["data"]["version"] for p in payloads] == [1, 2, 3, 4]
    assert {p["type"] for p in payloads} == {"job.updated"}
    assert [p["timestamp"] for p in payloads] == [e["received_at"] for e in history]
    assert [(d["status"], [a["status"] for a in d["attempts"]]) for d in listed] \
        == [("delivered", [200])] * 4


async def test_a_consumer_answering_500_three_times_gets_the_delivery_on_the_fourth_attempt():
    consumer = Consumer(answers=[500, 500, 500])
    async with serving_consumer(consumer) as url, running_relay(outbound_settings()) as relay:
        created = await subscribe(relay, url)
        await relay.track("gen", "r-1")
        await eventually(lambda: consumer.delivered(), timeout=10)
        [delivery] = await deliveries(relay, created["id"])

    assert [r.status for r in consumer.received] == [500, 500, 500, 200]
    assert len({r.headers["webhook-id"] for r in consumer.received}) == 1  # stable on retries
    assert len({r.body for r in consumer.received}) == 1
    assert delivery["status"] == "delivered" and delivery["next_attempt_at"] is None
    attempts = delivery["attempts"]
    assert [a["status"] for a in attempts] == [500, 500, 500, 200]
    assert [a["error"] for a in attempts] == ["answered 500"] * 3 + [None]
    assert all(a["duration"] >= 0 and a["at"].endswith("Z") for a in attempts)
    gaps = [b.at - a.at for a, b in zip(consumer.received, consumer.received[1:], strict=False)]
    assert gaps[2] > gaps[0]  # backing off


async def test_a_consumer_answering_410_disables_its_subscription():
    consumer = Consumer(status=410)
    async with serving_consumer(consumer) as url, running_relay(outbound_settings()) as relay:
        created = await subscribe(relay, url)
        await relay.track("gen", "g-1")
        path = f"/v1/subscriptions/{created['id']}"
        await eventually(lambda: _disabled(relay, path), timeout=5)
        subscription = (await relay.client.get(path)).json()
        await update(relay, "g-1", percent=50)  # its delivery would be stored with the event
        listed = await deliveries(relay, created["id"])

    assert subscription["enabled"] is False and "410" in subscription["disabled_reason"]
    assert len(consumer.received) == 1
    assert [(d["status"], d["reason"]) for d in listed] == [
        ("failed", subscription["disabled_reason"])]


async def _disabled(relay: Relay, path: str) -> bool:
    return (await relay.client.get(path)).json()["enabled"] is False


async def test_a_retry_after_from_the_consumer_is_honoured():
    consumer = Consumer(answers=[503], headers={"Retry-After": "1"})
    async with serving_consumer(consumer) as url, running_relay(outbound_settings()) as relay:
        await subscribe(relay, url)
        await relay.track("gen", "ra-1")
        await eventually(lambda: consumer.delivered(), timeout=10)

    first, second = consumer.received
    assert second.at - first.at >= 1.0  # not the 25 ms of the shrunk schedule


async def test_updates_queued_behind_a_failing_delivery_never_take_the_job_back_in_time():
    consumer = Consumer(answers=[500, 500])
    async with serving_consumer(consumer) as url, running_relay(outbound_settings()) as relay:
        created = await subscribe(relay, url)
        await relay.track("gen", "q-1")
        await eventually(lambda: len(consumer.received) >= 1, timeout=5)
        for percent in (10, 20, 30, 40):
            await update(relay, "q-1", percent=percent)
        await eventually(lambda: any(r.version == 5 for r in consumer.delivered()), timeout=10)
        listed = await deliveries(relay, created["id"])

    versions = [r.version for r in consumer.received]
    assert versions == sorted(versions) and versions[-1] == 5
    assert {d["status"] for d in listed} <= {"delivered", "superseded"}
    superseded = [d for d in listed if d["status"] == "superseded"]
    assert superseded and all(d["superseded_by"] for d in superseded)


async def test_a_failed_delivery_is_sent_again_when_retried_through_the_api():
    consumer = Consumer(answers=[500])
    settings = outbound_settings(delivery_max_age=0.001)  # gives up after the first attempt
    async with serving_consumer(consumer) as url, running_relay(settings) as relay:
        created = await subscribe(relay, url)
        await relay.track("gen", "f-1")
        await eventually(lambda: _statuses(relay, created["id"], {"failed"}), timeout=5)
        [failed] = await deliveries(relay, created["id"])
        assert failed["reason"].startswith("gave up after 1 attempts")
        answer = await relay.client.post(f"/v1/deliveries/{failed['id']}/retry")
        assert answer.status_code == 200 and answer.json()["status"] == "pending"
        await eventually(lambda: _statuses(relay, created["id"], {"delivered"}), timeout=5)
        again = await relay.client.post(f"/v1/deliveries/{failed['id']}/retry")
        missing = await relay.client.post("/v1/deliveries/dlv_999999/retry")

    assert [r.status for r in consumer.received] == [500, 200]
    assert (again.status_code, again.json()["error"]) == (409, "not_failed")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


async def _statuses(relay: Relay, subscription_id: str, wanted: set[str]) -> bool:
    listed = await deliveries(relay, subscription_id)
    return bool(listed) and {d["status"] for d in listed} == wanted


# -- isolation --------------------------------------------------------------------------------

async def test_a_consumer_that_hangs_delays_neither_sse_nor_another_consumer():
    hanging, fast = Consumer(hang=True), Consumer()
    jobs = MAX_IN_FLIGHT + 4
    async with serving_consumer(hanging) as hang_url, serving_consumer(fast) as fast_url, \
            running_relay(outbound_settings()) as relay:
        await subscribe(relay, hang_url)
        await subscribe(relay, fast_url)
        async with sse(relay.client, "/v1/events?topic=provider:gen") as stream:
            started = time.monotonic()
            for index in range(jobs):
                await update(relay, f"h-{index}")
                assert (await stream.next(timeout=2)).data["external_id"] == f"h-{index}"
            await eventually(lambda: len(fast.delivered()) == jobs, timeout=3)
            elapsed = time.monotonic() - started
            await eventually(lambda: len(hanging.received) == MAX_IN_FLIGHT, timeout=3)

    assert elapsed < 3  # far from the 15 s the hung requests wait for an answer
    assert len(hanging.received) == MAX_IN_FLIGHT  # its cap: it holds no more than its slots


# -- the SSRF guard ---------------------------------------------------------------------------

@pytest.mark.parametrize("url, kind", [
    ("http://127.0.0.1:9/hook", "loopback"), ("http://localhost/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[fd00::1]/hook", "private"), ("https://10.0.0.7/hook", "private"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
])
async def test_a_subscription_to_a_private_target_is_refused_with_a_clear_422(url, kind):
    async with running_relay(make_settings()) as relay:
        answer = await relay.client.post("/v1/subscriptions", json={"url": url})
        listed = (await relay.client.get("/v1/subscriptions")).json()

    assert answer.status_code == 422
    body = answer.json()
    assert (body["error"], body["details"]["field"]) == ("forbidden_target", "url")
    assert kind in body["message"] and "server.allow_private_targets" in body["message"]
    assert listed == {"subscriptions": []}


async def test_a_private_target_is_refused_at_send_time_without_a_request():
    consumer = Consumer()
    app = create_app(make_settings())
    async with serving_consumer(consumer) as url, serving(app) as base, \
            httpx.AsyncClient(base_url=base) as client:
        relay = Relay(base, app.state.store, client)
        # As if its host had resolved to a public address when it was created.
        await relay.store.outbox.save_subscription(Subscription("sub_x", url, ("*",), SECRET))
        app.state.outbound.changed()
        await relay.track("gen", "s-1")
        await eventually(lambda: _attempted(relay, "sub_x"), timeout=5)
        [delivery] = await deliveries(relay, "sub_x")

    [attempt] = delivery["attempts"][:1]
    assert attempt["status"] is None and "loopback" in attempt["error"]
    assert delivery["status"] == "pending"  # retried on the schedule, in case DNS changes
    assert consumer.received == []


async def _attempted(relay: Relay, subscription_id: str) -> bool:
    listed = await deliveries(relay, subscription_id)
    return bool(listed and listed[0]["attempts"])


@pytest.mark.parametrize("entry, key", [
    ({"url": "http://127.0.0.1:8080/hook", "secret": SECRET}, "subscriptions[0].url"),
    ({"url": "http://[::1]/hook", "secret": SECRET}, "subscriptions[0].url"),
    ({"url": "https://consumer.example/hook"}, "subscriptions[0].secret"),
    ({"url": "https://consumer.example/hook", "secret": "whsec_short"}, "subscriptions[0].secret"),
])
def test_a_bad_config_subscription_fails_startup_naming_its_key(entry, key):
    settings = parse_settings({"subscriptions": [entry]})
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        create_app(settings)


# -- the API ----------------------------------------------------------------------------------

async def test_the_secret_is_shown_only_when_the_subscription_is_created():
    async with running_relay(outbound_settings()) as relay:
        created = await subscribe(relay, "http://127.0.0.1:9/hook", secret=SECRET)
        one = (await relay.client.get(f"/v1/subscriptions/{created['id']}")).json()
        every = (await relay.client.get("/v1/subscriptions")).json()["subscriptions"]
        deleted = await relay.client.delete(f"/v1/subscriptions/{created['id']}")
        gone = await relay.client.get(f"/v1/subscriptions/{created['id']}")

    assert created["secret"] == SECRET
    assert "secret" not in one and one == every[0] and one["origin"] == "api"
    assert deleted.status_code == 204 and gone.status_code == 404


@pytest.mark.parametrize("body, field_name", [
    ({}, "url"), ({"url": "ftp://x.example/"}, "url"), ({"url": "http://u:p@x.example/"}, "url"),
    ({"url": "https://x.example/", "topics": []}, "topics"),
    ({"url": "https://x.example/", "topics": "*"}, "topics"),
    ({"url": "https://x.example/", "secret": "not-base64!"}, "secret"),
])
async def test_an_invalid_subscription_is_a_422_naming_the_field(body, field_name):
    async with running_relay(outbound_settings()) as relay:
        answer = await relay.client.post("/v1/subscriptions", json=body)
    assert answer.status_code == 422
    assert answer.json()["details"]["field"] == field_name


async def test_config_subscriptions_are_registered_once_with_a_stable_id(tmp_path):
    consumer = Consumer()
    async with serving_consumer(consumer) as url:
        settings = parse_settings({
            "server": {"store": f"sqlite:///{tmp_path}/relay.db", "allow_private_targets": True},
            "providers": {"gen": {"schema": "generation", "webhook_secret": WEBHOOK_SECRET}},
            "subscriptions": [{"url": url, "topics": ["provider:gen"], "secret": SECRET}]})
        ids = []
        for _ in range(2):
            async with running_relay(settings) as relay:
                listed = (await relay.client.get("/v1/subscriptions")).json()["subscriptions"]
                ids.append([s["id"] for s in listed])
                refused = await relay.client.delete(f"/v1/subscriptions/{listed[0]['id']}")
        assert ids[0] == ids[1] and len(ids[0]) == 1 and listed[0]["origin"] == "config"
        assert (refused.status_code, refused.json()["error"]) == (409, "config_subscription")


async def test_metrics_count_deliveries_attempts_and_the_queue():
    consumer = Consumer(answers=[500])
    async with serving_consumer(consumer) as url, running_relay(outbound_settings()) as relay:
        await subscribe(relay, url)
        await relay.track("gen", "m-1")
        await eventually(lambda: consumer.delivered(), timeout=5)
        await eventually(lambda: _metric(relay, 'relay_outbound_deliveries_total{outcome='
                                                '"delivered"} 1.0'), timeout=5)
        text = (await relay.client.get("/metrics")).text

    assert 'relay_outbound_attempts_total{result="server_error"} 1.0' in text
    assert 'relay_outbound_attempts_total{result="success"} 1.0' in text
    assert "# TYPE relay_outbound_pending gauge" in text
    assert "# TYPE relay_outbound_oldest_pending_seconds gauge" in text


async def _metric(relay: Relay, line: str) -> bool:
    return line in (await relay.client.get("/metrics")).text


# -- several instances ------------------------------------------------------------------------

async def test_two_instances_on_one_redis_send_each_delivery_once():
    store = redis_url()
    consumer = Consumer()
    async with serving_consumer(consumer) as url, \
            running_relay(outbound_settings(store)) as first, \
            running_relay(outbound_settings(store)) as second:
        created = await subscribe(first, url)
        cursors = [await update((first, second)[index % 2], f"two-{index}")
                   for index in range(10)]
        await eventually(lambda: _statuses(second, created["id"], {"delivered"}), timeout=10)
        listed = await deliveries(second, created["id"])

    ids = [r.headers["webhook-id"] for r in consumer.received]
    assert len(listed) == 10
    assert sorted(ids) == sorted(cursors)  # each once


# -- the retry policy, and its settings ---------------------------------------------------------

def test_retries_follow_the_schedule_with_jitter_then_every_few_hours():
    policy = Policy(rng=random.Random(7))
    for tries, base in enumerate([*SCHEDULE, REPEAT_EVERY, REPEAT_EVERY], start=1):
        waits = {policy.wait(tries) for _ in range(20)}
        assert all(base * (1 - JITTER) <= w <= base * (1 + JITTER) for w in waits)
        assert len(waits) > 1  # jittered
    assert SCHEDULE[:6] == (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    assert Policy(scale=0.01, rng=random.Random(7)).wait(1) <= 0.05 * (1 + JITTER)


def test_a_delivery_gives_up_once_its_next_try_would_pass_the_max_age():
    policy = Policy(max_age=3600.0, rng=random.Random(7))
    event = Event("1", Job(id="j", provider="p", schema="generation", external_id="e"),
                  Source.API, "2026-01-01T00:00:00.000Z")
    delivery = Delivery("dlv_1", "sub", event, DeliveryStatus.PENDING, 0.0, 0.0, tries=4,
                        since=0.0)
    failed = Sent(Attempt("t", 0.1, 500, "answered 500"), "server_error")
    retry = policy.outcome(delivery, failed, now=1000.0)  # 30 min more: within the hour
    assert retry.status is DeliveryStatus.PENDING and 1000 + 1440 <= retry.next_at <= 1000 + 2160
    assert policy.outcome(delivery, failed, now=2200.0).status is DeliveryStatus.FAILED
    waited = policy.outcome(delivery, Sent(failed.attempt, "server_error", retry_after=3000.0),
                            now=0.0)
    assert waited.next_at == 3000.0  # Retry-After, when longer than the schedule
    gone = policy.outcome(delivery, Sent(Attempt("t", 0.1, 410, "x"), "gone"), now=0.0)
    assert gone.status is DeliveryStatus.FAILED and "410" in gone.reason


@pytest.mark.parametrize("key, value", [("delivery_max_age", -1), ("delivery_retry_scale", 0),
                                        ("delivery_retry_scale", "fast")])
def test_a_bad_delivery_setting_is_a_config_error_naming_it(key, value):
    with pytest.raises(ConfigError, match=f"server.{key}"):
        parse_settings({"server": {key: value}})


async def test_a_public_target_is_sent_to_the_address_that_was_checked():
    assert await Guard(False).target("https://93.184.215.14/hook") == Target(
        "https://93.184.215.14/hook")
    pinned = targets._pinned(httpx.URL("https://consumer.example:8443/hook?x=1"),
                             ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c"))
    assert pinned == Target("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/hook?x=1",
                            {"Host": "consumer.example:8443"},
                            {"sni_hostname": "consumer.example"})  # the certificate's name
