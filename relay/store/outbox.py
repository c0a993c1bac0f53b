"""The outbox: outbound webhook subscriptions and their deliveries.

Every store owns one (`store.outbox`): it keeps the subscriptions and, *in the same
transaction that appends an event*, adds one pending `Delivery` for every enabled subscription
whose topics the event's job carries (`*`: all). So
a crash between "stored" and "sent" loses nothing: the delivery is in the store as soon as the
event is, and resumes after a restart.

Order. The pending deliveries of one (subscription, job) form a queue: only its head is due,
so a consumer gets a job's updates in event order. A head that fails and is retried takes the
queue behind it along (`finish` with status pending): it is marked superseded by the newest
delivery of the queue, which becomes the head, carrying the full job as of its event and the
retry position (`tries`, `since`) of the one it replaced. A consumer that is down for hours
therefore gets one delivery per job when it comes back, never an older state after a newer
one. Times are Unix seconds (they outlive the process).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from relay.models import Event

KEEP_FINISHED = 7 * 86400
"""Seconds a finished delivery stays listed (backends prune older ones)."""
MAX_ATTEMPTS_KEPT = 50
"""Attempts kept per delivery (the oldest are dropped first)."""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class Retried(StrEnum):
    """What `retry_delivery` did."""

    RETRIED = "retried"
    MISSING = "missing"
    NOT_FAILED = "not_failed"
    NEWER = "newer"  # a newer update of the job is delivered or on its way: it would go back


def wants(topics: Collection[str], job_topics: Collection[str]) -> bool:
    """Whether a subscription to `topics` gets a job with `job_topics`."""
    return "*" in topics or not set(topics).isdisjoint(job_topics)


@dataclass(frozen=True, slots=True)
class Subscription:
    """A downstream consumer: where to post, which jobs, the `whsec_` secret to sign with.
    `origin` is `config` (registered at startup from `[[subscriptions]]`) or `api`."""

    id: str
    url: str
    topics: tuple[str, ...]
    secret: str
    origin: str = "api"
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: str = ""

    def wants(self, job_topics: Collection[str]) -> bool:
        return wants(self.topics, job_topics)

    def to_dict(self) -> dict[str, Any]:
        """Without the secret, which is only ever shown in the answer that created it."""
        return {"id": self.id, "url": self.url, "topics": list(self.topics),
                "origin": self.origin, "enabled": self.enabled,
                "disabled_reason": self.disabled_reason, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at sending: when (ISO), how long it took (s), the HTTP status (None when
    there was no answer) and what went wrong (None on success)."""

    at: str
    duration: float
    status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "duration": self.duration, "status": self.status,
                "error": self.error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        return cls(data["at"], data["duration"], data.get("status"), data.get("error"))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one subscription. `event.cursor` is the `webhook-id`; `tries` counts the
    failed attempts that set the retry position; it gives up after `since` + max age."""

    id: str
    subscription_id: str
    event: Event
    status: DeliveryStatus
    created_at: float
    next_at: float
    tries: int = 0
    since: float = 0.0
    attempts: tuple[Attempt, ...] = ()
    superseded_by: str | None = None
    reason: str | None = None

    @property
    def job_id(self) -> str:
        return self.event.job.id


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, for `finish`: `status` DELIVERED, FAILED (given up), or PENDING
    to try again at `next_at`."""

    delivery_id: str
    attempt: Attempt
    status: DeliveryStatus
    next_at: float = 0.0
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """The heads due now, earliest first, and when the next later one is due (None: none)."""

    deliveries: list[Delivery] = field(default_factory=list)
    next_at: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    oldest: float | None  # created_at of the oldest pending delivery


class Outbox(Protocol):
    """Subscriptions and the deliveries the store adds for them with each event."""

    async def save_subscription(self, subscription: Subscription) -> None:
        """Add it, or update the one with its id (url, topics, secret, enabled; the original
        `created_at` stays)."""

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription, oldest first (by `created_at`, then id)."""

    async def subscription(self, subscription_id: str) -> Subscription | None:
        """The subscription with this id."""

    async def delete_subscription(self, subscription_id: str) -> bool:
        """Remove it and its deliveries; False when there was none."""

    async def disable_subscription(self, subscription_id: str, reason: str) -> None:
        """No more deliveries for it; its pending ones fail with `reason`."""

    async def due(self, subscription_id: str, now: float, limit: int,
                  exclude: Collection[str] = ()) -> Due:
        """The pending heads of the subscription's queues due at `now`, earliest first, but
        those in `exclude` (the ones the caller is sending already)."""

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Record attempts (each appended to its delivery) and their outcomes. A delivery
        that is no longer pending (deleted, failed by a disable) is left as it is."""

    async def deliveries(self, subscription_id: str, limit: int = 100,
                         status: DeliveryStatus | None = None) -> list[Delivery]:
        """The subscription's deliveries, newest first."""

    async def delivery(self, delivery_id: str) -> Delivery | None:
        """The delivery with this id."""

    async def retry_delivery(self, delivery_id: str, now: float) -> Retried:
        """Make a failed delivery pending again, due now, with a fresh retry schedule."""

    async def outbox_stats(self) -> OutboxStats:
        """How many deliveries are pending, and since when the oldest."""
