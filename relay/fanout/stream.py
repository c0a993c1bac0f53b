"""The SSE response: the backlog through the server's ASGI `send`, then live frames written by
the hub straight to the connection.

Under uvicorn (its httptools or h11 protocol, HTTP/1.1) the request cycle behind `receive`
holds the connection's transport. Once the response head and the backlog have gone through
`send` (so the server knows a chunked response has begun), the stream hands the transport to
the hub (`Socket.attach`): from then on each frame, framed as an HTTP chunk once for everyone,
is one `transport.write` per subscriber, and the response's task only waits for `receive()`
to say the connection is gone or the response complete. Nothing per subscriber runs per frame.

    subscribe ─► first page ─► send: head, retry + backlog ─► attach ─► hub: transport.write(chunk)
                                                               └► await receive(): disconnect
    the hub lets go ─► send: the last chunk (a task of the ending), uvicorn keeps the connection
    the hub drops it (write buffer past WRITE_LIMIT, or nothing read for STALL_TIMEOUT) ─► reset

Backpressure is the connection's own: a client that reads slower than its events arrive grows
the transport's write buffer, and past WRITE_LIMIT it is dropped and resumes with
Last-Event-ID. Ending a stream sends its last chunk through `send` (which waits while the
buffer is above uvicorn's high-water mark); a client that has not read what is buffered within
CLOSE_WAIT is reset (SO_LINGER 0): a graceful close would wait for a peer that never reads,
and hold shutdown with it.

Anywhere else (another server, HTTP/1.0, a test transport) the stream is `Queued`: a task reads
the hub's frames from a mailbox and sends them through `send`, and a client that stops reading
blocks only its own send until the mailbox overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, Protocol

from relay.fanout import resume
from relay.fanout.hub import QUEUE_SIZE, Hub, Queued, Subscriber
from relay.fanout.wire import HEARTBEAT, Frame
from relay.store import Store
from relay.store.cursors import order

logger = logging.getLogger(__name__)

WRITE_LIMIT = 8 << 20
"""Bytes a client may leave unread beyond the kernel's buffers before it is dropped: a burst
of the largest events (tens of kB each) to a client on a slow link is not a stuck client, and
8 MiB is the most one can make the process hold (for at most STALL_TIMEOUT)."""
STALL_TIMEOUT = 30.0
CLOSE_WAIT = 2.0
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
END = {"type": "http.response.body", "body": b"", "more_body": False}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Transport(Protocol):
    """What the hub needs of a connection (asyncio's and uvloop's transports)."""

    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def get_extra_info(self, name: str) -> Any: ...
    def abort(self) -> None: ...


class Socket(Subscriber):
    """A stream the hub writes to itself. Until its backlog is sent (`attach`) the frames it
    is given wait in `pending`."""

    __slots__ = ("ending", "pending", "send", "stalled_since", "transport")

    def __init__(self, topics: Iterable[str], single_job: bool) -> None:
        super().__init__(topics, single_job)
        self.pending: list[Frame] | None = []
        self.transport: Transport | None = None
        self.send: Send | None = None
        self.stalled_since: float | None = None
        self.ending: asyncio.Task[None] | None = None

    def deliver(self, frame: Frame) -> bool:
        if (self.seen is not None or self.after is not None) and not self.fresh(frame):
            return True
        transport = self.transport
        if transport is None:
            assert self.pending is not None
            self.pending.append(frame)
            return len(self.pending) <= QUEUE_SIZE
        transport.write(frame.chunk)
        return transport.get_write_buffer_size() <= WRITE_LIMIT

    def beat(self, now: float) -> bool:
        transport = self.transport
        if transport is None:
            return True
        if not transport.get_write_buffer_size():
            self.stalled_since = None
        elif self.stalled_since is None:
            self.stalled_since = now
        elif now - self.stalled_since > STALL_TIMEOUT:
            return False
        transport.write(HEARTBEAT.chunk)
        return True

    def attach(self, transport: Transport, send: Send) -> None:
        """The backlog is sent: write what arrived meanwhile, then leave the rest to the hub."""
        pending, self.pending = self.pending or [], None
        waiting = [frame.chunk for frame in pending if self.fresh(frame)]
        self.transport, self.send = transport, send
        if waiting:
            transport.write(b"".join(waiting))
        if self.closed:  # the hub let go meanwhile (terminal event, shutdown, lost its place)
            self._end()

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending = []
        if self.transport is not None:
            if abort:
                _reset(self.transport)
            else:
                self._end()

    def _end(self) -> None:
        self.ending = asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        assert self.transport is not None and self.send is not None
        if self.transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(CLOSE_WAIT, _reset_if_unread, self.transport)
        await self.send(END)


class Stream:
    """An opened stream: subscribed, its first page read, its response not begun."""

    __slots__ = ("backlog", "headers", "hub", "store", "subscriber", "transport")

    def __init__(self, hub: Hub, store: Store, subscriber: Socket | Queued,
                 backlog: resume.Backlog, transport: Transport | None,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.hub = hub
        self.store = store
        self.subscriber = subscriber
        self.backlog: resume.Backlog | None = backlog
        self.transport = transport
        self.headers = headers

    async def start(self, receive: Receive, send: Send) -> bool:
        """Send the head and the backlog; True when the hub now writes to the connection
        and the response is over once `receive()` says `http.disconnect` (when the connection
        is lost, or, under uvicorn, once the hub has ended the response). False when the
        response is over already (a single-job stream's backlog ended it, or the stream was
        served through `send` to the end). Then, in any case, `release()`."""
        subscriber = self.subscriber
        headers, self.headers = self.headers, []
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS + headers})
        if await self._send_backlog(send):
            await send(END)
            return False
        transport, self.transport = self.transport, None
        if isinstance(subscriber, Socket) and transport is not None:
            subscriber.attach(transport, send)
            return True
        assert isinstance(subscriber, Queued)
        await _relay(self.hub, subscriber, receive, send)
        return False

    def release(self) -> None:
        """Ended by the hub, the client, or an error: a reset is right for the last two, and
        does nothing to a connection that is gone or a response that is complete."""
        self.hub.unsubscribe(self.subscriber, abort=True)

    async def _send_backlog(self, send: Send) -> bool:
        """Send the backlog; True when it ended a single-job stream."""
        backlog, self.backlog = self.backlog, None  # not kept for the life of the stream
        assert backlog is not None
        subscriber = self.subscriber
        sent: dict[str, int] = {}
        async for data, ended in resume.chunks(self.store, backlog, sent, subscriber.single_job):
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if ended:
                return True
        subscriber.seen = sent or None
        if backlog.last_id is not None:
            subscriber.after = order(backlog.last_id)
        return False


class Streams:
    """Opens streams: one per process, sharing the hub and the snapshot reads."""

    def __init__(self, hub: Hub, store: Store) -> None:
        self.hub = hub
        self.store = store
        self.snapshots = resume.Snapshots(store, hub)

    async def open(self, scope: Scope, receive: Receive, topics: Sequence[str],
                   last_id: str | None, finished: bool | None,
                   headers: list[tuple[bytes, bytes]]) -> Stream | None:
        """A stream of `topics`, subscribed before its first page is read, whose response
        will carry `headers` too. `finished` is, for a single-job stream, whether the job is
        terminal: resuming it with nothing after `last_id` is None (answer 204, which tells
        a browser to stop)."""
        transport = _transport(scope, receive)
        single_job = finished is not None
        subscriber: Socket | Queued = (Socket(topics, single_job) if transport is not None
                                       else Queued(topics, single_job))
        self.hub.subscribe(subscriber)
        try:
            backlog = await resume.first_page(self.store, self.snapshots, topics, last_id)
        except BaseException:
            self.hub.unsubscribe(subscriber)
            raise
        if finished and last_id is not None and not backlog.first:
            self.hub.unsubscribe(subscriber)
            return None
        return Stream(self.hub, self.store, subscriber, backlog, transport, headers)


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _relay(hub: Hub, subscriber: Queued, receive: Receive, send: Send) -> None:
    """Send the hub's frames from the mailbox until the hub lets go or the client leaves. A
    stream that fell behind sends everything waiting in one chunk."""
    watcher = asyncio.create_task(_until_disconnected(receive))
    watcher.add_done_callback(lambda _: hub.unsubscribe(subscriber))
    try:
        mailbox = subscriber.mailbox
        while True:
            frames = [await mailbox.get(), *mailbox.get_waiting()]
            data = b"".join(frame.data for frame in frames
                            if frame is not None and subscriber.fresh(frame))
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if frames[-1] is None:
                break
        await send(END)
    finally:
        watcher.cancel()


def _transport(scope: Scope, receive: Receive) -> Transport | None:
    """The connection's transport when the server is uvicorn speaking HTTP/1.1 (whose body is
    chunked unless told a length); None elsewhere. Uvicorn's `receive` is a method of its
    request cycle, which holds the transport."""
    cycle = getattr(receive, "__self__", None)
    if scope.get("http_version") != "1.1" or not type(cycle).__module__.startswith(
            "uvicorn.protocols.http."):
        return None
    transport = getattr(cycle, "transport", None)
    needed = ("write", "get_write_buffer_size", "get_extra_info", "abort")
    return transport if all(callable(getattr(transport, n, None)) for n in needed) else None


def _reset_if_unread(transport: Transport) -> None:
    if transport.get_write_buffer_size():
        logger.info("resetting a stream whose client did not read its end")
        _reset(transport)


def _reset(transport: Transport) -> None:
    """End the connection now: a reset, discarding what is buffered for the peer. A graceful
    close waits until the peer has read everything, and even a closed socket lingers in the
    kernel while its peer's window stays shut; a reset (SO_LINGER 0) frees both at once."""
    sock = transport.get_extra_info("socket")
    # A connection its client closed has no socket left: asyncio's answers OSError, uvloop's
    # ValueError (a negative file descriptor); either way there is nothing to reset.
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
