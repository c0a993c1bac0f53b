"""The hub: one reader of the store's event log per process, feeding every local subscriber.

Each event is encoded as an SSE message once and the same bytes go to every subscriber whose
topics it carries. A subscriber's queue is bounded; one that falls behind is dropped (its
stream ends and the browser resumes with Last-Event-ID) rather than slowing anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from relay.errors import RelayError
from relay.metrics import Metrics
from relay.models import Event, utcnow
from relay.store import Store

logger = logging.getLogger(__name__)

PAGE = 500
QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Frame:
    """One event as it goes on the wire, with what streams need to route and dedupe it."""

    cursor: str
    job_id: str
    version: int
    terminal: bool
    data: bytes


def encode(event: Event) -> Frame:
    job = event.job
    if any(c in event.cursor for c in "\r\n\0"):
        raise ValueError(f"unsafe cursor {event.cursor!r}")
    body = json.dumps(job.to_dict(), separators=(",", ":"))
    data = f"id: {event.cursor}\nevent: job.updated\ndata: {body}\n\n".encode()
    return Frame(event.cursor, job.id, job.version, job.terminal, data)


@dataclass(eq=False)
class Subscriber:
    """A local stream's mailbox. `None` in the queue means: stop (dropped or shutting down)."""

    topics: frozenset[str]
    queue: asyncio.Queue[Frame | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def close(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.stopping = asyncio.Event()
        self._by_topic: dict[str, set[Subscriber]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cursor = await self.store.last_cursor()
        self._tasks = [asyncio.create_task(self._follow(cursor), name="hub"),
                       asyncio.create_task(self._close_on_stop(), name="hub-stop")]

    async def stop(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        self.metrics.subscribers.inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        removed = False
        for topic in subscriber.topics:
            members = self._by_topic.get(topic)
            if members is not None and subscriber in members:
                removed = True
                members.discard(subscriber)
                if not members:
                    del self._by_topic[topic]
        if removed:
            self.metrics.subscribers.dec()

    async def _follow(self, cursor: str | None) -> None:
        while True:
            try:
                cursor = await self._step(cursor)
            except RelayError:
                logger.exception("the hub could not read the store; retrying")
                await asyncio.sleep(1)

    async def _step(self, cursor: str | None) -> str | None:
        events = await self.store.read_since(cursor, limit=PAGE)
        if not events:
            await self.store.wait(cursor, timeout=30)
            return cursor
        now = utcnow()
        for event in events:
            self._dispatch(event, now)
        return events[-1].cursor

    def _dispatch(self, event: Event, now: datetime) -> None:
        targets: set[Subscriber] = set()
        for topic in event.job.topics:
            targets.update(self._by_topic.get(topic, ()))
        if not targets:
            return
        frame = encode(event)
        for subscriber in targets:
            try:
                subscriber.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self._drop(subscriber)
        lag = (now - datetime.fromisoformat(event.received_at)).total_seconds()
        self.metrics.delivery_lag.observe(max(lag, 0.0))

    def _drop(self, subscriber: Subscriber) -> None:
        logger.info("dropping a subscriber that fell %d events behind", QUEUE_SIZE)
        self.metrics.dropped_subscribers.inc()
        self.unsubscribe(subscriber)
        subscriber.close()

    def _close_all(self) -> None:
        subscribers = {s for members in self._by_topic.values() for s in members}
        for subscriber in subscribers:
            self.unsubscribe(subscriber)
            subscriber.close()
