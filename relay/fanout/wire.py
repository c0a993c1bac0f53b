"""The SSE wire format, written in one place: every byte a stream sends is made here.

An event is encoded once, into a `Frame`, and the same bytes go to every subscriber: `data` for
a stream that sends through the server, `chunk` (the same, framed as an HTTP/1.1 chunk) for one
the hub writes to its connection itself. `id` and
`event` lines are checked: a CR, LF or NUL in them would let a value end its line early and
forge fields, so they are refused (cursors and event names are the relay's own, so this never
happens unless something is badly wrong).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relay.models import Event

RETRY_MS = 3000
JOB_UPDATED = "job.updated"
RESET = "relay.reset"
_UNSAFE = frozenset("\r\n\0")


@dataclass(frozen=True, slots=True)
class Frame:
    """One event as it goes on the wire, with what streams need to route and dedupe it."""

    cursor: str
    job_id: str
    version: int
    terminal: bool
    data: bytes
    chunk: bytes


def chunked(data: bytes) -> bytes:
    """`data` as one chunk of an HTTP/1.1 `Transfer-Encoding: chunked` body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def message(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE message: `id:`, `event:`, and `data:` lines (one per line of `data`)."""
    lines = []
    for name, value in (("id", id), ("event", event)):
        if value is not None:
            if not _UNSAFE.isdisjoint(value):
                raise ValueError(f"unsafe SSE {name} {value[:64]!r}")
            lines.append(f"{name}: {value}\n")
    lines += [f"data: {line}\n" for line in data.split("\n")]
    return ("".join(lines) + "\n").encode()


def encode(event: Event) -> Frame:
    job = event.job
    body = job.to_json()
    data = message(body, event=JOB_UPDATED, id=event.cursor)
    return Frame(event.cursor, job.id, job.version, job.terminal, data, chunked(data))


def operational(kind: str, data: dict[str, Any]) -> Frame:
    """An operational event (`relay.subscription.failing`, …): no `id:`, since it is not in
    the store's log, so a client's Last-Event-ID stays the last job event it had."""
    body = json.dumps(data, separators=(",", ":"), default=str)
    framed = message(body, event=kind)
    return Frame("", "", 0, False, framed, chunked(framed))


def reset(reason: str) -> bytes:
    """`relay.reset`: the events after the client's cursor are not all sent; the current
    state follows. No `id:`, so the client keeps the last one it had."""
    return message(json.dumps({"reason": reason}, separators=(",", ":")), event=RESET)


RETRY = f"retry: {RETRY_MS}\n\n".encode()
"""How long a browser waits before it reconnects."""

HEARTBEAT = Frame("", "", 0, False, b": heartbeat\n\n", chunked(b": heartbeat\n\n"))
"""A comment that keeps idle streams open through proxies; not an event."""
