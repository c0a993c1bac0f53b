"""The memory backend's outbox (relay.store.outbox): plain dicts, for tests and `memory://`.

`MemoryStore.apply` calls `enqueue` with each new event and the job before it, in the same
step that appends it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Sequence
from typing import Any

from relay.models import Event, Job
from relay.store.outbox import (
    MAX_ATTEMPTS_KEPT,
    REPLAY_MAX,
    Delivery,
    DeliveryStatus,
    Due,
    Health,
    HealthChange,
    OutboxStats,
    Outcome,
    Replayed,
    Retried,
    Subscription,
    SubscriptionStatus,
    event_kinds,
    replay_choice,
)

PENDING = DeliveryStatus.PENDING
DISABLED = SubscriptionStatus.DISABLED


def number(delivery_id: str) -> int:
    """The creation order of a delivery, from its id `dlv_<n>`."""
    return int(delivery_id.removeprefix("dlv_"))


class MemoryOutbox:
    """Per subscription: its deliveries in creation order, and per job the queue of pending
    ones (ids, oldest first; the first is the head)."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, Subscription] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._listed: dict[str, list[str]] = {}
        self._queues: dict[str, dict[str, list[str]]] = {}
        self._delivered: dict[tuple[str, str], int] = {}  # newest delivered, by (sub, job)
        self._count = 0

    def enqueue(self, event: Event, previous: Job | None) -> None:
        if not self._subscriptions:
            return
        now, kinds = time.time(), event_kinds(previous, event.job)
        for subscription in self._subscriptions.values():
            if subscription.enabled and subscription.wants(event.job.topics, kinds):
                self._add(subscription.id, event, now, now)

    def _add(self, subscription_id: str, event: Event, now: float, due: float) -> None:
        self._count += 1
        delivery = Delivery(f"dlv_{self._count}", subscription_id, event, PENDING,
                            created_at=now, next_at=due, since=now)
        self._deliveries[delivery.id] = delivery
        self._listed[subscription_id].append(delivery.id)
        self._queue(delivery).append(delivery.id)

    def _queue(self, delivery: Delivery) -> list[str]:
        return self._queues[delivery.subscription_id].setdefault(delivery.job_id, [])

    def forget_jobs(self, job_ids: Collection[str]) -> None:
        """Delete every delivery of these jobs (retention swept them away)."""
        gone = {i for i, d in self._deliveries.items() if d.job_id in job_ids}
        for delivery_id in gone:
            del self._deliveries[delivery_id]
        for subscription_id, listed in self._listed.items():
            self._listed[subscription_id] = [i for i in listed if i not in gone]
            queues = self._queues[subscription_id]
            for job_id in job_ids:
                queues.pop(job_id, None)
                self._delivered.pop((subscription_id, job_id), None)

    # -- subscriptions --------------------------------------------------------------------

    async def save_subscription(self, subscription: Subscription) -> None:
        known = self._subscriptions.get(subscription.id)
        if known is not None:
            subscription = dataclasses.replace(subscription, created_at=known.created_at,
                                               health=known.health)
        self._subscriptions[subscription.id] = subscription
        self._listed.setdefault(subscription.id, [])
        self._queues.setdefault(subscription.id, {})

    async def subscriptions(self) -> list[Subscription]:
        return sorted(self._subscriptions.values(), key=lambda s: (s.created_at, s.id))

    async def subscription(self, subscription_id: str) -> Subscription | None:
        return self._subscriptions.get(subscription_id)

    async def delete_subscription(self, subscription_id: str) -> bool:
        if self._subscriptions.pop(subscription_id, None) is None:
            return False
        for delivery_id in self._listed.pop(subscription_id):
            del self._deliveries[delivery_id]
        del self._queues[subscription_id]
        for key in [key for key in self._delivered if key[0] == subscription_id]:
            del self._delivered[key]
        return True

    async def update_health(self, subscription_id: str, change: HealthChange
                            ) -> tuple[Health, Health] | None:
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            return None
        before = subscription.health
        after = change(before)
        self._subscriptions[subscription_id] = dataclasses.replace(subscription, health=after)
        if after.status is DISABLED and before.status is not DISABLED:
            self._fail_pending(subscription_id, after.disabled_reason or "disabled")
        return before, after

    def _fail_pending(self, subscription_id: str, reason: str) -> None:
        for queue in self._queues[subscription_id].values():
            for delivery_id in queue:
                self._set(delivery_id, status=DeliveryStatus.FAILED, reason=reason)
        self._queues[subscription_id] = {}

    # -- deliveries -----------------------------------------------------------------------

    async def due(self, subscription_id: str, now: float, limit: int,
                  exclude: Collection[str] = ()) -> Due:
        heads = [self._deliveries[queue[0]]
                 for queue in self._queues.get(subscription_id, {}).values() if queue]
        ready = sorted((d for d in heads if d.next_at <= now and d.id not in exclude),
                       key=lambda d: (d.next_at, number(d.id)))
        later = [d.next_at for d in heads if d.next_at > now]
        return Due(ready[:limit], min(later, default=None))

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            delivery = self._deliveries.get(outcome.delivery_id)
            if delivery is not None and delivery.status is PENDING:
                self._finish(delivery, outcome)

    def _finish(self, delivery: Delivery, outcome: Outcome) -> None:
        attempts = (*delivery.attempts, outcome.attempt)[-MAX_ATTEMPTS_KEPT:]
        queue = self._queue(delivery)
        if outcome.status is PENDING:
            newer = [i for i in queue if number(i) > number(delivery.id)]
            head = newer[-1] if newer else delivery.id
            for delivery_id in [delivery.id, *newer[:-1]] if newer else []:
                queue.remove(delivery_id)
                self._set(delivery_id, status=DeliveryStatus.SUPERSEDED, superseded_by=head)
            self._set(delivery.id, attempts=attempts)
            self._set(head, tries=delivery.tries + 1, since=delivery.since,
                      next_at=outcome.next_at)
            return
        queue.remove(delivery.id)
        self._set(delivery.id, status=outcome.status, attempts=attempts,
                  tries=delivery.tries + 1, reason=outcome.reason)
        if outcome.status is DeliveryStatus.DELIVERED:
            key = (delivery.subscription_id, delivery.job_id)
            self._delivered[key] = max(self._delivered.get(key, 0), number(delivery.id))

    def _set(self, delivery_id: str, **changes: Any) -> None:
        self._deliveries[delivery_id] = dataclasses.replace(self._deliveries[delivery_id],
                                                            **changes)

    async def deliveries(self, subscription_id: str, limit: int = 100,
                         status: DeliveryStatus | None = None) -> list[Delivery]:
        found = []
        for delivery_id in reversed(self._listed.get(subscription_id, [])):
            delivery = self._deliveries[delivery_id]
            if status is None or delivery.status is status:
                found.append(delivery)
                if len(found) == limit:
                    break
        return found

    async def delivery(self, delivery_id: str) -> Delivery | None:
        return self._deliveries.get(delivery_id)

    async def retry_delivery(self, delivery_id: str, now: float) -> Retried:
        delivery = self._deliveries.get(delivery_id)
        if delivery is None:
            return Retried.MISSING
        if delivery.status is not DeliveryStatus.FAILED:
            return Retried.NOT_FAILED
        queue = self._queue(delivery)
        n = number(delivery_id)
        delivered = self._delivered.get((delivery.subscription_id, delivery.job_id), 0)
        if delivered > n or any(number(i) > n for i in queue):
            return Retried.NEWER
        self._set(delivery_id, status=PENDING, next_at=now, tries=0, since=now, reason=None)
        queue.append(delivery_id)
        queue.sort(key=number)
        return Retried.RETRIED

    async def replay(self, subscription_id: str, since: float, now: float, *,
                     only_failed: bool = False, limit: int = REPLAY_MAX) -> Replayed:
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None or not subscription.enabled:
            return Replayed(0)
        listed = (self._deliveries[i] for i in reversed(self._listed[subscription_id]))
        chosen, truncated = replay_choice(
            ((d.id, d.job_id, d.status, d.created_at) for d in listed), since, only_failed,
            limit)
        for order, delivery_id in enumerate(chosen):
            # A microsecond apart, so the due order is the event order in every backend.
            self._add(subscription_id, self._deliveries[delivery_id].event, now,
                      now + order * 1e-6)
        return Replayed(len(chosen), truncated)

    async def outbox_stats(self) -> OutboxStats:
        pending = [self._deliveries[i] for queues in self._queues.values()
                   for queue in queues.values() for i in queue]
        return OutboxStats(len(pending), min((d.created_at for d in pending), default=None))
