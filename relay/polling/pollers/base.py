"""A poller: one per provider, a dispatcher over the schedule of that provider's jobs.

The dispatcher holds one of the provider's `max_concurrency` slots while it waits for the gate
(Retry-After, auth failures) and for the next due job, then hands the slot to that poll. What
a poll is, and when the next one is due, is the schema's business (the modules beside this
one); the base polls one job per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from relay.config import ProviderConfig
from relay.errors import PayloadError, ProviderError, StoreError
from relay.ingest.providers import ProviderClient
from relay.ingest.recorder import Recorder
from relay.models import Job, Source, State, Update
from relay.polling.answers import Meaning, meaning, outcome, provider_code, refusal
from relay.polling.schedule import Gate, Pacing, Schedule, Tracked
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store import Applied

logger = logging.getLogger(__name__)

NOT_FOUND_LIMIT = 3
"""404s in a row before a job fails (with the provider's code, else `provider_not_found`)."""

Fetch = Callable[[str], Awaitable[Update]]


@dataclass(frozen=True, slots=True)
class Work:
    """One call to make now, and the jobs it settles."""

    run: Callable[[], Awaitable[None]]
    jobs: tuple[Tracked, ...]


Pick = Work | float | None
"""What to do now: start `Work`, or wait that many seconds (None: until something changes)."""


@dataclass(frozen=True, slots=True)
class Services:
    """What every poller is given besides its provider and client: where updates go, the
    metrics, the randomness of its jitter, the relay's public URL (a `generation` job
    whose webhookUrl is not under it will never call back), and who is told of account
    trouble."""

    recorder: Recorder
    metrics: Metrics
    rng: random.Random
    public_url: str = ""
    announce: Announce | None = None


Announce = Callable[[str, dict[str, Any]], None]
"""Told `(operational event type, the provider's JSON)`: relay.provider.unauthorized when a
provider starts refusing the relay's account, relay.provider.recovered when it serves it
again; once per change of this poller's gate (relay.polling.notices makes it once across
instances)."""
UNAUTHORIZED, RECOVERED = "relay.provider.unauthorized", "relay.provider.recovered"


ACCOUNT_TROUBLE = {402: "payment_required"}
"""How /readyz names a provider whose account cannot call its API (else "unauthorized")."""


class Poller:
    """Polls one provider's jobs with `client.status`, one job per call."""

    def __init__(self, provider: ProviderConfig, client: ProviderClient,
                 services: Services) -> None:
        self.provider = provider
        self.client = client
        self.recorder = services.recorder
        self.announce = services.announce
        self.metrics = metrics = services.metrics
        self.pacing = Pacing(provider, services.rng)
        self.gate = Gate(provider)
        self.jobs: dict[str, Tracked] = {}
        self.schedule = Schedule()
        self._slots = asyncio.Semaphore(provider.max_concurrency)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._jobs_gauge = metrics.polled_jobs.labels(provider.name)
        self._auth_gauge = metrics.provider_unauthorized.labels(provider.name)
        self._pauses = metrics.provider_pauses.labels(provider.name)

    # -- what the scheduler tells it ---------------------------------------------------------

    def track(self, job: Job, now: float, *, restored: bool = False) -> None:
        """Start polling a non-terminal job (a no-op when it is polled already)."""
        if job.external_id in self.jobs:
            return
        tracked = Tracked(job.id, job.external_id, self.pacing.fast, heard=now)
        self.jobs[job.external_id] = tracked
        self._place(tracked, now + self.first_delay(tracked, job, restored, now))
        self._jobs_gauge.set(len(self.jobs))

    def forget(self, external_id: str) -> None:
        """Stop polling a job: it is terminal, or another instance polls it now."""
        tracked = self.jobs.pop(external_id, None)
        if tracked is not None:
            tracked.done = True
            self.schedule_of(tracked).discard(external_id)
            self._jobs_gauge.set(len(self.jobs))

    def heard(self, external_id: str, now: float) -> None:
        """A webhook about the job was stored."""

    def nudge(self, external_id: str, now: float) -> bool:
        """Poll the job now, at most once per `poll_max_interval`; whether it will be."""
        tracked = self.jobs.get(external_id)
        if tracked is None or tracked.busy or tracked.done:
            return False
        if now - tracked.nudged < self.provider.poll_max_interval:
            return False
        tracked.nudged = now
        self._place(tracked, now)
        return True

    def health(self) -> dict[str, Any]:
        gate = self.gate
        refused = gate.unauthorized
        if refused is not None:
            status = refused.status or 0
            return {"polling": ACCOUNT_TROUBLE.get(status, "unauthorized"), "jobs": len(self.jobs),
                    "status": status, "since": gate.unauthorized_since,
                    "error": provider_code(refused), "message": str(refused)}
        throttled = gate.throttled_until - time.monotonic()
        if throttled > 0:
            return {"polling": "throttled", "jobs": len(self.jobs),
                    "retry_in": round(throttled, 3)}
        return {"polling": "ok", "jobs": len(self.jobs)}

    # -- what a schema decides ---------------------------------------------------------------

    def first_delay(self, tracked: Tracked, job: Job, restored: bool, now: float) -> float:
        return self.pacing.first()

    def next_delay(self, tracked: Tracked, changed: bool) -> float:
        return self.pacing.after_poll(tracked, changed)

    def schedule_of(self, tracked: Tracked) -> Schedule:
        return self.schedule

    def pick(self, now: float) -> Pick:
        entry = self.schedule.pop_due(now)
        if entry is None:
            return until(self.schedule.next_due(), now)
        tracked = self.jobs[entry[1]]
        return Work(partial(self.poll, tracked, self.client.status), (tracked,))

    # -- the dispatcher ----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                work = await self._next_work()
            except BaseException:
                self._slots.release()
                raise
            self._start(work)

    async def stop(self) -> None:
        await cancel_all(list(self._tasks))

    async def _next_work(self) -> Work:
        while True:
            self._wake.clear()
            now = time.monotonic()
            wait = self.gate.delay(now)
            if wait == 0:
                picked = self.pick(now)
                if isinstance(picked, Work):
                    return picked
                wait = picked
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _start(self, work: Work) -> None:
        probe = self.gate.start_call()
        now = time.monotonic()
        for tracked in work.jobs:
            tracked.busy = True
            tracked.started = now
        task = asyncio.create_task(self._run(work, probe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Work, probe: bool) -> None:
        try:
            await work.run()
        except Exception:
            logger.exception("a poll of provider %s failed", self.provider.name)
        finally:
            self._slots.release()
            self.gate.end_call(probe)
            for tracked in work.jobs:
                if tracked.busy:  # the work ended without settling it
                    self.settle(tracked, self.pacing.after_failure(tracked))
            self._wake.set()

    # -- one poll and what follows from its answer -------------------------------------------

    async def poll(self, tracked: Tracked, fetch: Fetch) -> None:
        try:
            update = await fetch(tracked.external_id)
        except ProviderError as exc:
            await self.failed(tracked, exc)
            return
        except PayloadError as exc:
            self.broken(tracked, exc, "invalid_payload")
            return
        self.accepted()
        await self.record(tracked, update)

    async def record(self, tracked: Tracked, update: Update) -> None:
        try:
            applied = await self.recorder.record(self.provider, update, Source.POLL)
        except StoreError as exc:
            self.broken(tracked, exc, "store_error")
            return
        self.count("changed" if applied.event is not None else "unchanged")
        self.settled(tracked, applied)

    def settled(self, tracked: Tracked, applied: Applied) -> None:
        """A poll answered: stop at terminal, else schedule the next one."""
        tracked.misses = tracked.failures = 0
        if applied.job is None or applied.job.terminal:
            tracked.busy = False
            tracked.done = True
            return
        self.settle(tracked, self.next_delay(tracked, applied.event is not None))

    def settle(self, tracked: Tracked, delay: float) -> None:
        tracked.busy = False
        if not tracked.done and self.jobs.get(tracked.external_id) is tracked:
            self._place(tracked, time.monotonic() + delay)

    async def failed(self, tracked: Tracked, error: ProviderError) -> None:
        """A one-job call failed: the poll-answer table (relay.polling.answers) says
        what follows."""
        self.count(outcome(error))
        said = meaning(error)
        if self.provider_failed(error, said):
            self.settle(tracked, self.until_open())
        elif said is Meaning.MISSING:
            self.accepted()
            await self._missing(tracked, error)
        elif said is Meaning.REFUSED:
            self.accepted()
            await self.refused(tracked, error)
        else:
            self.passing(tracked, error)

    def provider_failed(self, error: ProviderError, said: Meaning) -> bool:
        """Close the gate for trouble of the whole provider (429, 503; 401, 402, 403)."""
        now = time.monotonic()
        if said is Meaning.THROTTLED:
            if self.gate.throttle(error.retry_after, now):
                self._pauses.inc()
            return True
        if said is Meaning.ACCOUNT:
            first = self.gate.unauthorized is None
            self.gate.deny(error, now)
            self._auth_gauge.set(1)
            if first:
                self._tell(UNAUTHORIZED)
            return True
        return False

    def passing(self, tracked: Tracked, error: ProviderError) -> None:
        """Passing trouble: back this job off, no sooner than the Retry-After it was given."""
        self._log_failure(tracked, error)
        delay = self.pacing.after_failure(tracked)
        self.settle(tracked, max(delay, error.retry_after or 0.0))

    async def refused(self, tracked: Tracked, error: ProviderError) -> None:
        """The provider refuses the job for good: it fails with the provider's reason."""
        logger.warning("provider %s refuses job %s (%s); it fails", self.provider.name,
                       tracked.job_id, error)
        await self.conclude(tracked, self.client.explain(refusal(error)))

    async def conclude(self, tracked: Tracked, error: dict[str, Any]) -> None:
        try:
            applied = await self.recorder.conclude(self.provider, tracked.external_id,
                                                   State.FAILED, error)
        except StoreError as exc:
            self.broken(tracked, exc, "store_error")
            return
        self.settled(tracked, applied)

    def broken(self, tracked: Tracked, error: Exception, label: str) -> None:
        self.count(label)
        self._log_failure(tracked, error)
        self.settle(tracked, self.pacing.after_failure(tracked))

    def accepted(self) -> None:
        if self.gate.accept():
            self._auth_gauge.set(0)
            self._tell(RECOVERED)

    def _tell(self, kind: str) -> None:
        if self.announce is not None:
            self.announce(kind, {"provider": self.provider.name,
                                 "schema": self.provider.schema.value, **self.health()})

    def until_open(self) -> float:
        return max(0.0, self.gate.open_at - time.monotonic())

    def count(self, label: str) -> None:
        self.metrics.polls.labels(self.provider.name, label).inc()

    async def _missing(self, tracked: Tracked, error: ProviderError) -> None:
        tracked.misses += 1
        if tracked.misses < NOT_FOUND_LIMIT:
            self.settle(tracked, self.pacing.after_failure(tracked))
            return
        logger.warning("provider %s answered 404 for job %s %d times in a row; it fails",
                       self.provider.name, tracked.job_id, tracked.misses)
        await self.conclude(tracked, self.client.explain(refusal(error)))

    def _log_failure(self, tracked: Tracked, error: Exception) -> None:
        # The first failure of a streak is worth a warning; the retries that follow are not.
        level = logging.WARNING if tracked.failures == 0 else logging.DEBUG
        logger.log(level, "polling job %s at %s failed: %s", tracked.job_id, self.provider.name,
                   error)
        tracked.failures += 1

    def _place(self, tracked: Tracked, due: float) -> None:
        self.schedule_of(tracked).set(tracked.external_id, due)
        self._wake.set()


def until(due: float | None, now: float) -> float | None:
    return None if due is None else max(0.0, due - now)
