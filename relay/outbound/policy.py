"""When an outbound delivery is tried again, and when it is given up.

Seconds before each retry: SCHEDULE, then every REPEAT_EVERY until the next try would pass
`server.delivery_max_age` (24 h); `server.delivery_retry_scale` multiplies both. Each wait is
drawn within ±JITTER of the schedule, so consumers that failed together do not all come back
at the same moment; a consumer's `Retry-After` is a floor. A 410 gives up at once. The same
schedule spaces a failing subscription's probes (relay.outbound.health).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from relay.outbound.sending import Sent
from relay.store.outbox import Delivery, DeliveryStatus, Outcome

SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
REPEAT_EVERY = 3 * 3600.0
JITTER = 0.2
GONE = "the consumer answered 410 Gone: the subscription is disabled"


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
        floor = sent.retry_after or 0.0
        wait = max(self.wait(tries), floor)
        if now + wait > delivery.since + self.max_age:
            return Outcome(delivery.id, sent.attempt, DeliveryStatus.FAILED,
                           reason=f"gave up after {tries} attempts in {self.max_age:g} s",
                           retry_after=floor)
        return Outcome(delivery.id, sent.attempt, DeliveryStatus.PENDING, now + wait,
                       retry_after=floor)
