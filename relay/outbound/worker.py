"""A worker per subscription: sends its due deliveries and records what came of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from relay.errors import RelayError
from relay.models import isoformat, utcnow
from relay.outbound.policy import GONE, Policy
from relay.outbound.sending import Lane, Lanes, Sender, Sent
from relay.outbound.targets import Guard
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store.outbox import Attempt, Delivery, DeliveryStatus, Outbox, Outcome, Subscription

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16
"""Requests in flight per subscription (to different jobs)."""
LOOK_AGAIN = 5.0
"""Seconds an idle worker waits before it looks at the store anyway (a retry asked of another
instance, a lease taken over)."""


class Worker:
    """Sends one subscription's due deliveries, at most MAX_IN_FLIGHT at once. Only queue
    heads are due, so a job never has two in flight. A delivery stays in `_sending` until
    its outcome is recorded, so it is not taken again in between."""

    def __init__(self, subscription: Subscription, outbox: Outbox, guard: Guard,
                 policy: Policy, metrics: Metrics) -> None:
        self.subscription = subscription
        self.outbox = outbox
        self.guard = guard
        self.policy = policy
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.gone = False
        self._lanes = Lanes(MAX_IN_FLIGHT)
        self._sending: dict[str, asyncio.Task[None]] = {}  # until its outcome is recorded
        self._done: list[Outcome] = []

    async def run(self) -> None:
        sender = Sender(self.subscription, self.guard)
        try:
            while not self.gone:
                await self._step(sender)
        finally:
            await self._stop_sending()
            await self._lanes.aclose()

    async def _step(self, sender: Sender) -> None:
        self.wake.clear()
        try:
            await self._record()
            await self._idle(await self._fill(sender))
        except RelayError:  # the store is unavailable: what is in flight goes on meanwhile
            logger.exception("subscription %s: could not read or write the outbox",
                             self.subscription.id)
            await asyncio.sleep(1)

    async def _fill(self, sender: Sender) -> float | None:
        """Start sending due heads in the free slots; when the next one is due."""
        free = self._lanes.available
        if free <= 0 or self.gone:
            return None
        due = await self.outbox.due(self.subscription.id, time.time(), free,
                                    exclude=list(self._sending))
        for delivery in due.deliveries:
            self._sending[delivery.id] = asyncio.create_task(
                self._send(sender, delivery, self._lanes.take()))
        return due.next_at

    async def _idle(self, next_at: float | None) -> None:
        if self._done:
            return
        wait = LOOK_AGAIN if next_at is None else min(LOOK_AGAIN, next_at - time.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, 0.0)):
                await self.wake.wait()

    async def _send(self, sender: Sender, delivery: Delivery, lane: Lane) -> None:
        try:
            sent = await sender.send(delivery, lane)
        except Exception:  # a bug of ours: the delivery is retried, the worker goes on
            logger.exception("sending delivery %s failed", delivery.id)
            sent = Sent(Attempt(isoformat(utcnow()), 0.0, None, "the relay failed to send it"),
                        "error")
        finally:
            self._lanes.give(lane)
        self.metrics.outbound_attempts.labels(sent.result).inc()
        self._done.append(self.policy.outcome(delivery, sent, time.time()))
        self.wake.set()

    async def _record(self) -> None:
        if not self._done:
            return
        batch, self._done = self._done, []
        try:
            await self.outbox.finish(batch)
        except RelayError:
            logger.exception("could not record outbound deliveries; retrying")
            self._done = batch + self._done
            await asyncio.sleep(1)
            return
        for outcome in batch:
            self._sending.pop(outcome.delivery_id, None)
            if outcome.status is not DeliveryStatus.PENDING:
                label = "gone" if outcome.reason == GONE else outcome.status.value
                self.metrics.outbound_deliveries.labels(label).inc()
        if any(outcome.reason == GONE for outcome in batch):
            await self._disable()

    async def _disable(self) -> None:
        logger.warning("subscription %s: %s (%s)", self.subscription.id, GONE,
                       self.subscription.url)
        await self.outbox.disable_subscription(self.subscription.id, GONE)
        self.gone = True

    async def _stop_sending(self) -> None:
        await cancel_all(self._sending.values())
        if self._done:  # what finished is recorded, so it is not sent again after a restart
            with contextlib.suppress(RelayError):
                await self.outbox.finish(self._done)
