"""When to poll: per-job timing, the due-time heap, back-off, and the per-provider gate.

Nothing here does I/O; times are `time.monotonic()` readings passed in.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from relay.config import ProviderConfig
from relay.errors import ProviderError
from relay.models import isoformat, utcnow

logger = logging.getLogger(__name__)

BACKOFF = 1.5
"""How much longer the next interval is after a poll that changed nothing."""
ERROR_BACKOFF = 2.0
"""... and after a poll that failed."""
JITTER = 0.2


@dataclass(eq=False, slots=True)
class Tracked:
    """A non-terminal job the scheduler polls. `heard` is when the relay last heard of it
    other than by polling (tracked, webhook); `busy` while a poll of it is in flight; `done`
    once a poll found it terminal (it is forgotten when the store's log says so)."""

    job_id: str
    external_id: str
    interval: float
    heard: float
    watching: bool = False
    listed: bool = True
    misses: int = 0
    failures: int = 0
    busy: bool = False
    done: bool = False
    started: float = 0.0
    nudged: float = -math.inf
    inspected: bool = False
    calls_back: bool = True


class Schedule:
    """Due times by key, earliest first. Rescheduling leaves the old heap entry behind; it is
    skipped when it surfaces (and the heap is compacted when stale entries pile up)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: str) -> bool:
        return key in self._due

    def set(self, key: str, due: float) -> None:
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(due, key) for key, due in self._due.items()]
            heapq.heapify(self._heap)

    def due(self, key: str) -> float | None:
        return self._due.get(key)

    def discard(self, key: str) -> None:
        self._due.pop(key, None)

    def next_due(self) -> float | None:
        """The earliest due time, or None when nothing is scheduled."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> tuple[float, str] | None:
        """The earliest entry, `(due, key)`, if it is due by `now`, taken out of the schedule."""
        due = self.next_due()
        if due is None or due > now:
            return None
        entry = heapq.heappop(self._heap)
        del self._due[entry[1]]
        return entry


class Pacing:
    """Intervals: `poll_interval` after a change, backing off with jitter to
    `poll_max_interval` while nothing changes or polls fail."""

    def __init__(self, provider: ProviderConfig, rng: random.Random) -> None:
        self.fast = provider.poll_interval
        self.slow = provider.poll_max_interval
        self.rng = rng

    def jitter(self, seconds: float) -> float:
        return seconds * self.rng.uniform(1 - JITTER, 1 + JITTER)

    def first(self) -> float:
        """The delay before a new job's first poll: soon, spread so jobs do not bunch up."""
        return self.fast * self.rng.uniform(0.5, 1.0)

    def after_poll(self, tracked: Tracked, changed: bool) -> float:
        tracked.interval = self.fast if changed else min(tracked.interval * BACKOFF, self.slow)
        return min(self.jitter(tracked.interval), self.slow)

    def after_failure(self, tracked: Tracked) -> float:
        tracked.interval = min(max(tracked.interval, self.fast) * ERROR_BACKOFF, self.slow)
        return min(self.jitter(tracked.interval), self.slow)


class Gate:
    """Whether a provider may be called now, for all of its jobs at once.

    A 429 or 503 closes it until the `Retry-After` (or a growing pause when none is given).
    A 401, 402 or 403 (the account cannot call the API: credentials refused, or unpaid) closes
    it too, then lets one probe through at a time, the pauses growing to `poll_max_interval`,
    until a call succeeds: an account problem is one visible condition, not a retry loop per
    job, and the jobs stay as they are.
    """

    def __init__(self, provider: ProviderConfig) -> None:
        self.name = provider.name
        self.fast = provider.poll_interval
        self.slow = provider.poll_max_interval
        self.open_at = 0.0
        self.unauthorized: ProviderError | None = None
        self.unauthorized_since: str | None = None
        self.throttled_until = 0.0
        self.throttled = False  # paused by a 429 or 503 since the last call that succeeded
        self.probing = False
        self._auth_pause = 0.0
        self._throttle_pause = 0.0

    def delay(self, now: float) -> float | None:
        """Seconds until the next call may start; None while an auth probe is out."""
        if self.unauthorized is not None and self.probing:
            return None
        return max(0.0, self.open_at - now)

    def start_call(self) -> bool:
        """Note a call starting; True when it is the one probe an auth failure allows."""
        if self.unauthorized is None:
            return False
        self.probing = True
        return True

    def end_call(self, probe: bool) -> None:
        if probe:
            self.probing = False

    def throttle(self, retry_after: float | None, now: float) -> bool:
        """Pause for `retry_after` seconds; True when this begins a pause."""
        if retry_after is None:
            self._throttle_pause = min(max(self._throttle_pause * 2, self.fast), self.slow)
            retry_after = self._throttle_pause
        begins = self.throttled_until <= now  # not a call that crossed the first 429
        if begins:
            until = isoformat(utcnow() + timedelta(seconds=retry_after))
            logger.info("provider %s asks relay to wait: its polls pause until %s", self.name,
                        until, extra={"provider": self.name, "until": until})
        self.throttled = True
        self.throttled_until = max(self.throttled_until, now + retry_after)
        self.open_at = max(self.open_at, now + retry_after)
        return begins

    def deny(self, error: ProviderError, now: float) -> None:
        if self.unauthorized is None:
            logger.error("provider %s will not serve the relay's account (%s); polling it is "
                         "paused and probed until it does", self.name, error,
                         extra={"provider": self.name, "status": error.status})
            self.unauthorized_since = isoformat(utcnow())
            self._auth_pause = self.fast
        elif self.probing:  # the probe failed too; calls that crossed the first 401 do not count
            self._auth_pause = min(self._auth_pause * 2, self.slow)
        self.unauthorized = error
        self.open_at = max(self.open_at, now + self._auth_pause)

    def accept(self) -> bool:
        """A call succeeded: credentials work and the provider is not throttling. True when
        the provider had been refusing the relay's account until now."""
        self._throttle_pause = 0.0
        if self.throttled:
            self.throttled = False
            logger.info("provider %s answers polls again after its pause", self.name,
                        extra={"provider": self.name})
        if self.unauthorized is None:
            return False
        logger.warning("provider %s serves the relay's account again", self.name,
                       extra={"provider": self.name})
        self.unauthorized = None
        self.unauthorized_since = None
        return True


def seconds_since(stamp: str | None) -> float:
    """Seconds since an ISO 8601 timestamp of the store (0 when there is none, or it is
    unreadable or in the future)."""
    if not stamp:
        return 0.0
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return 0.0
    if then.tzinfo is None:
        return 0.0
    return max(0.0, (utcnow() - then).total_seconds())
