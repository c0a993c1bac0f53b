"""Operational events on the topic `relay:ops`: a subscription becoming
failing or disabled, a provider refusing the relay's account and serving it again, told to
SSE streams of the topic and to the subscriptions that name it, counted on /metrics; and
the info lines of a provider's 429 pause. Against a real consumer that fails on command and
real simulated providers, through a real relay."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from relay.sim import Fault, jobstatus_timeline
from tests.consumers import (
    Consumer,
    outbound_settings,
    serving_consumer,
    subscribe,
    update,
    verified,
)
from tests.simulated import KEY, counter, final, relay_for, settings_for, simulators
from tests.support import Relay, eventually, redis_url, running_relay, sse

pytestmark = pytest.mark.anyio

OPS = "/v1/events?topic=relay:ops"
FAILING, DISABLED = "relay.subscription.failing", "relay.subscription.disabled"
UNAUTHORIZED, RECOVERED = "relay.provider.unauthorized", "relay.provider.recovered"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path}/relay.db" if request.param == "sqlite" else redis_url()


async def metric(relay: Relay, line: str) -> bool:
    return line in (await relay.client.get("/metrics")).text


def told(consumer: Consumer, secret: str) -> list[dict[str, Any]]:
    """What an ops subscription was sent, each checked against its signature."""
    return [verified(secret, received) for received in consumer.delivered()]


async def test_a_failing_then_disabled_consumer_is_told_to_sse_and_to_ops_subscriptions(
        store_url, caplog):
    caplog.set_level(logging.INFO, logger="relay.outbound.health")
    failing_consumer, ops_consumer = Consumer(status=500), Consumer()
    async with serving_consumer(failing_consumer) as url, \
            serving_consumer(ops_consumer) as ops_url, \
            running_relay(outbound_settings(store_url)) as relay, \
            sse(relay.client, OPS) as stream:
        sub_id = (await subscribe(relay, url))["id"]
        ops_sub = await subscribe(relay, ops_url, topics=["relay:ops"])
        for index in range(6):
            await update(relay, f"p-{index}")
        failing = await stream.next(timeout=15)
        failing_consumer.status = 410  # to its next probe
        disabled = await stream.next(timeout=15)
        await eventually(lambda: len(ops_consumer.delivered()) == 2, timeout=10)
        await eventually(lambda: metric(relay, 'relay_outbound_subscriptions{status="disabled"} '
                                               '1.0'), timeout=10)
        metrics = (await relay.client.get("/metrics")).text

    assert (failing.event, failing.id) == (FAILING, None)  # not in the log: no cursor
    assert (failing.data["id"], failing.data["status"], failing.data["last_error"]) == (
        sub_id, "failing", "answered 500")
    assert "secret" not in failing.data
    assert (disabled.event, disabled.data["id"], disabled.data["status"]) == (
        DISABLED, sub_id, "disabled")
    sent = told(ops_consumer, ops_sub["secret"])
    assert [(s["type"], s["data"]["id"], s["data"]["status"]) for s in sent] == [
        (FAILING, sub_id, "failing"), (DISABLED, sub_id, "disabled")]
    assert all(s["timestamp"].endswith("Z") for s in sent)
    logged = [(r.subscription_id, r.status) for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "relay.outbound.health"]
    assert logged == [(sub_id, "failing"), (sub_id, "disabled")]
    assert f'relay_ops_events_total{{type="{FAILING}"}} 1.0' in metrics
    assert f'relay_ops_events_total{{type="{DISABLED}"}} 1.0' in metrics


async def test_a_subscription_to_every_job_topic_gets_no_ops_events():
    failing_consumer, everything = Consumer(status=500), Consumer()
    async with serving_consumer(failing_consumer) as url, \
            serving_consumer(everything) as every_url, \
            running_relay(outbound_settings()) as relay, sse(relay.client, OPS) as stream:
        await subscribe(relay, url)
        await subscribe(relay, every_url)  # topics ["*"]: every job, but no ops events
        for index in range(6):
            await update(relay, f"p-{index}")
        assert (await stream.next(timeout=15)).event == FAILING
        await eventually(lambda: len(everything.delivered()) >= 6, timeout=10)

    assert {r.payload["type"] for r in everything.delivered()} == {"job.updated"}


async def test_a_provider_answering_401_then_200_is_unauthorized_once_then_recovered():
    ops_consumer = Consumer()
    async with simulators(jobs_key="the-real-key") as sims, serving_consumer(ops_consumer) as \
            ops_url, relay_for(settings_for(sims, server={"allow_private_targets": True},
                                            jobs={"max_concurrency": 4})) as relay, \
            sse(relay.client, OPS) as stream:
        ops_sub = await subscribe(relay, ops_url, topics=["relay:ops"])
        externals = [sims.jobs.create_job(jobstatus_timeline(step=0.05)) for _ in range(4)]
        tracked = [await relay.track("jobs", e) for e in externals]
        unauthorized = await stream.next(timeout=15)
        await eventually(lambda: len(sims.jobs_seen.arrivals) >= 8)  # refused polls, probes
        sims.jobs.api_key = KEY  # the credentials are fixed
        recovered = await stream.next(timeout=15)
        for t in tracked:
            assert (await final(relay, t["job"]["id"]))["state"] == "succeeded"
        await eventually(lambda: len(ops_consumer.delivered()) == 2, timeout=10)
        counted = await counter(relay, "relay_ops_events_total", type=UNAUTHORIZED)

    assert (unauthorized.event, recovered.event) == (UNAUTHORIZED, RECOVERED)
    assert {k: unauthorized.data[k] for k in ("provider", "schema", "polling", "status")} == {
        "provider": "jobs", "schema": "jobstatus", "polling": "unauthorized", "status": 401}
    assert {k: recovered.data[k] for k in ("provider", "polling")} == {
        "provider": "jobs", "polling": "ok"}
    assert [s["type"] for s in told(ops_consumer, ops_sub["secret"])] == [UNAUTHORIZED,
                                                                            RECOVERED]
    assert counted == 1  # once per change, not once per refused poll


async def test_a_429_pause_and_its_end_are_logged_once_each(caplog):
    caplog.set_level(logging.INFO, logger="relay.polling")
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        sims.jobs.faults.push(Fault(status=429, retry_after=0.3, count=3))
        external = sims.jobs.create_job(jobstatus_timeline(step=0.05))
        job = await relay.track("jobs", external)
        assert (await final(relay, job["job"]["id"]))["state"] == "succeeded"
        pauses = await counter(relay, "relay_provider_pauses_total", provider="jobs")

    lines = [r for r in caplog.records if r.name == "relay.polling.schedule"]
    paused = [r for r in lines if "pause until" in r.getMessage()]
    again = [r for r in lines if "answers polls again" in r.getMessage()]
    assert len(paused) == pauses >= 1 and len(again) == 1
    assert paused[0].provider == "jobs" and paused[0].until.endswith("Z")  # type: ignore[attr-defined]


async def test_on_redis_the_streams_of_every_instance_hear_an_ops_event_once_and_it_is_sent_once():
    url = redis_url()
    failing_consumer, ops_consumer = Consumer(status=500), Consumer()
    async with serving_consumer(failing_consumer) as hook, \
            serving_consumer(ops_consumer) as ops_url, \
            running_relay(outbound_settings(url)) as first, \
            running_relay(outbound_settings(url)) as second, \
            sse(first.client, OPS) as on_first, sse(second.client, OPS) as on_second:
        sub_id = (await subscribe(first, hook))["id"]
        ops_sub = await subscribe(second, ops_url, topics=["relay:ops"])
        for index in range(6):
            await update(first, f"p-{index}")
        heard = [await on_first.next(timeout=15), await on_second.next(timeout=15)]
        await eventually(lambda: len(ops_consumer.delivered()) >= 1, timeout=10)
        for stream in (on_first, on_second):  # no instance told it twice
            with pytest.raises(TimeoutError):
                await stream.next(timeout=1)

    assert [(e.event, e.data["id"]) for e in heard] == [(FAILING, sub_id)] * 2
    assert [s["type"] for s in told(ops_consumer, ops_sub["secret"])] == [FAILING]


async def test_on_redis_two_instances_polling_a_refusing_provider_tell_it_once():
    url = redis_url()
    async with simulators(jobs_key="the-real-key") as sims, \
            relay_for(settings_for(sims, url)) as first, \
            relay_for(settings_for(sims, url)) as second, \
            sse(first.client, OPS) as stream:
        externals = [sims.jobs.create_job(jobstatus_timeline(step=0.05)) for _ in range(8)]
        tracked = [await relay.track("jobs", e)
                   for relay, e in zip([first, second] * 4, externals, strict=True)]

        async def both_refused() -> bool:
            ready = [(await relay.client.get("/readyz")).json() for relay in (first, second)]
            return all(r.get("providers", {}).get("jobs", {}).get("polling") == "unauthorized"
                       for r in ready)

        await eventually(both_refused, timeout=15)
        unauthorized = await stream.next(timeout=15)
        sims.jobs.api_key = KEY
        for t in tracked:
            assert (await final(first, t["job"]["id"]))["state"] == "succeeded"
        recovered = await stream.next(timeout=15)
        with pytest.raises(TimeoutError):
            await stream.next(timeout=1)
        counted = [await counter(relay, "relay_ops_events_total", type=UNAUTHORIZED)
                   for relay in (first, second)]

    assert (unauthorized.event, recovered.event) == (UNAUTHORIZED, RECOVERED)
    assert sorted(counted) == [0, 1]
