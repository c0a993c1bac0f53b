"""relay.client against a real relay over real HTTP: the jobs API and its error envelope,
`follow` resuming across a killed relay process and a store reset, and `verify_delivery`
cross-checked with the `standardwebhooks` package both ways."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.client import InvalidDelivery, RelayApiError, RelayClient, verify_delivery
from relay.runtime.server import serving
from relay.settings import parse_settings
from relay.sim import JobStatusProvider, jobstatus_timeline
from tests.consumers import Consumer, outbound_settings, serving_consumer, subscribe
from tests.senders import WEBHOOK_SECRET, signed, standard_headers
from tests.support import (
    RelayProcess,
    eventually,
    free_port,
    make_settings,
    running_relay,
)

pytestmark = pytest.mark.anyio

API_KEY = "client-test-key"


async def webhook(base_url: str, payload: dict[str, Any]) -> str:
    """Posts a signed `generation` webhook to provider `gen`; the cursor it was stored at."""
    body, headers = signed(payload)
    async with httpx.AsyncClient(base_url=base_url) as http:
        answer = await http.post("/hooks/gen", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["cursor"])


# -- the jobs API -----------------------------------------------------------------------------

async def test_track_get_list_and_wait_go_through_the_real_api():
    async with running_relay(make_settings(api_keys=[API_KEY])) as relay, \
            RelayClient(relay.url, api_key=API_KEY) as client:
        tracked = await client.track("gen", "c-1", topics=["user:7"], metadata={"k": "v"})
        job_id = tracked["job"]["id"]
        assert tracked["subscribe_token"] and tracked["events_url"].endswith(
            f"/v1/jobs/{job_id}/events?token={tracked['subscribe_token']}")
        assert (await client.get(job_id))["metadata"] == {"k": "v"}
        page = await client.list(topic="user:7", limit=5)
        assert ([job["id"] for job in page["jobs"]], page["total"], page["limit"]) == (
            [job_id], 1, 5)

        still_running = await client.wait(job_id, timeout=0.2)
        assert still_running["terminal"] is False
        waiting = asyncio.create_task(client.wait(job_id, timeout=10))
        await webhook(relay.url, {"id": "c-1", "status": "COMPLETED"})
        finished = await asyncio.wait_for(waiting, 10)
        assert (finished["state"], finished["terminal"]) == ("succeeded", True)


async def test_every_error_carries_the_envelope_and_the_status():
    async with running_relay(make_settings(api_keys=[API_KEY])) as relay:
        async with RelayClient(relay.url, api_key="wrong") as stranger:
            with pytest.raises(RelayApiError) as refused:
                await stranger.list()
        assert (refused.value.status, refused.value.error) == (401, "unauthorized")
        assert refused.value.request_id and refused.value.envelope["message"]
        async with RelayClient(relay.url, api_key=API_KEY) as client:
            with pytest.raises(RelayApiError) as missing:
                await client.get("no-such-job")
            assert (missing.value.status, missing.value.error) == (404, "not_found")
            assert set(missing.value.envelope) == {"error", "message", "details", "request_id"}
            job_id = (await client.track("gen", "c-2"))["job"]["id"]
            with pytest.raises(RelayApiError) as too_long:
                await client.wait(job_id, timeout=56)
            assert too_long.value.details == {"field": "timeout"}
            with pytest.raises(RelayApiError) as unsupported:
                await client.cancel(job_id)
            assert (unsupported.value.status, unsupported.value.error) == (
                409, "cancel_not_supported")
            assert not unsupported.value.passing


async def test_a_relay_that_does_not_answer_is_an_error_with_no_status():
    async with RelayClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(RelayApiError) as nobody:
            await client.get("anything")
    assert (nobody.value.status, nobody.value.error, nobody.value.passing) == (
        None, "unreachable", True)


async def test_cancel_stops_a_jobstatus_job_at_its_provider():
    provider = JobStatusProvider("sim-key")
    async with serving(provider.app) as provider_url:
        settings = parse_settings({"server": {"store": "memory://"}, "providers": {"jobs": {
            "schema": "jobstatus", "base_url": provider_url, "api_key": "sim-key"}}})
        async with running_relay(settings) as relay, RelayClient(relay.url) as client:
            external_id = provider.create_job(jobstatus_timeline(step=30))
            job_id = (await client.track("jobs", external_id))["job"]["id"]
            canceled = await client.cancel(job_id)
            assert (canceled["state"], canceled["terminal"]) == ("canceled", True)
            assert provider.snapshot(external_id)["status"] == "cancelled"
            with pytest.raises(RelayApiError) as again:
                await client.cancel(job_id)
            assert (again.value.status, again.value.error) == (409, "already_terminal")


# -- follow -----------------------------------------------------------------------------------

async def test_follow_yields_a_job_from_its_current_state_to_its_end():
    async with running_relay() as relay, RelayClient(relay.url) as client:
        tracked = await client.track("gen", "f-1")
        job_id = tracked["job"]["id"]
        versions = []
        async for job in client.follow(job_id, token=tracked["subscribe_token"]):
            versions.append(job["version"])
            if len(versions) == 1:
                await webhook(relay.url, {"id": "f-1", "status": "PROCESSING"})
                await webhook(relay.url, {"id": "f-1", "status": "COMPLETED"})
        assert versions == [1, 2, 3]  # and the iterator ended on the terminal state
        last = (await relay.client.get(f"/v1/jobs/{job_id}/history")).json()["events"][-1]
        # Resuming after the end: the relay answers 204 and follow yields nothing.
        assert [job async for job in client.follow(job_id, last_event_id=last["cursor"])] == []


async def test_follow_raises_when_its_token_is_refused_instead_of_retrying():
    async with running_relay() as relay, RelayClient(relay.url) as client:
        a = await client.track("gen", "f-a")
        b = await client.track("gen", "f-b")
        with pytest.raises(RelayApiError) as forbidden:
            async for _ in client.follow(b["job"]["id"], token=a["subscribe_token"]):
                pass
        assert (forbidden.value.status, forbidden.value.error) == (403, "forbidden")
        expiring = (await client.token(jobs=[a["job"]["id"]], ttl=1))["token"]
        await eventually(lambda: _expired(expiring), timeout=5)
        with pytest.raises(RelayApiError) as expired:
            async for _ in client.follow(a["job"]["id"], token=expiring):
                pass
        assert (expired.value.status, expired.value.error) == (401, "token_expired")


def _expired(token: str) -> bool:
    """Whether a subscribe token's expiry (in its signed payload) has passed."""
    payload = token.split(".")[0]
    expires = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["e"]
    return time.time() > expires


