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

What a subscription receives. Its `topics` pick the jobs; its `events` (None: every event)
pick the changes, by the kinds `event_kinds` gives each event from the job before and after
it. The store computes them once per event, in the event's transaction, with that one
function (the Redis script is handed them), so every backend filters alike.

Health. A subscription's `Health` (`active`, `failing`, `disabled`, its failed attempts in a
row, its latest error) lives in the store beside it, so it holds across restarts and
instances. The store only applies changes atomically (`update_health`, a pure function of the
health as stored, like `Store.apply`); relay.outbound.health decides them. Becoming disabled
fails the pending deliveries and stops new ones; leaving it lets new events in again.

Replay. `replay` sends again, per job, the newest delivery a subscription was made since a
time (`replay_choice` picks them, the same way in every backend): a new pending delivery of
the same event, at the end of the job's queue, so a job never goes back in time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from relay.models import Event, Job, isoformat

KEEP_FINISHED = 7 * 86400
"""Seconds a finished delivery stays listed (backends prune older ones)."""
MAX_ATTEMPTS_KEPT = 50
"""Attempts kept per delivery (the oldest are dropped first)."""
REPLAY_MAX = 1000
"""Jobs one replay sends again; past it, the answer says `truncated`."""
REPLAY_SCAN = 100_000
"""Deliveries one replay looks at, newest first; past it, the answer says `truncated`."""


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


class EventKind(StrEnum):
    """What an event did to its job; a subscription's `events` names the ones it wants."""

    CREATED = "created"  # the job's first event
    STATE = "state"  # its state changed
    PROGRESS = "progress"  # within its state, its progress or stage changed
    TERMINAL = "terminal"  # it reached a terminal state


def event_kinds(previous: Job | None, job: Job) -> frozenset[EventKind]:
    """The kinds of the event that made `job` out of `previous` (None: the job's first).

    A first event is `created`, and `terminal` too when the job is born finished; a change of
    state is `state` (and `terminal` into a terminal one); a change of progress or stage within
    a state is `progress`. Any other change (an output, a provider status word, metadata, in
    the same state) is of no kind: only subscriptions to every event get it."""
    kinds: set[EventKind] = set()
    if previous is None:
        kinds.add(EventKind.CREATED)
    elif previous.state is not job.state:
        kinds.add(EventKind.STATE)
    elif (previous.progress, previous.stage) != (job.progress, job.stage):
        kinds.add(EventKind.PROGRESS)
    if job.terminal and (previous is None or not previous.terminal):
        kinds.add(EventKind.TERMINAL)
    return frozenset(kinds)


def events_problem(words: Sequence[str]) -> str | None:
    """What is wrong with a subscription's `events` (None: nothing)."""
    known = ", ".join(EventKind)
    if not words:
        return f"expected at least one of {known}"
    unknown = [word for word in words if word not in {kind.value for kind in EventKind}]
    if unknown:
        return f"unknown event {unknown[0]!r} (expected {known})"
    if len(set(words)) < len(words):
        return "each event at most once"
    return None


def wants(topics: Collection[str], job_topics: Collection[str]) -> bool:
    """Whether a subscription to `topics` gets a job with `job_topics`."""
    return "*" in topics or not set(topics).isdisjoint(job_topics)


def wants_events(events: Collection[str] | None, kinds: Collection[str]) -> bool:
    """Whether a subscription to `events` (None: every event) gets an event of `kinds`."""
    return events is None or not set(events).isdisjoint(kinds)


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"  # sent to at full width
    FAILING = "failing"  # failed attempts in a row: one probe at a time until one succeeds
    DISABLED = "disabled"  # no deliveries until an operator enables it again


@dataclass(frozen=True, slots=True)
class Health:
    """How sending to a subscription goes: its `status` and since when (Unix seconds), its
    failed attempts in a row, the error of the latest failed attempt (kept after it recovers),
    while failing the probes that failed and when the next may go, and why it is disabled.
    relay.outbound.health decides every change; the store keeps it."""

    status: SubscriptionStatus = SubscriptionStatus.ACTIVE
    consecutive_failures: int = 0
    last_error: str | None = None
    since: float = 0.0
    probes: int = 0
    probe_at: float = 0.0
    disabled_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Subscription:
    """A downstream consumer: where to post, which jobs (`topics`) and changes (`events`,
    None: all), the `whsec_` secret to sign with, and its `health`. `origin` is `config`
    (registered at startup from `[[subscriptions]]`, optionally by `name`) or `api`."""

    id: str
    url: str
    topics: tuple[str, ...]
    secret: str
    origin: str = "api"
    created_at: str = ""
    events: tuple[EventKind, ...] | None = None
    name: str | None = None
    health: Health = field(default_factory=Health)

    @property
    def status(self) -> SubscriptionStatus:
        return self.health.status

    @property
    def enabled(self) -> bool:
        return self.health.status is not SubscriptionStatus.DISABLED

    @property
    def definition(self) -> tuple[Any, ...]:
        """What decides where and what it is sent (not how that goes)."""
        return self.url, self.topics, self.secret, self.events

    def takes_topics(self, job_topics: Collection[str]) -> bool:
        return wants(self.topics, job_topics)

    def wants(self, job_topics: Collection[str], kinds: Collection[str]) -> bool:
        return wants(self.topics, job_topics) and wants_events(self.events, kinds)

    def to_dict(self) -> dict[str, Any]:
        """Without the secret, which is only ever shown in the answer that created it.
        `enabled` and `disabled_reason` stay for clients written before `status`."""
        h = self.health
        return {"id": self.id, "url": self.url, "topics": list(self.topics),
                "events": None if self.events is None else list(self.events),
                "name": self.name, "origin": self.origin, "status": h.status.value,
                "consecutive_failures": h.consecutive_failures, "last_error": h.last_error,
                "status_since": unix_iso(h.since) if h.since else None,
                "enabled": self.enabled, "disabled_reason": h.disabled_reason,
                "created_at": self.created_at}


