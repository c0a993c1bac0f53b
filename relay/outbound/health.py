"""How a subscription's health moves, as pure functions of the health the store holds (the
store applies them atomically: relay.store.outbox `update_health`), and `Reporter`, the one
place a change of status is told: a log line, the metrics, and the operational event.

    active ── FAILING_AFTER failed attempts in a row ──► failing ── any success ──► active
      │                                                    │
      └── 410 ──► disabled ◄── 410, or failing longer than server.delivery_max_age
                     │
    POST /v1/subscriptions/{id}/enable ──► active (from failing too)

While failing, the worker sends one probe at a time, the oldest due delivery, once
`probe_at` has come. Each failed probe puts the next one further away on the retry schedule
(relay.outbound.policy), and never before the consumer's Retry-After; attempts that were
already in flight when it began failing are counted, but are not probes. A success resets the
count and, while failing, makes it active again: the worker sends at full width.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from relay.outbound.policy import GONE, Policy
from relay.runtime.metrics import Metrics
from relay.store.outbox import DeliveryStatus, Health, Outcome, Subscription, SubscriptionStatus

logger = logging.getLogger(__name__)

ACTIVE, FAILING, DISABLED = (SubscriptionStatus.ACTIVE, SubscriptionStatus.FAILING,
                             SubscriptionStatus.DISABLED)
FAILING_AFTER = 5
"""Failed attempts in a row that make a subscription failing."""
OPS_EVENTS = {FAILING: "relay.subscription.failing", DISABLED: "relay.subscription.disabled"}
"""The operational event a subscription's move into each status makes (topic `relay:ops`)."""

OpsCallback = Callable[[str, dict[str, Any]], Awaitable[None] | None]
"""Told `(event type, the subscription's JSON)` once per move into a status of OPS_EVENTS."""


def after_attempts(health: Health, outcomes: Sequence[Outcome], now: float, policy: Policy,
                   probes: Collection[str] = ()) -> Health:
    """The health after `outcomes`, in the order the attempts ended; `probes` are the ids of
    the deliveries that were sent as probes."""
    for outcome in outcomes:
        if health.status is DISABLED:
            return health
        health = _after(health, outcome, now, policy, outcome.delivery_id in probes)
    return _expired(health, now, policy.max_age)


def enabled(health: Health, now: float) -> Health:
    """An operator's `enable`: active, the count reset (the latest error is kept)."""
    since = health.since if health.status is ACTIVE else now
    return dataclasses.replace(health, status=ACTIVE, consecutive_failures=0, since=since,
                               probes=0, probe_at=0.0, disabled_reason=None)


def disabled(health: Health, reason: str, now: float) -> Health:
    if health.status is DISABLED:
        return health
    return dataclasses.replace(health, status=DISABLED, since=now, probes=0, probe_at=0.0,
                               disabled_reason=reason)


def _after(health: Health, outcome: Outcome, now: float, policy: Policy, probe: bool
           ) -> Health:
    if outcome.reason == GONE:
        return disabled(health, GONE, now)
    if outcome.status is DeliveryStatus.DELIVERED:
        since = now if health.status is FAILING else health.since
        return dataclasses.replace(health, status=ACTIVE, consecutive_failures=0, since=since,
                                   probes=0, probe_at=0.0)
    failed = dataclasses.replace(health, consecutive_failures=health.consecutive_failures + 1,
                                 last_error=outcome.attempt.error or outcome.reason)
    if health.status is FAILING:
        return _next_probe(failed, health.probes + 1, now, policy, outcome) if probe else failed
    if failed.consecutive_failures >= FAILING_AFTER:
        return _next_probe(dataclasses.replace(failed, status=FAILING, since=now), 0, now,
                           policy, outcome)
    return failed


def _next_probe(health: Health, probes: int, now: float, policy: Policy, outcome: Outcome
                ) -> Health:
    wait = max(policy.wait(probes + 1), outcome.retry_after)
    return dataclasses.replace(health, probes=probes, probe_at=now + wait)


def _expired(health: Health, now: float, max_age: float) -> Health:
    if health.status is not FAILING or now - health.since < max_age:
        return health
    return disabled(health, f"failing for more than {max_age:g} s: {health.last_error}", now)


class Reporter:
    """Tells each change of a subscription's status: an info line, the transitions counter,
    and for the moves of OPS_EVENTS the operational event, through `on_ops` (a failing
    callback is logged; deliveries go on)."""

    def __init__(self, metrics: Metrics, on_ops: OpsCallback | None = None) -> None:
        self.metrics = metrics
        self.on_ops = on_ops

    async def report(self, subscription: Subscription, before: Health, after: Health) -> None:
        if before.status is after.status:
            return
        moved = dataclasses.replace(subscription, health=after)
        self.metrics.outbound_transitions.labels(after.status.value).inc()
        _log(moved)
        event = OPS_EVENTS.get(after.status)
        if event is not None and self.on_ops is not None:
            await self._tell(event, moved)

    async def _tell(self, event: str, subscription: Subscription) -> None:
        try:
            told = self.on_ops(event, subscription.to_dict()) if self.on_ops else None
            if inspect.isawaitable(told):
                await told
        except Exception:  # their bug must not stop the deliveries
            logger.exception("the %s callback for subscription %s failed", event,
                             subscription.id)


def _log(subscription: Subscription) -> None:
    h = subscription.health
    fields = {"subscription_id": subscription.id, "status": h.status.value}
    if h.status is FAILING:
        logger.info("subscription %s is failing: %s", subscription.id, h.last_error,
                    extra={**fields, "consecutive_failures": h.consecutive_failures})
    elif h.status is DISABLED:
        logger.info("subscription %s is disabled: %s", subscription.id, h.disabled_reason,
                    extra=fields)
    else:
        logger.info("subscription %s is active again", subscription.id, extra=fields)