def relay_config(tmp_path: Path, store: str) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nstore = "{store}"\n\n[providers.gen]\n'
                      f'schema = "generation"\nwebhook_secret = "{WEBHOOK_SECRET}"\n')
    return config


@contextlib.contextmanager
def relay_process(tmp_path: Path, store: str) -> Any:
    process = RelayProcess(relay_config(tmp_path, store), free_port()).start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.asynccontextmanager
async def following(client: RelayClient, **options: Any) -> AsyncIterator[Any]:
    """`client.follow(**options)`, closed at the end of the block."""
    stream = client.follow(**options)
    try:
        yield stream
    finally:
        await stream.aclose()


@pytest.mark.slow
async def test_follow_resumes_across_a_killed_relay_with_nothing_missed_or_repeated(tmp_path):
    with relay_process(tmp_path, f"sqlite:///{tmp_path}/relay.db") as process:
        async with RelayClient(process.url) as client:
            job_id = (await client.track("gen", "r-1"))["job"]["id"]
            async with following(client, job_id=job_id, reconnect_delay=0.1) as stream:
                seen = [(await anext(stream))["version"]]
                process.kill()
                process.start()  # same port, same SQLite file
                # Stored while the follower was disconnected: it gets them by Last-Event-ID.
                await webhook(process.url, {"id": "r-1", "status": "PROCESSING",
                                            "progress_percent": 30})
                await webhook(process.url, {"id": "r-1", "status": "PROCESSING",
                                            "progress_percent": 60})
                seen += [(await anext(stream))["version"] for _ in range(2)]
                await webhook(process.url, {"id": "r-1", "status": "COMPLETED"})
                seen += [job["version"] async for job in stream]
    assert seen == [1, 2, 3, 4]


