"""The hub writing to sockets: a client that stops reading costs nobody else anything, thousands
of subscribers come and go without a trace, a stream ends as a proper HTTP response, and a
server the hub cannot write through still serves every event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relay.app import create_app
from relay.runtime.server import serving
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
)

pytestmark = pytest.mark.anyio


class Connection:
    """One HTTP/1.1 connection speaking just what SSE needs: GET, a chunked (or, for HTTP/1.0,
    close-delimited) response read event by event, and another request on it afterwards."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.chunked = True
        self.ended = False
        self._buffer = b""

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        url = urlsplit(base_url)
        return cls(*await asyncio.open_connection(url.hostname, url.port))

    async def get(self, path: str, version: str = "1.1", **headers: str) -> int:
        """Send a GET; the response's status once its head has arrived."""
        lines = [f"GET {path} HTTP/{version}", "Host: relay", "Accept: text/event-stream",
                 *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)).lower()
        self.chunked = b"transfer-encoding: chunked" in head
        self.ended, self._buffer = False, b""
        return int(head.split(b" ", 2)[1])

    async def event(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next event (`event`, `id`, `data` decoded), or None once the response ends."""
        while b"\n\n" not in self._buffer:
            if self.ended:
                return None
            self._buffer += await asyncio.wait_for(self._read(), timeout)
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        fields = dict(line.decode().split(": ", 1) for line in block.split(b"\n")
                      if line and not line.startswith((b":", b"retry")))
        if "data" not in fields:
            return await self.event(timeout)
        return {**fields, "data": json.loads(fields["data"])}

    async def events(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every event until the response ends."""
        found = []
        while (event := await self.event(timeout)) is not None:
            found.append(event)
        return found

    async def _read(self) -> bytes:
        if not self.chunked:
            data = await self.reader.read(65536)
            self.ended = not data
            return data
        size = int((await self.reader.readline()).strip(), 16)
        data = await self.reader.readexactly(size + 2)
        self.ended = size == 0
        return data[:-2]

    def close(self, reset: bool = False) -> None:
        if reset:
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()


def _webhook(relay_url: str, external_id: str, **fields: Any) -> tuple[str, dict[str, str], bytes]:
    body, headers = signed({"id": external_id, "status": "PROCESSING", **fields})
    return f"{relay_url}/hooks/gen", headers, body


# -- a client that stops reading ------------------------------------------------------------

async def test_a_subscriber_that_stops_reading_mid_frame_is_dropped_without_delaying_others():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "big"))["job"]["id"]
        path = f"/v1/jobs/{job_id}/events"
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", urlsplit(relay.url).port))
        stuck.sendall(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        reader = await Connection.open(relay.url)
        try:
            assert await reader.get(path) == 200
            assert (await reader.event())["data"]["version"] == 1
            await eventually(lambda: _subscribers(relay, 2))
            slowest, version = 0.0, 1
            # Events of about 64 kB: the stuck client's buffers fill in the middle of one.
            while await _subscribers(relay, 2):
                assert version < 400, "the stuck subscriber was never dropped"
                answer = await relay.webhook({"id": "big", "status": "PROCESSING",
                                              "outputUrl": f"https://o/{version}",
                                              "segments": [f"{version:06d}" + "x" * 4000] * 16})
                assert answer.status_code == 202
                sent = time.monotonic()
                event = await reader.event(timeout=5)
                slowest = max(slowest, time.monotonic() - sent)
                version += 1
                assert event is not None and event["data"]["version"] == version
            assert slowest < 2.0, f"the reader waited {slowest:.2f} s for an event"
            assert metric(await metrics(relay.client), "relay_subscribers_dropped_total") == 1
            server_port, client_port = urlsplit(relay.url).port, stuck.getsockname()[1]
            await eventually(lambda: not server_side_open(server_port, client_port))
            # The reader goes on receiving.
            await relay.webhook({"id": "big", "status": "COMPLETED"})
            assert (await reader.event())["data"]["terminal"] is True
        finally:
            stuck.close()
            reader.close()


async def _subscribers(relay: Any, count: int) -> bool:
    return metric(await metrics(relay.client), "relay_subscribers") == count


# -- thousands coming and going ------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow
async def test_2000_subscribers_joining_and_leaving_while_events_flow_leave_no_trace(
        tmp_path: Path):
    import httpx

    raise_open_files_limit(8192)
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nstore = "memory://"\n\n[providers.gen]\nschema = "generation"\n'
                      f'webhook_secret = "{WEBHOOK_SECRET}"\n')
    relay = RelayProcess(config, free_port()).start()
    assert relay.process is not None
    pid = relay.process.pid
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=10) as client:
            answer = await client.post("/v1/jobs", json={"provider": "gen", "external_id": "flow"})
            assert answer.status_code == 201
            publishing = asyncio.create_task(_publish_forever(client, relay.url))
            try:
                # The first crowd grows the process to what it keeps (Python's allocator
                # holds on to freed memory); the RSS after it is the baseline the next
                # crowds must come back to.
                idle = _rss_kb(pid)
                peak = await _crowd(relay.url, client, 2000, pid)
                baseline = _rss_kb(pid)
                for _ in range(3):
                    await _crowd(relay.url, client, 2000)
            finally:
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
            await eventually(lambda: _count(client, 0))
            after = _rss_kb(pid)
    finally:
        relay.stop()
    assert peak - idle > 8_000, "the measure does not see 2,000 subscribers"
    assert after - baseline < 6_000, f"RSS grew by {after - baseline} kB over three crowds"
    assert "Traceback" not in relay.log.read_text()  # leaving, even by a reset, is no error


