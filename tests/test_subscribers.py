"""Subscribers: scoped tokens, topic streams, and SSE fan-out under load, against a real uvicorn
relay with real clients (httpx, and bare asyncio connections where hundreds are needed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from relay.tokens import Tokens
from tests.senders import WEBHOOK_SECRET, signed
from tests.support import (
    RelayProcess,
    eventually,
    free_port,
    make_settings,
    metric,
    metrics,
    raise_open_files_limit,
    redis_url,
    running_relay,
    server_side_open,
    sse,
    wipe_redis,
)

pytestmark = pytest.mark.anyio


class RawSSE:
    """An SSE client on a bare asyncio connection: light enough to open hundreds at once.
    It speaks just enough HTTP/1.1 (one GET, a chunked response) for the relay's streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.ended_cleanly = False

    @classmethod
    async def open(cls, base_url: str, path: str, **headers: str) -> RawSSE:
        url = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Accept: text/event-stream",
                 *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer, int(head.split(b" ", 2)[1]))

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(id, job) for each event, until the server ends the stream."""
        buffer = b""
        while chunk := await self._chunk():
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n")
                              if line and not line.startswith((b":", b"retry")))
                if b"data" in fields:
                    yield fields[b"id"].decode(), json.loads(fields[b"data"])

    async def _chunk(self) -> bytes:
        size = int((await self.reader.readline()).strip(), 16)
        data = await self.reader.readexactly(size + 2)
        self.ended_cleanly = size == 0
        return data[:-2]

    def close(self) -> None:
        self.writer.close()


# -- tokens and topics ----------------------------------------------------------------------

async def test_a_job_token_is_forbidden_for_another_job_and_its_topics():
    async with running_relay() as relay:
        a = await relay.track("gen", "a")
        b = (await relay.track("gen", "b"))["job"]["id"]
        token = a["subscribe_token"]
        for path in [f"/v1/jobs/{b}/events?token={token}", f"/v1/events?job={b}&token={token}",
                     f"/v1/events?topic=provider:gen&token={token}",
                     f"/v1/jobs/nonexistent/events?token={token}"]:
            response = await relay.client.get(path)
            assert (response.status_code, response.json()["error"]) == (403, "forbidden"), path
        async with sse(relay.client, f"/v1/events?job={a['job']['id']}&token={token}") as stream:
            assert (await stream.next()).data["id"] == a["job"]["id"]


async def test_an_expired_or_altered_token_is_refused_with_401():
    async with running_relay(make_settings(secret="s3cret")) as relay:
        job_id = (await relay.track("gen", "a"))["job"]["id"]
        expired, _ = Tokens("s3cret").subscribe_token([job_id], ttl=60, now=time.time() - 61)
        valid, _ = Tokens("s3cret").subscribe_token([job_id], ttl=60)
        altered = valid[:-2] + ("AA" if valid[-2:] != "AA" else "BB")
        foreign, _ = Tokens("another secret").subscribe_token([job_id], ttl=60)
        answers = {}
        for name, token in [("expired", expired), ("altered", altered), ("foreign", foreign)]:
            response = await relay.client.get(f"/v1/jobs/{job_id}/events?token={token}")
            answers[name] = (response.status_code, response.json()["error"])
        assert answers == {"expired": (401, "token_expired"), "altered": (401, "invalid_token"),
                           "foreign": (401, "invalid_token")}
        async with sse(relay.client, f"/v1/jobs/{job_id}/events?token={valid}") as stream:
            assert (await stream.next()).data["id"] == job_id


async def test_a_topic_token_sees_exactly_the_jobs_with_that_topic():
    async with running_relay() as relay:
        a = (await relay.track("gen", "a", topics=["user:1"]))["job"]
        b = (await relay.track("gen", "b", topics=["user:1", "team:x"]))["job"]
        c = (await relay.track("gen", "c", topics=["user:2"]))["job"]
        minted = await relay.client.post("/v1/tokens", json={"topics": ["user:1"], "ttl": 600})
        assert minted.status_code == 201
        token = minted.json()["token"]
        assert minted.json()["expires_at"] > time.time() + 590

        async with sse(relay.client, f"/v1/events?topic=user:1&token={token}") as stream:
            current = await stream.take(2)
            assert [e.data["id"] for e in current] == [a["id"], b["id"]]
            await relay.webhook({"id": "c", "status": "PROCESSING"})
            await relay.webhook({"id": "b", "status": "PROCESSING"})
            live = await stream.next()
            assert (live.data["id"], live.data["state"]) == (b["id"], "running")

        for path in [f"/v1/events?topic=user:2&token={token}",
                     f"/v1/jobs/{c['id']}/events?token={token}",
                     f"/v1/events?topic=user:1&topic=team:x&token={token}"]:
            assert (await relay.client.get(path)).status_code == 403, path
        async with sse(relay.client, f"/v1/jobs/{a['id']}/events?token={token}") as stream:
            assert (await stream.next()).data["id"] == a["id"]


async def test_a_topic_stream_resumes_across_jobs_from_last_event_id():
    async with running_relay() as relay:
        for name in ("a", "b", "c"):
            await relay.track("gen", name, topics=["user:1"] if name != "c" else ["user:2"])
        async with sse(relay.client, "/v1/events?topic=user:1") as stream:
            last_seen = (await stream.take(2))[-1].id
        expected = []
        for name, status in [("a", "PROCESSING"), ("c", "PROCESSING"), ("b", "PROCESSING"),
                             ("a", "COMPLETED")]:
            answer = await relay.webhook({"id": name, "status": status})
            if name != "c":
                expected.append((answer.json()["cursor"], name))
        async with sse(relay.client, "/v1/events?topic=user:1", last_event_id=last_seen) as stream:
            replayed = await stream.take(3)
            assert [(e.id, e.data["external_id"]) for e in replayed] == expected
            await relay.webhook({"id": "b", "status": "COMPLETED"})
            live = await stream.next()
            assert (live.data["external_id"], live.data["state"]) == ("b", "succeeded")


async def test_an_unknown_last_event_id_gets_relay_reset_and_the_current_state():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "a"))["job"]["id"]
        for percent, last_event_id in [(10, "999999"), (20, "not-a-cursor")]:
            async with sse(relay.client, f"/v1/jobs/{job_id}/events",
                           last_event_id=last_event_id) as stream:
                reset, current = await stream.take(2)
                assert (reset.event, reset.id, reset.data) == (
                    "relay.reset", None, {"reason": "unknown_cursor"})
                assert (current.event, current.data["id"]) == ("job.updated", job_id)
                await relay.webhook({"id": "a", "status": "PROCESSING",
                                     "progress_percent": percent})
                live = await stream.next()
                assert (live.data["state"], live.data["progress"]) == ("running", percent / 100)

        async def unsubscribed() -> bool:
            return metric(await metrics(relay.client), "relay_subscribers") == 0

        await eventually(unsubscribed)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_last_event_id_from_a_wiped_store_gets_relay_reset_and_the_current_state(
        backend, tmp_path):
    url = f"sqlite:///{tmp_path}/relay.db" if backend == "sqlite" else redis_url()
    async with running_relay(make_settings(store=url)) as relay:
        await relay.track("gen", "old")
        async with sse(relay.client, "/v1/events?topic=provider:gen") as stream:
            old_cursor = (await stream.next()).id
    if backend == "sqlite":
        for path in tmp_path.glob("relay.db*"):
            path.unlink()
    else:
        wipe_redis(url)
    async with running_relay(make_settings(store=url)) as relay:
        # The new log is longer than the old one: the old cursor's position exists in it.
        new = [(await relay.track("gen", name))["job"]["id"] for name in ("a", "b", "c")]
        async with sse(relay.client, "/v1/events?topic=provider:gen",
                       last_event_id=old_cursor) as stream:
            reset = await stream.next()
            assert (reset.event, reset.id, reset.data) == (
                "relay.reset", None, {"reason": "unknown_cursor"})
            current = await stream.take(3)
            assert [e.data["id"] for e in current] == new
            await relay.webhook({"id": "b", "status": "PROCESSING"})
            live = await stream.next()
            assert (live.data["id"], live.data["state"]) == (new[1], "running")


# -- streams --------------------------------------------------------------------------------

async def test_reconnecting_after_the_terminal_event_answers_204():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "done"))["job"]["id"]
        await relay.webhook({"id": "done", "status": "COMPLETED", "outputUrl": "https://o/1"})
        async with sse(relay.client, f"/v1/jobs/{job_id}/events") as stream:
            final = await stream.next()
            assert final.data["terminal"] is True
            assert await stream.closed()
        again = await relay.client.get(f"/v1/jobs/{job_id}/events",
                                       headers={"last-event-id": final.id})
        assert again.status_code == 204
        assert metric(await metrics(relay.client), "relay_subscribers") == 0


async def test_a_client_that_disconnects_is_unsubscribed():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "a"))["job"]["id"]
        async with sse(relay.client, f"/v1/jobs/{job_id}/events") as stream:
            await stream.next()
            assert metric(await metrics(relay.client), "relay_subscribers") == 1
        await eventually(lambda: _subscribers(relay.client, 0))


async def _subscribers(client: httpx.AsyncClient, count: int) -> bool:
    return metric(await metrics(client), "relay_subscribers") == count


async def test_500_subscribers_each_receive_every_event_in_order_exactly_once():
    raise_open_files_limit(4096)
    async with running_relay() as relay:
        tracked = await relay.track("gen", "crowd")
        job_id = tracked["job"]["id"]
        streams = await asyncio.gather(*(
            RawSSE.open(relay.url, f"/v1/jobs/{job_id}/events") for _ in range(500)))
        assert {s.status for s in streams} == {200}
        received: list[list[tuple[str, int]]] = [[] for _ in streams]
        first_seen = [asyncio.Event() for _ in streams]

        async def collect(i: int) -> None:
            async for cursor, job in streams[i].events():
                received[i].append((cursor, job["version"]))
                first_seen[i].set()

        readers = [asyncio.create_task(collect(i)) for i in range(len(streams))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_seen)), 20)
        cursors = [(await relay.store.last_cursor(), 1)]
        for percent in range(5, 100, 5):
            answer = await relay.webhook({"id": "crowd", "status": "PROCESSING",
                                          "progress_percent": percent})
            cursors.append((answer.json()["cursor"], len(cursors) + 1))
        answer = await relay.webhook({"id": "crowd", "status": "COMPLETED"})
        cursors.append((answer.json()["cursor"], len(cursors) + 1))
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        for stream in streams:
            stream.close()

        assert len(cursors) == 21
        assert all(events == cursors for events in received)
        assert all(stream.ended_cleanly for stream in streams)


async def test_a_subscriber_that_never_reads_is_dropped_and_others_receive_promptly():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "big"))["job"]["id"]
        path = f"/v1/jobs/{job_id}/events"
        stuck = _never_reading_stream(relay.url, path)
        server_port, client_port = urlsplit(relay.url).port, stuck.getsockname()[1]
        reader = await RawSSE.open(relay.url, path)
        events = reader.events()
        try:
            assert (await anext(events))[1]["version"] == 1
            await eventually(lambda: _subscribers(relay.client, 2))
            pushed = await _push_until_one_is_dropped(relay, events)
            assert pushed < 1000
            text = await metrics(relay.client)
            assert metric(text, "relay_subscribers_dropped_total") == 1
            assert metric(text, "relay_subscribers") == 1
            # The server ends the stuck client's connection rather than leaving it to linger
            # behind data that will never be read.
            await eventually(lambda: not server_side_open(server_port, client_port))
        finally:
            stuck.close()
            reader.close()


def _never_reading_stream(base_url: str, path: str) -> socket.socket:
    url = urlsplit(base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname, url.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    return sock


async def _push_until_one_is_dropped(relay, events, batch: int = 10) -> int:
    """Post updates of about 64 KB, `batch` at a time, until the relay has one subscriber
    left. The reader must get every one, in order, within seconds of its batch."""
    version = 1
    while version < 1000:
        segments = [f"{version:06d}" + "x" * 4000] * 16
        posts = [relay.webhook({"id": "big", "status": "PROCESSING",
                                "outputUrl": f"https://cdn.example/{version + i}",
                                "segments": segments}) for i in range(batch)]
        *answers, text = await asyncio.gather(*posts, metrics(relay.client))
        assert {answer.status_code for answer in answers} == {202}
        for _ in range(batch):
            _, job = await asyncio.wait_for(anext(events), 5)
            version += 1
            assert job["version"] == version
        if metric(text, "relay_subscribers") == 1:
            return version
    return version


# -- shutdown -------------------------------------------------------------------------------

@pytest.mark.slow
async def test_shutdown_with_100_open_streams_completes_within_seconds(tmp_path: Path):
    raise_open_files_limit(1024)
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{tmp_path}/relay.db"\n\n'
                      f'[providers.gen]\nschema = "generation"\n'
                      f'webhook_secret = "{WEBHOOK_SECRET}"\n')
    relay = RelayProcess(config, free_port()).start()
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=10) as client:
            job_id = await _track(client, "watched")
            streams = await asyncio.gather(*(
                RawSSE.open(relay.url, f"/v1/jobs/{job_id}/events") for _ in range(100)))
            readers = [asyncio.create_task(_drain(s)) for s in streams]
            # One more stream, on another job, whose client never reads: the server is
            # stuck sending to it when the signal comes.
            stuck = _never_reading_stream(relay.url, f"/v1/jobs/{await _track(client, 's')}/events")
            await _fill(client, "s", count=100)
            assert metric((await client.get("/metrics")).text, "relay_subscribers") == 101
        started = time.monotonic()
        code = await asyncio.to_thread(relay.stop)
        elapsed = time.monotonic() - started
        ends = await asyncio.wait_for(asyncio.gather(*readers), 10)
        stuck.close()
    finally:
        relay.kill()
    log = relay.log.read_text()
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in log
    assert "Finished server process" in log.splitlines()[-1]  # the last lines are not lost
    assert "timeout graceful shutdown exceeded" not in log
    assert elapsed < 4, f"shutdown took {elapsed:.1f}s"  # uvicorn's own limit is 5 s
    assert all(count == 1 for count in ends)
    assert all(s.ended_cleanly for s in streams)


async def _track(client: httpx.AsyncClient, external_id: str) -> str:
    answer = await client.post("/v1/jobs", json={"provider": "gen", "external_id": external_id})
    return str(answer.json()["job"]["id"])


async def _fill(client: httpx.AsyncClient, external_id: str, count: int) -> None:
    """`count` updates of about 64 KB each to one job, ten at a time."""
    for start in range(0, count, 10):
        posts = []
        for i in range(start, start + 10):
            body, headers = signed({"id": external_id, "status": "PROCESSING",
                                    "outputUrl": f"https://cdn.example/{i}",
                                    "segments": ["x" * 4000] * 16})
            posts.append(client.post("/hooks/gen", content=body, headers=headers))
        assert {answer.status_code for answer in await asyncio.gather(*posts)} == {202}


async def _drain(stream: RawSSE) -> int:
    count = 0
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        async for _ in stream.events():
            count += 1
    stream.close()
    return count