@pytest.mark.slow
async def test_follow_applies_relay_reset_after_the_store_was_reset(tmp_path):
    resets: list[str] = []
    with relay_process(tmp_path, "memory://") as process:
        async with RelayClient(process.url) as client:
            first = (await client.track("gen", "before"))["job"]["id"]
            async with following(client, topics=["provider:gen"], on_reset=resets.append,
                                 reconnect_delay=0.1) as stream:
                assert (await anext(stream))["id"] == first
                for percent in (20, 40, 60):
                    await webhook(process.url, {"id": "before", "status": "PROCESSING",
                                                "progress_percent": percent})
                    assert (await anext(stream))["progress"] == percent / 100
                process.kill()
                # A memory store starts empty, with a new cursor epoch: the follower's
                # cursor names no event of the new log: unplaceable.
                process.start()
                second = (await client.track("gen", "after"))["job"]["id"]
                snapshot = await asyncio.wait_for(anext(stream), 15)
    assert resets == ["unknown_cursor"]
    assert snapshot["id"] == second


# -- verify_delivery --------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"a consumer's secret of 32 bytes!").decode()
OTHER = "whsec_" + base64.b64encode(b"another secret, not the right 1").decode()


def delivery_cases() -> dict[str, tuple[dict[str, str], bytes]]:
    now = time.time()
    body = json.dumps({"type": "job.updated", "timestamp": "t", "data": {"id": "j"}}).encode()
    genuine = standard_headers(body, SECRET, stamp=int(now))
    other = standard_headers(body, OTHER, stamp=int(now))["webhook-signature"]
    rotated = {**genuine, "webhook-signature": f"{other} {genuine['webhook-signature']}"}
    return {
        "genuine": (genuine, body),
        "signed with both secrets during a rotation": (rotated, body),
        "header names in any case": ({k.title(): v for k, v in genuine.items()}, body),
        "tampered body": (genuine, body.replace(b'"j"', b'"k"')),
        "another secret": (standard_headers(body, OTHER, stamp=int(now)), body),
        "ten minutes old": (standard_headers(body, SECRET, stamp=int(now - 600)), body),
        "ten minutes ahead": (standard_headers(body, SECRET, stamp=int(now + 600)), body),
        "another message id": ({**genuine, "webhook-id": "msg_2"}, body),
        "no signature": ({k: v for k, v in genuine.items() if k != "webhook-signature"}, body),
        "a v2 signature only": ({**genuine, "webhook-signature": genuine[
            "webhook-signature"].replace("v1,", "v2,")}, body),
    }


def standardwebhooks_accepts(headers: dict[str, str], body: bytes) -> bool:
    try:
        Webhook(SECRET).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def relay_accepts(headers: dict[str, str], body: bytes) -> bool:
    try:
        verify_delivery(headers, body, SECRET)
    except InvalidDelivery:
        return False
    return True


@pytest.mark.parametrize("case", list(delivery_cases()))
def test_verify_delivery_accepts_exactly_what_standardwebhooks_accepts(case):
    headers, body = delivery_cases()[case]
    assert relay_accepts(headers, body) == standardwebhooks_accepts(headers, body)
    assert relay_accepts(headers, body) == (case in {
        "genuine", "signed with both secrets during a rotation", "header names in any case"})


def test_verify_delivery_returns_the_payload_and_says_why_it_refuses():
    headers, body = delivery_cases()["genuine"]
    assert verify_delivery(headers, body, [OTHER, SECRET])["data"] == {"id": "j"}
    reasons = {}
    for case in ("tampered body", "ten minutes old", "no signature"):
        with pytest.raises(InvalidDelivery) as refused:
            verify_delivery(*delivery_cases()[case], SECRET)
        reasons[case] = refused.value.reason
    assert reasons == {"tampered body": "signature_mismatch",
                       "ten minutes old": "stale_timestamp", "no signature": "missing_signature"}


async def test_a_real_relay_delivery_passes_verify_delivery_and_standardwebhooks():
    consumer = Consumer()
    async with serving_consumer(consumer) as url, running_relay(outbound_settings()) as relay:
        secret = (await subscribe(relay, url, topics=["provider:gen"]))["secret"]
        await relay.track("gen", "v-1")
        await eventually(lambda: consumer.delivered(), timeout=5)
    received = consumer.delivered()[0]
    payload = verify_delivery(received.headers, received.body, secret)
    assert (payload["type"], payload["data"]["external_id"]) == ("job.updated", "v-1")
    assert Webhook(secret).verify(received.body, received.headers) == payload
    with pytest.raises(InvalidDelivery):
        verify_delivery(received.headers, received.body, OTHER)