async def _publish_forever(client: Any, url: str) -> None:
    version = 0
    while True:
        version += 1
        target, headers, body = _webhook(url, "flow", outputUrl=f"https://o/{version}")
        assert (await client.post(target, headers=headers, content=body)).status_code == 202
        await asyncio.sleep(0.02)


async def _crowd(url: str, client: Any, size: int, pid: int | None = None) -> int:
    """`size` subscribers join (each gets an event), then all leave, half of them with a
    reset; once the relay counts none, the RSS it had with all of them."""
    gate = asyncio.Semaphore(200)

    async def join() -> Connection:
        async with gate:
            connection = await Connection.open(url)
            assert await connection.get("/v1/events?topic=provider:gen") == 200
            assert (await connection.event()) is not None
            return connection

    crowd = await asyncio.gather(*(join() for _ in range(size)))
    await eventually(lambda: _count(client, size), timeout=20)
    peak = _rss_kb(pid) if pid is not None else 0
    for i, connection in enumerate(crowd):
        connection.close(reset=i % 2 == 0)
    await eventually(lambda: _count(client, 0), timeout=20)
    return peak


async def _count(client: Any, count: int) -> bool:
    return metric((await client.get("/metrics")).text, "relay_subscribers") == count


# -- a stream is an HTTP response like any other --------------------------------------------

@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return {"memory": lambda: "memory://", "sqlite": lambda: f"sqlite:///{tmp_path}/r.db",
            "redis": redis_url}[request.param]()


async def test_a_finished_stream_leaves_its_connection_ready_for_the_next_request(store_url):
    async with running_relay(make_settings(store=store_url)) as relay:
        job_id = (await relay.track("gen", "done"))["job"]["id"]
        connection = await Connection.open(relay.url)
        try:
            assert await connection.get(f"/v1/jobs/{job_id}/events") == 200
            assert (await connection.event())["data"]["version"] == 1
            await relay.webhook({"id": "done", "status": "PROCESSING"})
            await relay.webhook({"id": "done", "status": "COMPLETED", "outputUrl": "https://o/"})
            events = await connection.events()
            assert [e["data"]["version"] for e in events] == [2, 3]
            assert events[-1]["data"]["terminal"] is True
            # The same connection: resuming after the terminal event answers 204.
            status = await connection.get(f"/v1/jobs/{job_id}/events",
                                          last_event_id=events[-1]["id"])
            assert status == 204
            # A topic stream from a cursor the store cannot place starts with relay.reset.
            assert await connection.get("/v1/events?topic=provider:gen",
                                        last_event_id="not-a-cursor") == 200
            reset = await connection.event()
            assert reset["event"] == "relay.reset" and "id" not in reset
            assert reset["data"]["reason"] == "unknown_cursor"
            assert (await connection.event())["data"]["id"] == job_id
        finally:
            connection.close()
        await eventually(lambda: _subscribers(relay, 0))


