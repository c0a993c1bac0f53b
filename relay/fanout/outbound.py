"""Outbound webhooks (CONTRACT section 6): every job update, pushed to the downstream
consumers that subscribed to it, at least once, in order per job, signed the Standard Webhooks
way.

    store: outbox ── due(sub) ──► Worker (a task per subscription) ── POST ──► consumer
      ▲   (a pending delivery        │ at most MAX_IN_FLIGHT sends, one per job at a time
      │    per subscription,         │ outcomes recorded in batches: finish(outcomes)
      │    written with each event)  ▼
      └────────────────────────── retry at SCHEDULE with jitter, honour Retry-After, 410 disables

`Outbound` registers the `[[subscriptions]]` of the config, follows the store's log only to
wake the workers whose subscriptions want the new events (the deliveries are already in the
store, written in the event's own transaction), and runs one `Worker` per enabled
subscription. With a store shared by several instances (`Leases`) each subscription is
leased to one instance at a time, so each delivery is sent by one instance. Each worker has
its own connections (`Lanes`) and cap, so a consumer that hangs only ever holds its own
slots: SSE, ingest and the other consumers never wait for it.

A delivery (relay.fanout.sending) is `{"type": "job.updated", "timestamp", "data": <job>}`
with `webhook-id` the event's cursor (the same on every retry, and the SSE `id` of the same
event), and `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` under
the subscription's `whsec_` secret. The payload timestamp is when the relay received the
update.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.errors import ConfigError, CursorExpired, InvalidCursor, RelayError, TargetError
from relay.fanout.sending import Lane, Lanes, Sender, Sent, signing_key
from relay.fanout.targets import Guard, url_problem
from relay.metrics import Metrics
from relay.models import isoformat, utcnow
from relay.settings import Settings, SubscriptionSettings
from relay.store import Leases, Store
from relay.store.outbox import Attempt, Delivery, DeliveryStatus, Outbox, Outcome, Subscription
from relay.tasks import cancel_all

logger = logging.getLogger(__name__)

SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
"""Seconds before each retry of a delivery; after the last, every REPEAT_EVERY, until the next
try would pass `server.delivery_max_age` (24 h). `server.delivery_retry_scale` multiplies both."""
REPEAT_EVERY = 3 * 3600.0
JITTER = 0.2
"""Each wait is drawn within ±20 % of the schedule, so consumers that failed together do not
all come back at the same moment."""
MAX_IN_FLIGHT = 16
"""Requests in flight per subscription (to different jobs)."""
LOOK_AGAIN = 5.0
"""Seconds an idle worker waits before it looks at the store anyway (a retry asked of another
instance, a lease taken over)."""
REFRESH = 2.0
"""Seconds between looks at the subscriptions, and lease renewals."""
LEASE_TTL = 15.0
LEASE = "outbound:"
PAGE = 500
MAX_TOPICS = 100
MAX_TOPIC = 256
GONE = "the consumer answered 410 Gone: the subscription is disabled"


def topics_problem(topics: Sequence[str]) -> str | None:
    if not topics or len(topics) > MAX_TOPICS:
        return f"expected 1 to {MAX_TOPICS} topics (\"*\" for every job)"
    if not all(0 < len(topic) <= MAX_TOPIC for topic in topics):
        return f"a topic is 1 to {MAX_TOPIC} characters"
    return None


# -- subscriptions from the config -------------------------------------------------------------

def config_subscriptions(settings: Settings) -> list[Subscription]:
    """The `[[subscriptions]]` entries, each with an id derived from its url and topics (so
    registering them again at every start finds the same ones); ConfigError names the key."""
    guard = Guard(settings.server.allow_private_targets)
    seen: dict[str, int] = {}
    found = []
    for index, entry in enumerate(settings.subscriptions):
        subscription = _config_subscription(f"subscriptions[{index}]", entry, guard)
        if subscription.id in seen:
            raise ConfigError(f"subscriptions[{index}]: the same url and topics as "
                              f"subscriptions[{seen[subscription.id]}]")
        seen[subscription.id] = index
        found.append(subscription)
    return found


def _config_subscription(key: str, entry: SubscriptionSettings, guard: Guard) -> Subscription:
    problem = url_problem(entry.url)
    if problem is not None:
        raise ConfigError(f"{key}.url: {problem}")
    try:
        guard.check_now(entry.url)
    except TargetError as exc:
        raise ConfigError(f"{key}.url: {exc}") from None
    problem = topics_problem(entry.topics)
    if problem is not None:
        raise ConfigError(f"{key}.topics: {problem}")
    if entry.secret is None or signing_key(entry.secret) is None:
        raise ConfigError(f"{key}.secret: required, whsec_ and the base64 of 24 to 64 bytes")
    return Subscription(config_id(entry.url, entry.topics), entry.url, tuple(entry.topics),
                        entry.secret, origin="config", created_at=isoformat(utcnow()))


def config_id(url: str, topics: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps([url, sorted(topics)]).encode()).hexdigest()
    return f"sub_cfg_{digest[:24]}"


@dataclass(frozen=True, slots=True)
class Policy:
    """When to try again, and when to give up."""

    max_age: float = 86400.0
    scale: float = 1.0
    rng: random.Random = field(default_factory=random.Random)

    def wait(self, tries: int) -> float:
        """Seconds before the retry that follows `tries` failed attempts."""
        base = SCHEDULE[tries - 1] if tries <= len(SCHEDULE) else REPEAT_EVERY
        return base * self.scale * self.rng.uniform(1 - JITTER, 1 + JITTER)

    def outcome(self, delivery: Delivery, sent: Sent, now: float) -> Outcome:
        if sent.delivered:
            return Outcome(delivery.id, sent.attempt, DeliveryStatus.DELIVERED)
        if sent.attempt.status == 410:
            return Outcome(delivery.id, sent.attempt, DeliveryStatus.FAILED, reason=GONE)
        tries = delivery.tries + 1
        wait = max(self.wait(tries), sent.retry_after or 0.0)
        if now + wait > delivery.since + self.max_age:
            return Outcome(delivery.id, sent.attempt, DeliveryStatus.FAILED,
                           reason=f"gave up after {tries} attempts in {self.max_age:g} s")
        return Outcome(delivery.id, sent.attempt, DeliveryStatus.PENDING, now + wait)


# -- a worker per subscription -----------------------------------------------------------------

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


@dataclass(slots=True)
class Running:
    subscription: Subscription
    worker: Worker
    task: asyncio.Task[None]


# -- the service -------------------------------------------------------------------------------

class Outbound:
    """Registers the config's subscriptions and runs a worker for each enabled subscription
    this instance holds. A store without the `Outbox` capability runs none (and refuses
    `[[subscriptions]]` at startup)."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics, *,
                 owner: str | None = None) -> None:
        self.store = store
        self.outbox = store if isinstance(store, Outbox) else None
        self.metrics = metrics
        self.guard = Guard(settings.server.allow_private_targets)
        self.policy = Policy(settings.server.delivery_max_age,
                             settings.server.delivery_retry_scale)
        self.configured = config_subscriptions(settings)
        if self.configured and self.outbox is None:
            raise ConfigError("subscriptions: this store cannot keep outbound deliveries")
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.workers: dict[str, Running] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.outbox is None:
            return
        await self._register(self.outbox)
        self._tasks = [asyncio.create_task(self._supervise(self.outbox), name="outbound"),
                       asyncio.create_task(self._follow(), name="outbound-follower")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        held = list(self.workers)
        for subscription_id in held:
            await self._stop_worker(subscription_id)
        if held and isinstance(self.store, Leases):
            with contextlib.suppress(RelayError):
                await self.store.release([LEASE + i for i in held], self.owner)

    def changed(self) -> None:
        """Subscriptions were added or removed here: look at them now."""
        self._changed.set()

    def wake(self, subscription_id: str) -> None:
        """A delivery of this subscription is due now (a retry was asked for)."""
        running = self.workers.get(subscription_id)
        if running is not None:
            running.worker.wake.set()

    async def _register(self, outbox: Outbox) -> None:
        """The config's subscriptions, saved (enabled again, with the config's secret);
        those of an earlier config that this one no longer has, deleted."""
        for subscription in self.configured:
            await outbox.save_subscription(subscription)
        current = {subscription.id for subscription in self.configured}
        for known in await outbox.subscriptions():
            if known.origin == "config" and known.id not in current:
                logger.info("subscription %s is no longer in the config: deleted", known.id)
                await outbox.delete_subscription(known.id)

    async def _supervise(self, outbox: Outbox) -> None:
        while True:
            self._changed.clear()
            try:
                await self._reconcile(outbox)
                await self._measure(outbox)
            except RelayError:
                logger.exception("outbound webhooks could not read the subscriptions")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self._changed.wait()

    async def _reconcile(self, outbox: Outbox) -> None:
        enabled = {s.id: s for s in await outbox.subscriptions() if s.enabled}
        mine = await self._claim(list(enabled))
        for subscription_id, running in list(self.workers.items()):
            if (running.task.done() or subscription_id not in mine
                    or enabled.get(subscription_id) != running.subscription):
                await self._stop_worker(subscription_id)
        for subscription_id in mine - self.workers.keys():
            self._start_worker(outbox, enabled[subscription_id])

    async def _claim(self, subscription_ids: list[str]) -> set[str]:
        """The subscriptions this instance sends for: all of them, unless the store is shared
        (`Leases`), where each is held by one instance at a time."""
        if not isinstance(self.store, Leases):
            return set(subscription_ids)
        held = await self.store.claim([LEASE + i for i in subscription_ids], self.owner,
                                      LEASE_TTL)
        return {name.removeprefix(LEASE) for name in held}

    def _start_worker(self, outbox: Outbox, subscription: Subscription) -> None:
        worker = Worker(subscription, outbox, self.guard, self.policy, self.metrics)
        task = asyncio.create_task(worker.run(), name=f"outbound-{subscription.id}")
        self.workers[subscription.id] = Running(subscription, worker, task)

    async def _stop_worker(self, subscription_id: str) -> None:
        await cancel_all([self.workers.pop(subscription_id).task])

    async def _measure(self, outbox: Outbox) -> None:
        stats = await outbox.outbox_stats()
        self.metrics.outbound_pending.set(stats.pending)
        age = 0.0 if stats.oldest is None else max(0.0, time.time() - stats.oldest)
        self.metrics.outbound_oldest.set(age)

    async def _follow(self) -> None:
        """Wake the workers whose subscriptions want the new events. Only a shortcut: an idle
        worker looks at the store every LOOK_AGAIN seconds anyway."""
        cursor, lost = None, True
        while True:
            try:
                if lost:
                    cursor, lost = await self.store.last_cursor(), False
                cursor = await self._read(cursor)
            except (InvalidCursor, CursorExpired):
                lost = True
            except RelayError:
                logger.exception("outbound webhooks could not follow the store's log")
                await asyncio.sleep(1)

    async def _read(self, cursor: str | None) -> str | None:
        events = await self.store.read_since(cursor, limit=PAGE)
        if not events:
            await self.store.wait(cursor, timeout=30)
            return cursor
        for running in self.workers.values():
            if any(running.subscription.wants(event.job.topics) for event in events):
                running.worker.wake.set()
        return events[-1].cursor
