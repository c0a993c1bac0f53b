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

A subscription's health (relay.outbound.health) is kept in the store: 5 failed attempts in a
row make it `failing` (one probe at a time until one succeeds), a 410 or failing past
`delivery_max_age` makes it `disabled`; `enable` makes it active again and `replay` sends
again what it was sent. Each change of status is logged, counted, and told to `on_ops` once,
by the instance whose write made it.

Config subscriptions are never deleted by an instance. Several instances on one Redis may
run different configs during a rolling deploy: an instance that deleted every config
subscription its own config lacks would delete the ones the others (newer or older) still
declare, with their pending deliveries, and they would fight over them at each restart. A
liveness record of who declares what could tell "no instance declares it" apart only by
timing, and a slow or partitioned instance would then lose its subscriptions and their
deliveries. So an instance only saves the ones its config declares (by `name`, or by url,
topics and events), logs the config subscriptions it does not declare, and the operator
deletes those that are gone with `DELETE /v1/subscriptions/{id}` (refused only on an
instance whose config declares it).

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
from typing import Any

from relay.config import OutboundConfig
from relay.errors import RelayError
from relay.outbound import health
from relay.outbound.announce import Announcer
from relay.outbound.health import OpsCallback, Reporter
from relay.outbound.policy import Policy
from relay.outbound.subscriptions import config_subscriptions
from relay.outbound.targets import Guard
from relay.outbound.worker import Worker
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store import Store
from relay.store.follow import Gap, follow
from relay.store.outbox import Replayed, Subscription, SubscriptionStatus

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
                 owner: str | None = None, on_ops: OpsCallback | None = None) -> None:
        """`on_ops(type, subscription JSON)` is told each move into `failing` or `disabled`
        (relay.outbound.health.OPS_EVENTS), once."""
        self.store = store
        self.outbox = store.outbox
        self.metrics = metrics
        self.guard = Guard(config.allow_private_targets)
        self.policy = Policy(config.delivery_max_age, config.delivery_retry_scale)
        self.reporter = Reporter(metrics, on_ops)
        self.announcer = Announcer(self.outbox, self.guard, self.policy, metrics)
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
        await self.announcer.stop()
        held = list(self.workers)
        for subscription_id in held:
            await self._stop_worker(subscription_id)
        with contextlib.suppress(RelayError):
            await self.store.leases.release([LEASE + i for i in held], self.owner)

    def announce(self, kind: str, data: dict[str, Any]) -> None:
        """Send an operational event to the subscriptions that name `relay:ops`
        (relay.outbound.announce)."""
        self.announcer.announce(kind, data)

    def changed(self) -> None:
        """Subscriptions were added or removed here: look at them now."""
        self._changed.set()

    def wake(self, subscription_id: str) -> None:
        """A delivery of this subscription is due now (a retry was asked for)."""
        running = self.workers.get(subscription_id)
        if running is not None:
            running.worker.wake.set()

    def declares(self, subscription_id: str) -> bool:
        """Whether this instance's config declares the subscription."""
        return any(s.id == subscription_id for s in self.configured)

    async def enable(self, subscription_id: str) -> Subscription | None:
        """Active again, from failing or disabled (its failed deliveries stay failed; new
        events reach it); None when there is no such subscription."""
        now = time.time()
        changed = await self.outbox.update_health(subscription_id,
                                                  lambda h: health.enabled(h, now))
        found = await self.outbox.subscription(subscription_id)
        if changed is None or found is None:
            return None
        await self.reporter.report(found, *changed)
        self.changed()  # a disabled one gets a worker again
        self.wake(subscription_id)  # a failing one sends at full width now
        return found

    async def replay(self, subscription_id: str, since: float, *,
                     only_failed: bool = False) -> Replayed:
        """Send again what the subscription was sent since `since` (Unix seconds): per job
        its newest delivery (relay.store.outbox.replay_choice), started in event order."""
        replayed = await self.outbox.replay(subscription_id, since, time.time(),
                                            only_failed=only_failed)
        self.metrics.outbound_replayed.inc(replayed.count)
        self.wake(subscription_id)
        return replayed

    async def _register(self) -> None:
        """The config's subscriptions, saved with the config's definition (their health is
        the store's: a disabled one stays disabled across restarts). None is deleted: see
        the module's docstring."""
        for subscription in self.configured:
            await self.outbox.save_subscription(subscription)
        current = {subscription.id for subscription in self.configured}
        for known in await self.outbox.subscriptions():
            if known.origin == "config" and known.id not in current:
                logger.info("subscription %s (%s) came from a config this instance does not "
                            "have; it is kept: delete it through the API once no instance "
                            "declares it", known.id, known.name or known.url)

    async def _supervise(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self._measure(await self._reconcile())
            except RelayError:
                logger.exception("outbound webhooks could not read the subscriptions")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self._changed.wait()

    async def _reconcile(self) -> list[Subscription]:
        """Every subscription; a worker runs for each enabled one this instance holds, and
        is started again when what it sends changes (not when its health does: that is the
        worker's own)."""
        every = await self.outbox.subscriptions()
        enabled = {s.id: s for s in every if s.enabled}
        held = await self.store.leases.claim([LEASE + i for i in enabled], self.owner,
                                             LEASE_TTL)
        mine = {name.removeprefix(LEASE) for name in held}
        for subscription_id, running in list(self.workers.items()):
            now = enabled.get(subscription_id)
            if (running.task.done() or subscription_id not in mine or now is None
                    or now.definition != running.subscription.definition):
                await self._stop_worker(subscription_id)
        for subscription_id in mine - self.workers.keys():
            self._start_worker(enabled[subscription_id])
        return every

    def _start_worker(self, subscription: Subscription) -> None:
        worker = Worker(subscription, self.outbox, self.guard, self.policy, self.metrics,
                        self.reporter)
        task = asyncio.create_task(worker.run(), name=f"outbound-{subscription.id}")
        self.workers[subscription.id] = Running(subscription, worker, task)

    async def _stop_worker(self, subscription_id: str) -> None:
        await cancel_all([self.workers.pop(subscription_id).task])

    async def _measure(self, subscriptions: list[Subscription]) -> None:
        for status in SubscriptionStatus:
            count = sum(s.status is status for s in subscriptions)
            self.metrics.outbound_subscriptions.labels(status.value).set(count)
        stats = await self.outbox.outbox_stats()
        self.metrics.outbound_pending.set(stats.pending)
        age = 0.0 if stats.oldest is None else max(0.0, time.time() - stats.oldest)
        self.metrics.outbound_oldest.set(age)

    async def _follow(self, cursor: str | None) -> None:
        """Wake the workers whose subscriptions want the new events. Only a shortcut: an idle
        worker looks at the store every LOOK_AGAIN seconds anyway, so a gap needs nothing.
        A failing one is left to sleep: it sends nothing before its next probe is due."""
        async for page in follow(self.store, cursor):
            if isinstance(page, Gap):
                continue
            for running in self.workers.values():
                if running.worker.health.status is SubscriptionStatus.FAILING:
                    continue
                if any(running.subscription.takes_topics(event.head.topics) for event in page):
                    running.worker.wake.set()
