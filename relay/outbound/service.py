"""Outbound webhooks: every job update, pushed to the downstream consumers that subscribed to
it, at least once, in order per job, signed the Standard Webhooks way.

    store: outbox ── due(sub) ──► Worker (a task per subscription) ── POST ──► consumer
      ▲   (a pending delivery        │ at most MAX_IN_FLIGHT sends, one per job at a time
      │    per subscription,         │ outcomes recorded in batches: finish(outcomes)
      │    written with each event)  ▼
      └────────────────────────── retry at SCHEDULE with jitter, honour Retry-After, 410 disables

`Outbound` registers the `[[subscriptions]]` of the config, follows the store's log only to
wake the workers whose subscriptions want the new events (the deliveries are already in the
store, written in the event's own transaction), and runs one `Worker` per enabled
subscription whose lease (`outbound:<id>`, relay.store.leases) this instance holds, so each
delivery is sent by one instance. Each worker has its own connections and cap, so a consumer
that hangs only ever holds its own slots: SSE, ingest and the other consumers never wait.

A delivery (relay.outbound.sending) is `{"type": "job.updated", "timestamp", "data": <job>}`
with `webhook-id` the event's cursor (the same on every retry, and the SSE `id` of the same
event), and `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` under
the subscription's `whsec_` secret. The payload timestamp is when the relay received the
update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

from relay.config import OutboundConfig
from relay.errors import RelayError
from relay.outbound.policy import Policy
from relay.outbound.subscriptions import config_subscriptions
from relay.outbound.targets import Guard
from relay.outbound.worker import Worker
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store import Store
from relay.store.follow import Gap, follow
from relay.store.outbox import Subscription

logger = logging.getLogger(__name__)

REFRESH = 2.0
"""Seconds between looks at the subscriptions, and lease renewals."""
LEASE_TTL = 15.0
LEASE = "outbound:"


@dataclass(slots=True)
class Running:
    subscription: Subscription
    worker: Worker
    task: asyncio.Task[None]


class Outbound:
    """Registers the config's subscriptions and runs a worker for each enabled subscription
    this instance holds."""

    def __init__(self, config: OutboundConfig, store: Store, metrics: Metrics, *,
                 owner: str | None = None) -> None:
        self.store = store
        self.outbox = store.outbox
        self.metrics = metrics
        self.guard = Guard(config.allow_private_targets)
        self.policy = Policy(config.delivery_max_age, config.delivery_retry_scale)
        self.configured = config_subscriptions(config)  # ConfigError for a bad one
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.workers: dict[str, Running] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._register()
        cursor = await self.store.last_cursor()
        self._tasks = [asyncio.create_task(self._supervise(), name="outbound"),
                       asyncio.create_task(self._follow(cursor), name="outbound-follower")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        held = list(self.workers)
        for subscription_id in held:
            await self._stop_worker(subscription_id)
        with contextlib.suppress(RelayError):
            await self.store.leases.release([LEASE + i for i in held], self.owner)

    def changed(self) -> None:
        """Subscriptions were added or removed here: look at them now."""
        self._changed.set()

    def wake(self, subscription_id: str) -> None:
        """A delivery of this subscription is due now (a retry was asked for)."""
        running = self.workers.get(subscription_id)
        if running is not None:
            running.worker.wake.set()

    async def _register(self) -> None:
        """The config's subscriptions, saved (enabled again, with the config's secret);
        those of an earlier config that this one no longer has, deleted."""
        for subscription in self.configured:
            await self.outbox.save_subscription(subscription)
        current = {subscription.id for subscription in self.configured}
        for known in await self.outbox.subscriptions():
            if known.origin == "config" and known.id not in current:
                logger.info("subscription %s is no longer in the config: deleted", known.id)
                await self.outbox.delete_subscription(known.id)

    async def _supervise(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self._reconcile()
                await self._measure()
            except RelayError:
                logger.exception("outbound webhooks could not read the subscriptions")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self._changed.wait()

    async def _reconcile(self) -> None:
        enabled = {s.id: s for s in await self.outbox.subscriptions() if s.enabled}
        held = await self.store.leases.claim([LEASE + i for i in enabled], self.owner,
                                             LEASE_TTL)
        mine = {name.removeprefix(LEASE) for name in held}
        for subscription_id, running in list(self.workers.items()):
            if (running.task.done() or subscription_id not in mine
                    or enabled.get(subscription_id) != running.subscription):
                await self._stop_worker(subscription_id)
        for subscription_id in mine - self.workers.keys():
            self._start_worker(enabled[subscription_id])

    def _start_worker(self, subscription: Subscription) -> None:
        worker = Worker(subscription, self.outbox, self.guard, self.policy, self.metrics)
        task = asyncio.create_task(worker.run(), name=f"outbound-{subscription.id}")
        self.workers[subscription.id] = Running(subscription, worker, task)

    async def _stop_worker(self, subscription_id: str) -> None:
        await cancel_all([self.workers.pop(subscription_id).task])

    async def _measure(self) -> None:
        stats = await self.outbox.outbox_stats()
        self.metrics.outbound_pending.set(stats.pending)
        age = 0.0 if stats.oldest is None else max(0.0, time.time() - stats.oldest)
        self.metrics.outbound_oldest.set(age)

    async def _follow(self, cursor: str | None) -> None:
        """Wake the workers whose subscriptions want the new events. Only a shortcut: an idle
        worker looks at the store every LOOK_AGAIN seconds anyway, so a gap needs nothing."""
        async for page in follow(self.store, cursor):
            if isinstance(page, Gap):
                continue
            for running in self.workers.values():
                if any(running.subscription.wants(event.job.topics) for event in page):
                    running.worker.wake.set()
