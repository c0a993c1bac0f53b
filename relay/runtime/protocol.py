"""uvicorn's HTTP/1.1 protocol (httptools), with the limits a public server needs and uvicorn
lacks: a connection has `header_timeout` seconds to send a request head, and `body_timeout`
seconds for the body after it; past `max_connections` open connections, a new one is answered
503 in the relay's error envelope and closed.

    connection ─► head within header_timeout ─► body within body_timeout ─► app
                  (idle between kept-alive requests: uvicorn's keep-alive timeout)

Without them, connections that send a request head a byte at a time stay open for as long
as their sender likes, and enough of them exhaust the process's file descriptors.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.runtime.ids import request_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 10_000
    header_timeout: float = 10.0
    body_timeout: float = 30.0


class LimitedProtocol(HttpToolsProtocol):
    """One per connection, so its size is what an idle SSE subscriber costs. The limits are a
    class attribute (`limited`) and the protocol adds one attribute of its own: uvicorn's own
    29 keep the instance dict a shared-key one (296 bytes); one more makes it an ordinary
    dict of 1.6 kB, per connection."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(_too_many(self.limits.max_connections))
            transport.close()
            return
        self._expect(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._expect(None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A kept-alive connection's next request; the first has had its deadline since the
        # connection opened.
        if self._deadline is None:
            self._expect(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._expect(self.limits.body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._expect(None)

    def _expect(self, seconds: float | None) -> None:
        """Close the connection unless the next part of the request arrives in `seconds`
        (None: nothing is awaited from the client now)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if seconds is not None:
            self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.info("closing a connection from %s: its request did not arrive in time",
                        self.client)
            self.transport.close()


def limited(limits: ConnectionLimits) -> type[LimitedProtocol]:
    """The protocol class (uvicorn's `http` setting) that keeps `limits`."""
    return type("LimitedProtocol", (LimitedProtocol,), {"limits": limits})


def _too_many(limit: int) -> bytes:
    rid = request_id()
    body = json.dumps({"error": "unavailable", "message": f"more than {limit} connections are "
                       "open; retry", "details": {"max_connections": limit},
                       "request_id": rid}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nx-request-id: {rid}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body
