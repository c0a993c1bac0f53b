"""A worker per subscription: sends its due deliveries, records what came of them, and moves
the subscription's health by them (relay.outbound.health)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from relay.errors import RelayError
from relay.models import isoformat, utcnow
from relay.outbound.health import DISABLED, FAILING, Reporter, after_attempts
from relay.outbound.policy import GONE, Policy
from relay.outbound.sending import Lane, Lanes, Sender, Sent
from relay.outbound.targets import Guard
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store.outbox import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Health,
    Outbox,
    Outcome,
    Subscription,
)

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16
"""Requests in flight per subscription (to different jobs)."""
LOOK_AGAIN = 5.0
"""Seconds an idle worker waits before it looks at the store anyway (a retry asked of another
instance, a lease taken over)."""


class Worker:
    """Sends one subscription's due deliveries: at most MAX_IN_FLIGHT at once while it is
    active, one probe at a time while it is failing. Only queue heads are due, so a job never
    has two in flight. A delivery stays in `_sending` until its outcome is recorded, so it is
    not taken again in between. The worker stops once the subscription is disabled."""

    def __init__(self, subscription: Subscription, outbox: Outbox, guard: Guard,
                 policy: Policy, metrics: Metrics, reporter: Reporter) -> None:
        self.subscription = subscription
        self.outbox = outbox
        self.guard = guard
        self.policy = policy
        self.metrics = metrics
        self.reporter = reporter
        self.health = subscription.health  # as the store last told this worker
        self.wake = asyncio.Event()
        self.gone = False
        self._lanes = Lanes(MAX_IN_FLIGHT)
        self._sending: dict[str, asyncio.Task[None]] = {}  # until its outcome is recorded
        self._probes: set[str] = set()  # the deliveries in flight that are probes
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
        if self.health.status is FAILING:
            return await self._probe(sender)
        free = self._lanes.available
        if free <= 0 or self.gone:
            return None
        due = await self.outbox.due(self.subscription.id, time.time(), free,
                                    exclude=list(self._sending))
        for delivery in due.deliveries:
            self._start(sender, delivery)
        return due.next_at

    async def _probe(self, sender: Sender) -> float | None:
        """While failing: the oldest due delivery, once the probe's time has come, and only
        when nothing is in flight. The health is read again first: an operator may have
        enabled the subscription (on any instance) meanwhile."""
        if self._sending or self.gone:
            return None
        await self._refresh()
        if self.health.status is not FAILING:
            return None if self.gone else await self._fill(sender)
        await self._judge([])  # failing for too long, even with nothing left to send
        if self.gone:
            return None
        now = time.time()
        if now < self.health.probe_at:
            return self.health.probe_at
        due = await self.outbox.due(self.subscription.id, now, 1)
        for delivery in due.deliveries:
            self._probes.add(delivery.id)
            self.metrics.outbound_probes.inc()
            self._start(sender, delivery)
        return due.next_at

    async def _refresh(self) -> None:
        found = await self.outbox.subscription(self.subscription.id)
        if found is None or not found.enabled:
            self.gone = True
        else:
            self.health = found.health

    def _start(self, sender: Sender, delivery: Delivery) -> None:
        self._sending[delivery.id] = asyncio.create_task(
            self._send(sender, delivery, self._lanes.take()))

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
        await self._judge(batch)

    async def _judge(self, batch: list[Outcome]) -> None:
        """Move the subscription's health by `batch` (and by the time: an empty batch), in
        the store. A batch that changes nothing (every attempt delivered to a healthy
        consumer: the usual case) costs no write. A crash between `finish` and here forgets
        only this batch's count."""
        probes = self._probes & {outcome.delivery_id for outcome in batch}
        self._probes -= probes
        now = time.time()

        def change(health: Health) -> Health:
            return after_attempts(health, batch, now, self.policy, probes)

        if change(self.health) == self.health:
            return
        changed = await self.outbox.update_health(self.subscription.id, change)
        if changed is None:  # deleted meanwhile
            self.gone = True
            return
        before, self.health = changed
        await self.reporter.report(self.subscription, before, self.health)
        self.gone = self.health.status is DISABLED

    async def _stop_sending(self) -> None:
        await cancel_all(self._sending.values())
        if self._done:  # what finished is recorded, so it is not sent again after a restart
            with contextlib.suppress(RelayError):
                await self.outbox.finish(self._done)
