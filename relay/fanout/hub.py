"""The hub: one reader of the store's event log per process, feeding every local subscriber.

Each event is encoded as an SSE message once and the same bytes go to every subscriber whose
topics it carries. A subscriber's queue is bounded; one that falls behind is dropped (its
stream ends and the browser resumes with Last-Event-ID) rather than slowing anyone else.
A subscriber that is no longer registered is always closed: `unsubscribe` closes it, and
closing tells its stream to stop (through the queue, and through `on_close` for a stream
that is stuck sending to a client that does not read).

Every `heartbeat` seconds the hub puts a heartbeat frame on every queue (one timer for the
process, none per stream) and drops any subscriber whose stream has been stuck in one send
for more than STALL_TIMEOUT: a client that stopped reading between events, so its queue
never filled.

A hub that falls further behind than the store keeps events (Redis retention, after a long
stall) cannot deliver what was trimmed: it closes every local subscriber, whose browsers
resume with Last-Event-ID and are told (`relay.reset`, then the current state), and goes on
from the newest event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relay.errors import StoreError
from relay.fanout.wire import HEARTBEAT, Frame, encode, operational
from relay.models import OPS_TOPIC, Event, utcnow
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store import Broadcast, Store
from relay.store.follow import Gap, follow

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256
STALL_TIMEOUT = 30.0


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

    def close(self) -> None:
        """Replace whatever waits with `None`, which tells the reader to stop."""
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


@dataclass(eq=False)
class Subscriber:
    """A local stream's mailbox. `None` in it means: stop (dropped or shutting down).

    `on_close` is called once when it closes, from whichever task closes it. A stream sets
    `busy_since` (the loop's clock) while it waits on a send, for the hub's stall check."""

    topics: frozenset[str]
    mailbox: Mailbox = field(default_factory=Mailbox)
    closed: bool = False
    on_close: Callable[[], None] | None = None
    busy_since: float | None = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.mailbox.close()
        if self.on_close is not None:
            self.on_close()


class Hub:
    def __init__(self, store: Store, metrics: Metrics, heartbeat: float = 15.0) -> None:
        self.store = store
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.stopping = asyncio.Event()
        self._by_topic: dict[str, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        cursor = await self.store.last_cursor()
        self._tasks = [asyncio.create_task(self._follow(cursor), name="hub"),
                       asyncio.create_task(self._beat(), name="hub-heartbeat"),
                       asyncio.create_task(self._close_on_stop(), name="hub-stop")]
        if isinstance(self.store, Broadcast):
            self._tasks.append(asyncio.create_task(self._hear(self.store), name="hub-ops"))

    async def stop(self) -> None:
        self.stopping.set()
        await cancel_all([*self._tasks, *self._publishing])
        self._close_all()

    async def _close_on_stop(self) -> None:
        # The server sets `stopping` as soon as it is asked to exit, before it waits for
        # open responses: ending every stream now is what lets shutdown finish promptly.
        await self.stopping.wait()
        self._close_all()

    def subscribe(self, topics: Iterable[str]) -> Subscriber:
        subscriber = Subscriber(frozenset(topics))
        if self.stopping.is_set():
            subscriber.close()
            return subscriber
        for topic in subscriber.topics:
            self._by_topic.setdefault(topic, set()).add(subscriber)
        self._all.add(subscriber)
        self.metrics.subscribers.inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivering to `subscriber` and close it; safe to call more than once."""
        subscriber.close()
        if subscriber not in self._all:
            return
        self._all.discard(subscriber)
        for topic in subscriber.topics:
            members = self._by_topic[topic]
            members.discard(subscriber)
            if not members:
                del self._by_topic[topic]
        self.metrics.subscribers.dec()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat)
            stalled_before = loop.time() - STALL_TIMEOUT
            for subscriber in list(self._all):
                busy = subscriber.busy_since
                if busy is not None and busy < stalled_before:
                    self._drop(subscriber, f"stuck in one send for {STALL_TIMEOUT:.0f} s")
                else:
                    self._put(subscriber, HEARTBEAT)

    async def _follow(self, cursor: str | None) -> None:
        async for page in follow(self.store, cursor):
            if isinstance(page, Gap):
                logger.warning("the hub lost its place in the store's log (%s); its %d "
                               "subscribers resume from their Last-Event-ID", page.reason,
                               len(self._all))
                self._close_all()
                continue
            now = utcnow()
            for event in page:
                self._dispatch(event, now)

    def _dispatch(self, event: Event, now: datetime) -> None:
        targets: set[Subscriber] = set()
        for topic in event.job.topics:
            targets.update(self._by_topic.get(topic, ()))
        if not targets:
            return
        frame = encode(event)
        for subscriber in targets:
            self._put(subscriber, frame)
        lag = (now - datetime.fromisoformat(event.received_at)).total_seconds()
        self.metrics.delivery_lag.observe(max(lag, 0.0))

    def announce(self, kind: str, data: dict[str, Any]) -> None:
        """An operational event, to the subscribers of OPS_TOPIC: of every instance when the
        store is shared (it is published, and each hub, this one too, hears it), else of
        this process."""
        if not isinstance(self.store, Broadcast):
            self._tell(kind, data)
            return
        message = json.dumps({"type": kind, "data": data}, separators=(",", ":"), default=str)
        task = asyncio.create_task(self._publish(self.store, message), name="hub-announce")
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
        targets = self._by_topic.get(OPS_TOPIC)
        if not targets:
            return
        frame = operational(kind, data)
        for subscriber in list(targets):
            self._put(subscriber, frame)

    def _put(self, subscriber: Subscriber, frame: Frame) -> None:
        if not subscriber.mailbox.put(frame):
            self._drop(subscriber, f"{QUEUE_SIZE} frames behind")

    def _drop(self, subscriber: Subscriber, why: str) -> None:
        logger.info("dropping a subscriber that is not keeping up: %s", why)
        self.metrics.dropped_subscribers.inc()
        self.unsubscribe(subscriber)

    def _close_all(self) -> None:
        for subscriber in list(self._all):
            self.unsubscribe(subscriber)
