"""The SSE response: sends a stream's chunks, and ends the connection when its client stops
reading instead of waiting on it.

Starlette's StreamingResponse awaits each send for as long as it takes. A client that stops
reading fills the socket buffers, the next send waits forever, and the stream never sees that
the hub dropped it or that the server is stopping. Here a send that is waiting when the
subscriber closes (dropped, client gone, server stopping) is abandoned at once, and so is any
send a closed stream would have to wait for; then the connection is aborted, because a
graceful close would wait for the peer to read what is buffered first, which a client that
never reads never does. The hub drops a subscriber whose stream has waited on one send for too
long (`hub.STALL_TIMEOUT`), so a client that stops reading between events goes the same way.

    chunks ──► send ──► socket          (a send waiting on the client sets busy_since)
                 ▲
    subscriber.close() ── a waiting send is abandoned ──► abort the connection
    receive() says http.disconnect ──► hub.unsubscribe ──► subscriber.close()

The deadline is one `asyncio.Timeout` per stream, unarmed until needed: a send costs no timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any

from relay.errors import RelayError
from relay.fanout.hub import Hub, Subscriber

logger = logging.getLogger(__name__)

ABORT_WAIT = 1.0
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class EventStream:
    """A `text/event-stream` response (an ASGI app) fed by `chunks`, for as long as
    `subscriber` is open.

    The stream owns the subscription: it is released when the response ends, however it ends.
    """

    def __init__(self, chunks: AsyncGenerator[bytes, None], subscriber: Subscriber,
                 hub: Hub) -> None:
        self.chunks = chunks
        self.subscriber = subscriber
        self.hub = hub
        self._deadline: asyncio.Timeout | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        self.subscriber.on_close = self._hurry
        try:
            if await self._run(send):
                logger.info("aborting a stream whose client is not reading")
                _abort(receive)
                await asyncio.wait([watcher], timeout=ABORT_WAIT)  # the server sees it go
        finally:
            self.subscriber.on_close = None
            watcher.cancel()
            await self.chunks.aclose()
            self.hub.unsubscribe(self.subscriber)

    async def _run(self, send: Send) -> bool:
        """Stream to the end; True when a send was abandoned."""
        try:
            async with asyncio.timeout(None) as self._deadline:
                await self._stream(send)
        except TimeoutError:
            return True
        finally:
            self._deadline = None
        return False

    async def _stream(self, send: Send) -> None:
        await self._send(send, {"type": "http.response.start", "status": 200,
                                "headers": list(HEADERS)})  # middlewares edit it
        try:
            async for chunk in self.chunks:
                await self._send(send, _body(chunk, more=True))
        except RelayError:
            logger.warning("ending a stream early: its backlog could not be read", exc_info=True)
        await self._send(send, _body(b"", more=False))

    async def _send(self, send: Send, message: Message) -> None:
        subscriber = self.subscriber
        if subscriber.closed:
            self._expire()  # a closed stream waits for no one: a send that would wait fails
        subscriber.busy_since = asyncio.get_running_loop().time()
        try:
            await send(message)
        finally:
            subscriber.busy_since = None

    def _hurry(self) -> None:
        """The subscriber closed: a send still waiting on the client is abandoned now."""
        if self.subscriber.busy_since is not None:
            self._expire()

    def _expire(self) -> None:
        if self._deadline is not None and self._deadline.when() is None:
            self._deadline.reschedule(asyncio.get_running_loop().time())

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.hub.unsubscribe(self.subscriber)


def _body(chunk: bytes, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": more}


def _abort(receive: Receive) -> None:
    """End the connection now: a reset, discarding what is buffered for the peer.

    ASGI has no message for this. An app that returns mid-response gets a graceful close,
    which waits until the peer has read everything, and even a closed socket lingers in the
    kernel while its peer's window stays shut; a reset (SO_LINGER 0) frees both at once.
    Uvicorn's `receive` is a method of its request cycle, which holds the transport; under a
    server without one, the graceful close is what happens.
    """
    transport: Any = getattr(getattr(receive, "__self__", None), "transport", None)
    if not callable(getattr(transport, "abort", None)):
        return
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
