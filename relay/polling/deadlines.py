"""Deadlines: a job not terminal `max_job_age` seconds after tracking started becomes `failed`
with code `deadline_exceeded` (`retryable: true`), and so stops being polled.

    store log / restore ──watch(job, tracked at)──► Deadlines ──due──► Recorder.conclude
    terminal event ──────forget(job id)───────────┘                    (a terminal event: the
                                                                          pollers forget it)

Every unfinished job of a provider with a `max_job_age` has one, whether a poller polls it or
not (a provider without a `base_url` only ever sends webhooks, and its jobs need an end too).
Every instance keeps the deadlines of every job, leases or not: the first to reach one ends
the job, and the merge rules (a terminal job never changes) make the others' writes no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from relay.config import Providers
from relay.errors import StoreError
from relay.ingest.recorder import Recorder
from relay.models import Head, State
from relay.polling.schedule import Schedule, seconds_since
from relay.runtime.metrics import Metrics

logger = logging.getLogger(__name__)

RETRY = 5.0
"""Seconds before a deadline the store could not record is tried again."""
CODE = "deadline_exceeded"


class Deadlines:
    """The deadline of each unfinished job, by relay job id, earliest first."""

    def __init__(self, providers: Providers, recorder: Recorder, metrics: Metrics) -> None:
        self.providers = providers
        self.recorder = recorder
        self.metrics = metrics
        self.schedule = Schedule()
        self._jobs: dict[str, tuple[str, str]] = {}  # job id: (provider, external id)
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def wants(self, job: Head) -> bool:
        """Whether `job` should have a deadline it has not got yet."""
        provider = self.providers.get(job.provider)
        return (provider is not None and provider.max_job_age > 0 and not job.terminal
                and job.id not in self._jobs)

    def watch(self, job: Head, tracked_at: str | None, now: float) -> None:
        """Give `job`, tracked since `tracked_at` (ISO 8601), its deadline (`now` monotonic)."""
        if not self.wants(job):
            return
        age = self.providers[job.provider].max_job_age
        self._jobs[job.id] = (job.provider, job.external_id)
        due, earliest = now + age - seconds_since(tracked_at), self.schedule.next_due()
        self.schedule.set(job.id, due)
        if earliest is None or due < earliest:  # else `run` is waiting for an earlier one
            self._wake.set()

    def forget(self, job_id: str) -> None:
        """The job is terminal: it needs no deadline."""
        if self._jobs.pop(job_id, None) is not None:
            self.schedule.discard(job_id)

    async def run(self) -> None:
        while True:
            entry = self.schedule.pop_due(time.monotonic())
            if entry is not None:
                await self._expire(entry[1])
                continue
            self._wake.clear()
            due = self.schedule.next_due()
            wait = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _expire(self, job_id: str) -> None:
        name, external_id = self._jobs[job_id]
        provider = self.providers[name]
        error = {"code": CODE, "retryable": True, "fix": None,
                 "message": f"not terminal {provider.max_job_age:g} s after relay started "
                            "tracking it (max_job_age)"}
        try:
            applied = await self.recorder.conclude(provider, external_id, State.FAILED, error)
        except StoreError as exc:
            logger.warning("could not fail job %s at its deadline (%s); trying again in "
                           "%.0f s", job_id, exc, RETRY)
            self.schedule.set(job_id, time.monotonic() + RETRY)
            return
        self._jobs.pop(job_id, None)
        if applied.event is not None:
            self.metrics.deadlines_exceeded.labels(name).inc()
            logger.info("job %s at %s was not terminal %g s after tracking started: failed "
                        "with %s", job_id, name, provider.max_job_age, CODE)
