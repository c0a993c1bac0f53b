"""The hub: one reader of the store's event log per process, feeding every local subscriber.

Each event is encoded once (`wire.encode`, which also frames it as an HTTP chunk) and handed to
every subscriber whose topics it carries, found by a dict lookup per topic. What a subscriber
does with it is its own: a stream under uvicorn writes the chunk to its connection at once
(`stream.Socket`, no task or queue per subscriber), a long-poll or a stream under another
server puts it on a bounded mailbox (`Queued`). One that is not keeping up says so and is
dropped (its stream ends and the browser resumes with Last-Event-ID) rather than slowing anyone
else. A single-job subscriber is let go after its job's terminal event.

Every `heartbeat` seconds the hub gives every subscriber a heartbeat (one timer for the
process, none per stream); a stream whose client has read nothing since the last beats
(`stream.STALL_TIMEOUT`) is dropped then.

A hub that falls further behind than the store keeps events (Redis retention, after a long
stall) cannot deliver what was trimmed: it closes every local subscriber, whose browsers
resume with Last-Event-ID and are told (`relay.reset`, then the current state), and goes on
from the newest event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import deque
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any, TypeVar

from relay.errors import StoreError
from relay.fanout.wire import HEARTBEAT, Frame, encode, operational
from relay.models import OPS_TOPIC, Event, utcnow
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store import Broadcast, Store
from relay.store.cursors import order
from relay.store.follow import Gap, follow

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256

S = TypeVar("S", bound="Subscriber")


class Subscriber:
    """What the hub delivers to. A stream's backlog leaves what its live frames may repeat:
    `after`, the position of the cursor it resumed from, and `seen`, the version of each job
    the backlog sent (see `fresh`)."""

    __slots__ = ("after", "closed", "seen", "single_job", "topics")

    def __init__(self, topics: Iterable[str], single_job: bool = False) -> None:
        # A tuple is a quarter of a frozenset's size, and thousands of streams of one topic
        # share its string.
        self.topics = tuple(dict.fromkeys(map(sys.intern, topics)))
        self.single_job = single_job
        self.after: tuple[int, int] | None = None
        self.seen: dict[str, int] | None = None
        self.closed = False

    def deliver(self, frame: Frame) -> bool:
        """Take `frame`; False when the subscriber is not keeping up (the hub drops it)."""
        raise NotImplementedError

    def beat(self, now: float) -> bool:
        """A heartbeat at loop time `now`; False when the subscriber has stalled."""
        return self.deliver(HEARTBEAT)

    def close(self, abort: bool = False) -> None:
        """The hub lets go: end after what was delivered, or (`abort`) at once."""
        self.closed = True

    def fresh(self, frame: Frame) -> bool:
        """Whether a live frame is new to this subscriber. It is not when it is at or before
        the cursor the stream resumed from (the client had it from another instance, whose
        hub was ahead of this one), or a version of a job the backlog sent at or below the
        one sent (a job's versions only go up). The hub passes events in order, so `after`
        is forgotten at the first frame past it, and a job's entry in `seen` at its first
        newer frame: neither outlives the overlap with the backlog."""
        if self.after is not None and frame.cursor:
            if order(frame.cursor) <= self.after:
                return False
            self.after = None
        seen = self.seen
        if seen is None or (version := seen.get(frame.job_id)) is None:
            return True
        if frame.version <= version:
            return False
        del seen[frame.job_id]
        return True


class Mailbox:
    """A bounded FIFO with one reader: what a subscriber needs of asyncio.Queue, in a fraction
    of its memory (one deque rather than four, no events) and of its cost per frame."""

    __slots__ = ("_frames", "_limit", "_waiter")

    def __init__(self, limit: int = QUEUE_SIZE) -> None:
        self._frames: deque[Frame | None] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def put(self, frame: Frame) -> bool:
        """Add `frame`; False, adding nothing, when the mailbox is full."""
        if len(self._frames) >= self._limit:
            return False
        self._frames.append(frame)
        self._wake()
        return True

    def close(self, discard: bool) -> None:
        """Add `None`, which tells the reader to stop; `discard`: instead of what waits."""
        if discard:
            self._frames.clear()
        self._frames.append(None)
        self._wake()

    async def get(self) -> Frame | None:
        while not self._frames:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._frames.popleft()

    def get_waiting(self) -> list[Frame | None]:
        """Everything waiting, without waiting."""
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def __len__(self) -> int:
        return len(self._frames)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Queued(Subscriber):
    """A subscriber read by a task of its own: a long-poll, or a stream the hub cannot write
    to itself. `None` in its mailbox means: stop."""

    __slots__ = ("mailbox",)

    def __init__(self, topics: Iterable[str], single_job: bool = False) -> None:
        super().__init__(topics, single_job)
        self.mailbox = Mailbox()

    def deliver(self, frame: Frame) -> bool:
        return self.mailbox.put(frame)  # its reader asks `fresh`, once the backlog is sent

    def close(self, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.mailbox.close(discard=abort)


class Hub:
    def __init__(self, store: Store, metrics: Metrics, heartbeat: float = 15.0) -> None:
        self.store = store
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.stopping = asyncio.Event()
        self._shared = store if isinstance(store, Broadcast) else None
        self._by_topic: dict[str, set[Subscriber]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self.passed = 0
        """Changes whenever the hub passes on events (or loses its place in the log): a
        snapshot read while it stays the same misses nothing a new subscriber would."""

    def subscribers(self) -> set[Subscriber]:
        """Every subscriber, once (a copy)."""
        return set().union(*self._by_topic.values())

    async def start(self) -> None:
        cursor = await self.store.last_cursor()
        self._tasks = [asyncio.create_task(self._follow(cursor), name="hub"),
                       asyncio.create_task(self._beat(), name="hub-heartbeat"),
                       asyncio.create_task(self._close_on_stop(), name="hub-stop")]
        if self._shared is not None:
            self._tasks.append(asyncio.create_task(self._hear(self._shared), name="hub-ops"))

    async def stop(self) -> None:
        self.stopping.set()
        await cancel_all([*self._tasks, *self._publishing])
        self._close_all()

    async def _close_on_stop(self) -> None:
        # The server sets `stopping` as soon as it is asked to exit, before it waits for
        # open responses: ending every stream now is what lets shutdown finish promptly.
        await self.stopping.wait()
        self._close_all()

    def subscribe(self, subscriber: S) -> S:
        if self.stopping.is_set() or not subscriber.topics:
            subscriber.close()
            return subscriber
        if not self._by_topic and self._shared is not None:
            self._shared.hurry(True)  # someone waits for events now: read them as they come
        for topic in subscriber.topics:
            self._by_topic.setdefault(topic, set()).add(subscriber)
        self.metrics.subscribers.inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber, abort: bool = False) -> None:
        """Stop delivering to `subscriber` and close it; safe to call more than once."""
        if subscriber not in self._by_topic.get(next(iter(subscriber.topics), ""), ()):
            subscriber.close(abort)
            return
        for topic in subscriber.topics:
            members = self._by_topic[topic]
            members.discard(subscriber)
            if not members:
                del self._by_topic[topic]
        if not self._by_topic and self._shared is not None:
            self._shared.hurry(False)
        self.metrics.subscribers.dec()
        subscriber.close(abort)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat)
            now = loop.time()
            for subscriber in self.subscribers():
                if not subscriber.beat(now):
                    self._drop(subscriber, "its client has read nothing for a while")

    async def _follow(self, cursor: str | None) -> None:
        async for page in follow(self.store, cursor):
            if page:  # events, or a gap
                self.passed += 1
            if isinstance(page, Gap):
                logger.warning("the hub lost its place in the store's log (%s); its %d "
                               "subscribers resume from their Last-Event-ID", page.reason,
                               len(self.subscribers()))
                self._close_all()
                continue
            if not self._by_topic:  # no one to send to: an instance that only takes webhooks
                continue
            now = utcnow()
            for event in page:
                self._dispatch(event, now)

    def _dispatch(self, event: Event, now: datetime) -> None:
        targets = self._targets(event.head.topics)
        if not targets:
            return
        frame = encode(event)
        for subscriber in targets:
            if not subscriber.deliver(frame):
                self._drop(subscriber, "it is not keeping up")
            elif frame.terminal and subscriber.single_job:
                self.unsubscribe(subscriber)
        lag = (now - datetime.fromisoformat(event.received_at)).total_seconds()
        self.metrics.delivery_lag.observe(max(lag, 0.0))

    def announce(self, kind: str, data: dict[str, Any]) -> None:
        """An operational event, to the subscribers of OPS_TOPIC: of every instance when the
        store is shared (it is published, and each hub, this one too, hears it), else of
        this process."""
        if self._shared is None:
            self._tell(kind, data)
            return
        message = json.dumps({"type": kind, "data": data}, separators=(",", ":"), default=str)
        task = asyncio.create_task(self._publish(self._shared, message), name="hub-announce")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, store: Broadcast, message: str) -> None:
        try:
            await store.publish(message)
        except StoreError as exc:
            logger.warning("could not tell the other instances an operational event: %s", exc)

    async def _hear(self, store: Broadcast) -> None:
        async for message in store.messages():
            try:
                told = json.loads(message)
                self._tell(str(told["type"]), told["data"])
            except (ValueError, KeyError, TypeError):  # not one of ours
                logger.warning("ignored an operational event that could not be read: %.200r",
                               message)

    def _tell(self, kind: str, data: dict[str, Any]) -> None:
        targets = self._targets([OPS_TOPIC])
        if not targets:
            return
        frame = operational(kind, data)
        for subscriber in targets:
            if not subscriber.deliver(frame):
                self._drop(subscriber, "it is not keeping up")

    def _targets(self, topics: Iterable[str]) -> Collection[Subscriber]:
        """Every subscriber of any of `topics`, once; a copy, as delivering can unsubscribe."""
        found = [members for topic in topics if (members := self._by_topic.get(topic))]
        if len(found) == 1:
            return list(found[0])
        return set().union(*found) if found else ()

    def _drop(self, subscriber: Subscriber, why: str) -> None:
        logger.info("dropping a subscriber: %s", why)
        self.metrics.dropped_subscribers.inc()
        self.unsubscribe(subscriber, abort=True)

    def _close_all(self) -> None:
        for subscriber in self.subscribers():
            self.unsubscribe(subscriber)