async def test_streams_joining_while_a_job_changes_miss_no_version_and_repeat_none():
    raise_open_files_limit(2048)
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "busy"))["job"]["id"]

        async def watch() -> list[int]:
            connection = await Connection.open(relay.url)
            try:
                assert await connection.get(f"/v1/jobs/{job_id}/events") == 200
                return [event["data"]["version"] for event in await connection.events()]
            finally:
                connection.close()

        watchers = []
        for percent in range(1, 40):  # eight streams join before each change
            watchers += [asyncio.create_task(watch()) for _ in range(8)]
            await relay.webhook({"id": "busy", "status": "PROCESSING",
                                 "progress_percent": percent})
        await relay.webhook({"id": "busy", "status": "COMPLETED", "outputUrl": "https://o/"})
        seen = await asyncio.wait_for(asyncio.gather(*watchers), 30)
        for versions in seen:
            assert versions == list(range(versions[0], 42))
        assert len({versions[0] for versions in seen}) > 1, "every stream joined at once"


class Kept:
    """A connection's transport that keeps what the hub writes and is never full."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return None

    def abort(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["socket", "queued"])
async def test_a_stream_resumed_where_the_hub_is_behind_its_cursor_repeats_nothing(kind):
    """On Redis a browser resumes on another instance than the one that gave it its
    Last-Event-ID, and that instance's hub may not have passed the event yet: it passes it,
    and those before it, after the stream has subscribed. The stream sends what follows the
    cursor, once, whether the hub writes to its socket or its task reads a mailbox."""
    from relay.fanout.hub import Hub
    from relay.fanout.resume import first_page
    from relay.fanout.stream import Socket, Stream, Streams
    from relay.models import Job, Source, State, now
    from relay.runtime.metrics import Metrics
    from relay.store import open_store

    store = open_store("memory://")
    await store.open()
    hub = Hub(store, Metrics())
    await hub.start()  # at the empty log's end; its task runs once this test first waits

    async def change(name: str, version: int) -> str:
        new = Job(id=name, provider="p", schema="generation", external_id=name,
                  state=State.RUNNING, progress=version / 10, topics=("provider:p",),
                  version=version)
        applied = await store.apply("p", name, lambda _: new, source=Source.API,
                                    received_at=now())
        assert applied.event is not None
        return applied.event.cursor

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays until the hub lets go
        raise AssertionError

    body, transport = bytearray(), Kept()

    async def send(message: dict[str, Any]) -> None:
        body.extend(message.get("body", b""))

    def ids() -> list[str]:
        return [m.decode() for m in re.findall(rb"^id: (.*)$", body + transport.written, re.M)]

    # The client had a's two versions; the backlog sends b's, which the hub passes again.
    cursors = [await change(name, version) for name, version in
               [("a", 1), ("a", 2), ("b", 1), ("b", 2)]]
    streams, topics = Streams(hub, store), ["provider:p"]
    if kind == "queued":  # not uvicorn: the stream's own task sends what the hub gives it
        stream = await streams.open({"http_version": "1.1"}, receive, topics, cursors[1],
                                    None, [])
    else:
        subscriber = hub.subscribe(Socket(topics, single_job=False))
        backlog = await first_page(store, streams.snapshots, topics, cursors[1])
        stream = Stream(hub, store, subscriber, backlog, transport, [])
    assert hub.passed == 0, "the hub was not behind"
    started = asyncio.create_task(stream.start(receive, send))
    try:
        await eventually(lambda: hub.passed)  # it passed all four
        cursors.append(await change("a", 3))
        await eventually(lambda: cursors[-1] in ids())
        assert ids() == cursors[2:]
    finally:
        await hub.stop()
        await started
        stream.release()


async def test_a_crowd_joining_while_nothing_changes_shares_reads_and_misses_no_later_change():
    raise_open_files_limit(2048)
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "crowd"))["job"]["id"]
        reads = []
        read_latest = relay.store.latest

        async def counted(*args: Any, **kwargs: Any) -> Any:
            reads.append(args)
            return await read_latest(*args, **kwargs)

        relay.store.latest = counted  # type: ignore[method-assign]
        crowd = []
        try:
            for _ in range(300):  # one after another: no two share a read by joining together
                crowd.append(await Connection.open(relay.url))
                assert await crowd[-1].get("/v1/events?topic=provider:gen") == 200
                assert (await crowd[-1].event())["data"]["id"] == job_id
            assert len(reads) < 60, f"{len(reads)} reads for {len(crowd)} streams"

            # A change passes the hub: a stream joining after it has it, in its snapshot or live.
            assert (await relay.webhook({"id": "crowd", "status": "PROCESSING"})).status_code == 202
            version = (await relay.client.get(f"/v1/jobs/{job_id}")).json()["version"]
            late = await Connection.open(relay.url)
            crowd.append(late)
            assert await late.get("/v1/events?topic=provider:gen") == 200
            seen = [(await late.event())["data"]["version"]]
            while seen[-1] < version:
                seen.append((await late.event())["data"]["version"])
            assert seen[-1] == version
        finally:
            for connection in crowd:
                connection.close()


async def test_snapshots_are_reused_only_for_a_while_and_only_so_many_of_them():
    from types import SimpleNamespace

    from relay.fanout.resume import Snapshots
    from relay.store import open_store

    store = open_store("memory://")
    await store.open()
    reads: list[Any] = []
    read_latest = store.latest

    async def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(args[0])
        return await read_latest(*args, **kwargs)

    store.latest = counted  # type: ignore[method-assign]
    hub = SimpleNamespace(passed=0)
    snapshots = Snapshots(store, hub)  # type: ignore[arg-type]
    snapshots.KEPT = 10
    try:
        for i in range(25):
            await snapshots.latest([f"topic:{i}"])
        await snapshots.latest(["topic:24"])  # among the last ten kept: no read
        await snapshots.latest(["topic:0"])  # forgotten: read again
        assert reads == [(f"topic:{i}",) for i in range(25)] + [("topic:0",)]

        hub.passed += 1  # an event passed: nothing kept is current
        await snapshots.latest(["topic:24"])
        snapshots.REUSE_FOR = 0.0  # a read is kept for no time at all
        await snapshots.latest(["topic:1"])
        await snapshots.latest(["topic:1"])
        assert reads[-3:] == [("topic:24",), ("topic:1",), ("topic:1",)]
    finally:
        await store.close()


async def test_shutdown_ends_1000_open_streams_and_a_stuck_one_within_seconds():
    raise_open_files_limit(4096)
    app = create_app(make_settings())
    connections: list[Connection] = []
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(serving(app))
        for _ in range(1000):
            connections.append(await Connection.open(url))
            assert await connections[-1].get("/v1/events?topic=quiet") == 200
        stuck = await _fill_stuck(url)
        started = time.monotonic()
    elapsed = time.monotonic() - started
    stuck.close()
    ends = await asyncio.gather(*(c.events(timeout=5) for c in connections))
    for connection in connections:
        connection.close()
    assert elapsed < 4, f"shutdown took {elapsed:.1f} s"
    assert all(c.ended for c in connections)  # each got the last chunk, not a cut
    assert len(ends) == 1000


async def _fill_stuck(url: str) -> socket.socket:
    """A stream whose client never reads, sent updates of about 64 kB until its buffers are
    full (but short of the limit that drops it)."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        tracked = await client.post("/v1/jobs", json={"provider": "gen", "external_id": "fill"})
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", urlsplit(url).port))
        stuck.sendall(f"GET /v1/jobs/{tracked.json()['job']['id']}/events HTTP/1.1\r\n"
                      "Host: relay\r\n\r\n".encode())
        for i in range(40):
            target, headers, body = _webhook(url, "fill", outputUrl=f"https://o/{i}",
                                             segments=["x" * 4000] * 16)
            assert (await client.post(target, headers=headers, content=body)).status_code == 202
        await eventually(lambda: _send_queue(urlsplit(url).port, stuck.getsockname()[1]) > 0)
        assert metric((await client.get("/metrics")).text, "relay_subscribers") == 1001
    return stuck


def _send_queue(server_port: int, client_port: int) -> int:
    """Bytes the server's end of the connection from `client_port` has not had acknowledged."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    with open("/proc/net/tcp") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if tuple(fields[1:3]) == wanted:
                return int(fields[4].split(":")[0], 16)
    return 0


# -- where the hub cannot write ----------------------------------------------------------

async def test_an_http_1_0_client_is_served_through_the_servers_send():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "old"))["job"]["id"]
        connection = await Connection.open(relay.url)
        try:
            assert await connection.get(f"/v1/jobs/{job_id}/events", version="1.0") == 200
            assert (await connection.event())["data"]["version"] == 1
            assert await _subscribers(relay, 1)
            await relay.webhook({"id": "old", "status": "PROCESSING"})
            assert (await connection.event())["data"]["version"] == 2
            await relay.webhook({"id": "old", "status": "COMPLETED", "outputUrl": "https://o/"})
            assert [e["data"]["version"] for e in await connection.events()] == [3]
        finally:
            connection.close()
        await eventually(lambda: _subscribers(relay, 0))
