"""A delivery replayed, under any signature scheme, within 7 days, counts once: it answers
`200 duplicate` and makes no event, even after newer updates, across restarts and instances.
And a request that proves nothing costs the relay no more than its headers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from relay.signing import COMPACT_MAX
from relay.store import open_store
from tests.senders import (
    PAYLOAD,
    WEBHOOK_SECRET,
    WHSEC,
    encode,
    primary_headers,
    standard_headers,
    sync_headers,
)
from tests.support import redis_url, running_relay, settings_with

pytestmark = pytest.mark.anyio

GEN = {"schema": "generation", "webhook_secret": WEBHOOK_SECRET}
STD = {"schema": "generation", "webhook_secret": WHSEC}
EARLY = encode({**PAYLOAD, "status": "PROCESSING", "progress_percent": 10})
LATER = encode({**PAYLOAD, "status": "PROCESSING", "progress_percent": 60})


@pytest.mark.parametrize("scheme", ["sync", "primary", "standard"])
async def test_a_replayed_delivery_after_a_newer_update_is_a_duplicate(scheme):
    headers = {"sync": lambda body: sync_headers(body), "primary": primary_headers,
               "standard": lambda body: standard_headers(body, msg_id=f"m{hash(body)}")}[scheme]
    provider = "std" if scheme == "standard" else "gen"
    async with running_relay(settings_with(gen=GEN, std=STD)) as relay:
        early = headers(EARLY)
        first = await relay.client.post(f"/hooks/{provider}", content=EARLY, headers=early)
        newer = await relay.client.post(f"/hooks/{provider}", content=LATER,
                                        headers=headers(LATER))
        replay = await relay.client.post(f"/hooks/{provider}", content=EARLY, headers=early)
        assert (first.status_code, newer.status_code, replay.status_code) == (202, 202, 200)
        assert replay.json() == {"accepted": True, "duplicate": True,
                                 "job_id": first.json()["job_id"]}
        job = (await relay.client.get(f"/v1/jobs/{first.json()['job_id']}")).json()
        assert (job["progress"], job["version"]) == (0.6, 2)


async def test_a_replay_is_remembered_across_a_restart(tmp_path):
    settings = settings_with(f"sqlite:///{tmp_path / 'relay.db'}", gen=GEN)
    signed = primary_headers(EARLY)  # no timestamp: a replay may come any time
    async with running_relay(settings) as relay:
        assert (await relay.client.post("/hooks/gen", content=EARLY, headers=signed)
                ).status_code == 202
    async with running_relay(settings) as relay:
        again = await relay.client.post("/hooks/gen", content=EARLY, headers=signed)
        assert again.status_code == 200 and again.json()["duplicate"] is True


async def test_a_replay_to_another_instance_on_the_same_redis_is_a_duplicate():
    url = redis_url()
    settings = settings_with(url, gen=GEN)
    signed = sync_headers(EARLY)
    async with running_relay(settings, store=open_store(url)) as one, \
            running_relay(settings, store=open_store(url)) as two:
        first = await one.client.post("/hooks/gen", content=EARLY, headers=signed)
        again = await two.client.post("/hooks/gen", content=EARLY, headers=signed)
        assert (first.status_code, again.status_code) == (202, 200)


async def test_a_request_without_a_signature_is_refused_before_its_body_is_read():
    async with running_relay(settings_with(gen=GEN)) as relay:
        url = httpx.URL(relay.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        # A body of 100 MB is announced; none of it is sent: the answer comes anyway.
        writer.write(b"POST /hooks/gen HTTP/1.1\r\nhost: relay\r\ncontent-type: "
                     b"application/json\r\ncontent-length: 1000000\r\n\r\n")
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 401 ")


async def test_the_compact_json_fallback_is_only_for_bodies_of_a_webhooks_size():
    """Re-serialising a body costs a parse and two dumps (about 100 ms for a megabyte), so a
    body over COMPACT_MAX is checked as sent only: a large body signed over another
    serialisation is refused, a small one is not."""
    async with running_relay(settings_with(gen=GEN)) as relay:
        for size, expected in [(10, 202), (COMPACT_MAX, 401)]:
            payload = {**PAYLOAD, "id": f"size-{size}", "pad": "x" * size}
            sent = json.dumps(payload, indent=2).encode()  # what goes on the wire
            compact = json.dumps(payload, separators=(",", ":")).encode()  # what was signed
            signature = sync_headers(compact)
            answer = await relay.client.post("/hooks/gen", content=sent, headers=signature)
            assert answer.status_code == expected, (size, answer.text)
