"""What a stream sends before live events: the current state of each job, or exactly the events
after `Last-Event-ID`.

    subscribe ─► first page (read before the response starts) ─► the rest ─► live frames
                 ├ no Last-Event-ID: the latest event of each visible job (a read shared by
                 │   the streams of the same topics that subscribed before it began, and
                 │   by those after it while the hub passes no event)
                 ├ Last-Event-ID: store.read_since(id), paged, at most MAX_REPLAY events
                 └ a cursor the store cannot place, or past MAX_REPLAY:
                     relay.reset (reason), then the latest event of each job

The stream subscribes to the hub before it reads, so nothing falls between the two. An event
can arrive both ways only while the backlog and the live frames overlap: the backlog records
the version of each job it sent (`sent`, the subscriber's `seen`) and the live frames at or
below it are skipped (a job's versions only go up; the hub sends each event once, in order).
On Redis the client may resume on another instance than the one that gave it its cursor,
whose hub has not passed that event yet: live frames at or before the cursor are skipped too
(the subscriber's `after`).

A client that does not listen for `relay.reset` still receives the current state as ordinary
`job.updated` events; a browser's EventSource, which resends its Last-Event-ID forever, is
never stranded by an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from relay.errors import CursorError, CursorExpired
from relay.fanout.hub import Hub
from relay.fanout.wire import RETRY, Frame, encode, reset
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
    first: list[Frame]
    reset: str | None = None


class Snapshots:
    """The latest event of each job of some topics, read once for every stream that asks while
    no read of those topics has begun: thousands of browsers connecting at once make a few
    reads, not thousands. Only a read that begins after a stream subscribed may serve it (an
    event committed before then may have passed its subscription by), so a stream that asks
    while a read is under way waits for the next one.

    A read the hub passed no event during stays current for as long as the hub passes none:
    every event committed since would have to reach a new stream live. Such a read serves the
    streams that ask after it, at once, for up to REUSE_FOR seconds (jobs retention deletes
    pass no event), so a crowd connecting while nothing happens waits for no read at all.
    Each read is encoded once, for all the streams it serves."""

    REUSE_FOR = 1.0
    KEPT = 1024
    """Topic sets whose read is kept at most: those of the last second, the oldest forgotten
    first."""

    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self._next: dict[tuple[str, ...], asyncio.Future[list[Frame]]] = {}
        self._readers: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self._kept: dict[tuple[str, ...], tuple[int, float, list[Frame]]] = {}

    async def latest(self, topics: Sequence[str]) -> list[Frame]:
        key = tuple(topics)
        kept = self._kept.get(key)
        if kept is not None:
            passed, until, frames = kept
            if passed == self.hub.passed and asyncio.get_running_loop().time() < until:
                return frames
            del self._kept[key]
        future = self._next.get(key)
        if future is None:
            future = self._next[key] = asyncio.get_running_loop().create_future()
            if key not in self._readers:
                self._readers[key] = asyncio.create_task(self._read(key))
        # Shielded: one waiter cancelled (its client left) must not cancel the others' read.
        return await asyncio.shield(future)

    async def _read(self, key: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (future := self._next.pop(key, None)) is not None:
                passed, began = self.hub.passed, loop.time()
                try:
                    frames = list(map(encode, await self.store.latest(key, SNAPSHOT_LIMIT)))
                except Exception as exc:  # each waiter raises it (a StoreError: 503)
                    future.set_exception(exc)
                    continue
                future.set_result(frames)
                if passed == self.hub.passed:
                    self._keep(key, (passed, began + self.REUSE_FOR, frames))
        finally:
            del self._readers[key]

    def _keep(self, key: tuple[str, ...], kept: tuple[int, float, list[Frame]]) -> None:
        kept_ones = self._kept
        kept_ones.pop(key, None)
        now = asyncio.get_running_loop().time()
        # Kept in the order they were read, so the first is the first to expire.
        while kept_ones and (len(kept_ones) >= self.KEPT
                             or next(iter(kept_ones.values()))[1] <= now):
            del kept_ones[next(iter(kept_ones))]
        kept_ones[key] = kept


async def first_page(store: Store, snapshots: Snapshots, topics: Sequence[str],
                     last_id: str | None) -> Backlog:
    if last_id is None:
        # The newest jobs, sent oldest cursor first: the last id seen is a resume point.
        return Backlog(topics, None, await snapshots.latest(topics))
    try:
        events = await store.read_since(last_id, topics=topics, limit=PAGE)
    except CursorError as exc:
        reason = reset_reason(exc)
        logger.info("a subscriber resumed from a cursor the store cannot place (%s); "
                    "it gets relay.reset and the current state", reason)
        return Backlog(topics, None, await snapshots.latest(topics), reset=reason)
    return Backlog(topics, last_id, list(map(encode, events)))


async def chunks(store: Store, backlog: Backlog, sent: dict[str, int], single_job: bool
                 ) -> AsyncIterator[tuple[bytes, bool]]:
    """The backlog as the bodies to send, one per page (the first starts with `retry:`), and
    whether a single-job stream ends with it. Records in `sent` each job's version sent."""
    prefix = RETRY
    async for page in _pages(store, backlog):
        data, ended = _encode(page, sent, single_job)
        yield prefix + data, ended
        if ended:
            return
        prefix = b""


def _encode(page: list[Frame | Reset], sent: dict[str, int], single_job: bool
            ) -> tuple[bytes, bool]:
    parts = []
    for frame in page:
        if isinstance(frame, Reset):
            parts.append(reset(frame.reason))
            continue
        if sent.get(frame.job_id, 0) < frame.version:
            sent[frame.job_id] = frame.version
            parts.append(frame.data)
            if single_job and frame.terminal:
                return b"".join(parts), True
    return b"".join(parts), False


async def _pages(store: Store, backlog: Backlog) -> AsyncIterator[list[Frame | Reset]]:
    announced: list[Frame | Reset] = [Reset(backlog.reset)] if backlog.reset else []
    yield [*announced, *backlog.first]
    if backlog.last_id is not None and len(backlog.first) == PAGE:
        async for page in _replay(store, backlog.topics, backlog.first[-1].cursor):
            yield page


async def _replay(store: Store, topics: Sequence[str], cursor: str
                  ) -> AsyncIterator[list[Frame | Reset]]:
    # Capped: a client more than MAX_REPLAY events behind gets the current state of the
    # newest jobs instead of the rest of the log; so does one whose cursor the store
    # trimmed away (or lost, reset) while it was catching up.
    reason = TOO_FAR_BEHIND
    try:
        for _ in range(MAX_REPLAY // PAGE - 1):
            events = await store.read_since(cursor, topics=topics, limit=PAGE)
            yield list(map(encode, events))
            if len(events) < PAGE:
                return
            cursor = events[-1].cursor
    except CursorError as exc:
        reason = reset_reason(exc)
    yield [Reset(reason), *map(encode, await store.latest(topics, SNAPSHOT_LIMIT))]