def unix_iso(seconds: float) -> str:
    return isoformat(datetime.fromtimestamp(seconds, UTC))


HealthChange = Callable[[Health], Health]
"""A pure function from a subscription's health, as stored, to its next."""


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
    to try again at `next_at`; `retry_after` is the consumer's Retry-After (seconds; 0: none),
    which the subscription's probes honour too (it is not stored)."""

    delivery_id: str
    attempt: Attempt
    status: DeliveryStatus
    next_at: float = 0.0
    reason: str | None = None
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class Due:
    """The heads due now, earliest first, and when the next later one is due (None: none)."""

    deliveries: list[Delivery] = field(default_factory=list)
    next_at: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    oldest: float | None  # created_at of the oldest pending delivery


@dataclass(frozen=True, slots=True)
class Replayed:
    """What `replay` did: the deliveries it queued again, and whether it stopped at a cap
    (REPLAY_MAX jobs, REPLAY_SCAN deliveries looked at) before it reached `since`."""

    count: int
    truncated: bool = False


def replayable(status: DeliveryStatus, only_failed: bool) -> bool:
    """Whether a job whose newest delivery has `status` is sent again by a replay: not while
    one is pending (its newest state is on its way)."""
    if status is DeliveryStatus.FAILED:
        return True
    return status is DeliveryStatus.DELIVERED and not only_failed


ReplayRow = tuple[str, str, DeliveryStatus, float]
"""A delivery as `replay_choice` reads it: id, job id, status, created_at."""


def replay_choice(newest_first: Iterable[ReplayRow], since: float, only_failed: bool,
                  limit: int) -> tuple[list[str], bool]:
    """The deliveries a replay sends again, oldest first, and whether it was cut short.

    `newest_first` is a subscription's deliveries, newest first; those made before `since`
    end it. The first one of a job it meets is that job's newest: the job is replayed when
    that one is `replayable`, never with an older one (which would take it back in time).
    At most `limit` jobs (the newest ones) and REPLAY_SCAN deliveries looked at."""
    seen: set[str] = set()
    chosen: list[str] = []
    for scanned, (delivery_id, job_id, status, created_at) in enumerate(newest_first):
        if created_at < since:
            break
        if scanned == REPLAY_SCAN or (len(chosen) == limit and job_id not in seen
                                      and replayable(status, only_failed)):
            return chosen[::-1], True
        if job_id not in seen:
            seen.add(job_id)
            if replayable(status, only_failed):
                chosen.append(delivery_id)
    return chosen[::-1], False


class Outbox(Protocol):
    """Subscriptions and the deliveries the store adds for them with each event."""

    async def save_subscription(self, subscription: Subscription) -> None:
        """Add it, or update the one with its id: its definition (url, topics, events,
        secret, name, origin) changes; its `created_at` and its health stay as stored."""

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription, oldest first (by `created_at`, then id)."""

    async def subscription(self, subscription_id: str) -> Subscription | None:
        """The subscription with this id."""

    async def delete_subscription(self, subscription_id: str) -> bool:
        """Remove it and its deliveries; False when there was none."""

    async def update_health(self, subscription_id: str, change: HealthChange
                            ) -> tuple[Health, Health] | None:
        """Apply `change` to the stored health atomically: (before, after), or None when
        there is no such subscription. Becoming disabled fails its pending deliveries with
        `disabled_reason` and stops new ones; leaving disabled lets new events add deliveries
        again (the failed ones stay failed)."""

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

    async def replay(self, subscription_id: str, since: float, now: float, *,
                     only_failed: bool = False, limit: int = REPLAY_MAX) -> Replayed:
        """Send again, per job, the newest delivery made since `since` (`replay_choice`):
        each a new pending delivery of its event, due at `now` in event order. None for a
        disabled subscription, nor for a job that meanwhile has a newer or pending one."""

    async def outbox_stats(self) -> OutboxStats:
        """How many deliveries are pending, and since when the oldest."""
