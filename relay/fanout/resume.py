"""What a stream sends: first what came before (the current state of each job, or exactly
the events after `Last-Event-ID`), then the hub's live frames.

    subscribe ─► first page (read before the response starts) ─► the rest ─► live frames
                 ├ no Last-Event-ID: the latest event of each visible job
                 ├ Last-Event-ID: store.read_since(id), paged, at most MAX_REPLAY events
                 └ a cursor the store cannot place, or past MAX_REPLAY:
                     relay.reset (reason), then the latest event of each job

The stream subscribes to the hub before it reads, so nothing falls between the two. An event
can arrive both ways only while the backlog and the live frames overlap: the stream remembers
the version of each job its backlog sent and skips live frames at or below it (a job's
versions only go up; the hub sends each event once, in order).

A client that does not listen for `relay.reset` still receives the current state as ordinary
`job.updated` events; a browser's EventSource, which resends its Last-Event-ID forever, is
never stranded by an error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from relay.errors import CursorError, CursorExpired
from relay.fanout.hub import Subscriber
from relay.fanout.wire import HEARTBEAT, RETRY, Frame, encode, reset
from relay.models import Event
from relay.store import Store

PAGE = 500
MAX_REPLAY = 10_000
SNAPSHOT_LIMIT = 100

CURSOR_EXPIRED = "cursor_expired"
TOO_FAR_BEHIND = "too_far_behind"
UNKNOWN_CURSOR = "unknown_cursor"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reset:
    """The events after the client's cursor are not all sent; the current state follows."""

    reason: str


def reset_reason(error: CursorError) -> str:
    return CURSOR_EXPIRED if isinstance(error, CursorExpired) else UNKNOWN_CURSOR


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a stream sends before live frames: `first`, read before the response starts,
    then (when resuming and the first page was full) the rest of the log after it. With
    `reset`, `first` is the current state, announced by a `relay.reset` of that reason."""

    topics: Sequence[str]
    last_id: str | None
    first: list[Event]
    reset: str | None = None


async def first_page(store: Store, topics: Sequence[str], last_id: str | None) -> Backlog:
    if last_id is None:
        # The newest jobs, sent oldest cursor first: the last id seen is a resume point.
        return Backlog(topics, None, await store.latest(topics, SNAPSHOT_LIMIT))
    try:
        events = await store.read_since(last_id, topics=topics, limit=PAGE)
    except CursorError as exc:
        reason = reset_reason(exc)
        logger.info("a subscriber resumed from a cursor the store cannot place (%s); "
                    "it gets relay.reset and the current state", reason)
        return Backlog(topics, None, await store.latest(topics, SNAPSHOT_LIMIT), reset=reason)
    return Backlog(topics, last_id, events)


async def chunks(store: Store, subscriber: Subscriber, backlog: Backlog, single_job: bool
                 ) -> AsyncGenerator[bytes, None]:
    """Every chunk of the stream: `retry:`, the backlog, then live frames; for a single-job
    stream, until its terminal event."""
    sent: dict[str, int] = {}
    yield RETRY
    replayed = _replayed(store, backlog, sent)
    del backlog  # what was sent first is not kept for the life of the stream
    async for data, terminal in replayed:
        yield data
        if single_job and terminal:
            return
    data = b""  # nor its last frame
    async for chunk in _live(subscriber, sent, single_job):
        yield chunk


async def _replayed(store: Store, backlog: Backlog, sent: dict[str, int]
                    ) -> AsyncIterator[tuple[bytes, bool]]:
    async for item in _backlog(store, backlog):
        if isinstance(item, Reset):
            yield reset(item.reason), False
            continue
        frame = encode(item)
        if sent.get(frame.job_id, 0) < frame.version:
            sent[frame.job_id] = frame.version
            yield frame.data, frame.terminal


async def _backlog(store: Store, backlog: Backlog) -> AsyncIterator[Event | Reset]:
    if backlog.reset is not None:
        yield Reset(backlog.reset)
    for event in backlog.first:
        yield event
    if backlog.last_id is not None and len(backlog.first) == PAGE:
        async for item in _replay(store, backlog.topics, backlog.first[-1].cursor):
            yield item


async def _replay(store: Store, topics: Sequence[str], cursor: str
                  ) -> AsyncIterator[Event | Reset]:
    # Capped: a client more than MAX_REPLAY events behind gets the current state of the
    # newest jobs instead of the rest of the log; so does one whose cursor the store
    # trimmed away (or lost, reset) while it was catching up.
    reason = TOO_FAR_BEHIND
    try:
        for _ in range(MAX_REPLAY // PAGE - 1):
            events = await store.read_since(cursor, topics=topics, limit=PAGE)
            for event in events:
                yield event
            if len(events) < PAGE:
                return
            cursor = events[-1].cursor
    except CursorError as exc:
        reason = reset_reason(exc)
    yield Reset(reason)
    for event in await store.latest(topics, SNAPSHOT_LIMIT):
        yield event


async def _live(subscriber: Subscriber, sent: dict[str, int], single_job: bool
                ) -> AsyncIterator[bytes]:
    # A stream that fell behind sends everything waiting in one chunk: one write, not
    # one per frame, exactly when writes are what it cannot keep up with.
    mailbox = subscriber.mailbox
    while True:
        frames = [await mailbox.get(), *mailbox.get_waiting()]
        chunk, done = _batch(frames, sent, single_job)
        if chunk:
            yield chunk
        if done:
            return


def _batch(frames: list[Frame | None], sent: dict[str, int], single_job: bool
           ) -> tuple[bytes, bool]:
    """The bytes to send for `frames`, and whether the stream ends after them."""
    parts: list[bytes] = []
    for frame in frames:
        if frame is None:
            return b"".join(parts), True
        if frame is HEARTBEAT or _unseen(frame, sent):
            parts.append(frame.data)
            if single_job and frame.terminal:
                return b"".join(parts), True
    return b"".join(parts), False


def _unseen(frame: Frame, sent: dict[str, int]) -> bool:
    """Whether a live frame is new to this stream. Only jobs the backlog sent can repeat, and
    once a newer frame of one arrives, none can again: its entry is forgotten, so `sent`
    never outgrows the backlog."""
    seen = sent.get(frame.job_id)
    if seen is None:
        return True
    if frame.version <= seen:
        return False
    del sent[frame.job_id]
    return True
