"""The poll scheduler: every tracked, non-terminal job reaches its final state, webhook or not.

    store event log ──read_since/wait──> Polling ──track/forget/heard──> Poller (per provider)
                                                                           │ dispatcher: gate,
    store.list_jobs(terminal=False) ──at startup──┘                        │ slots, schedule
                                                                           v
    WebhookReceiver ──unverified(provider, body)──> nudge      ProviderClient (httpx) ──> Recorder

The scheduler learns about jobs only from the store: tracking (`POST /v1/jobs`), a webhook
for an unknown job, a terminal state however it came. So ingest and scheduling stay
decoupled, and after a restart the schedule is rebuilt from the non-terminal jobs in the store.
Poll results enter the store through the `Recorder`, like webhooks.

With a store several instances share (`Leases`), a job goes to its `Poller` only while this
instance holds its poll lease (`relay.ingest.leasing`), so each job is polled by one instance
at a time; lease rounds run on the task that follows the log, between its reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import httpx

from relay.errors import CursorExpired, RelayError
from relay.ingest import leasing
from relay.ingest.pollers import POLLERS, Poller
from relay.ingest.providers import ProviderClient, client_for
from relay.ingest.recorder import Recorder
from relay.ingest.schedule import Tracked
from relay.metrics import Metrics
from relay.models import Event, Job, Schema, Source
from relay.settings import Settings
from relay.store import JobQuery, Leases, Store
from relay.tasks import cancel_all

logger = logging.getLogger(__name__)

PAGE = 500
WAIT = 30.0
ID_FIELDS = {Schema.STORY: "job_id", Schema.GENERATION: "id", Schema.JOBSTATUS: "id"}


class Polling:
    """One `Poller` per provider that has a `base_url`, fed by the store's event log."""

    def __init__(self, settings: Settings, store: Store, recorder: Recorder, metrics: Metrics,
                 *, seed: int | None = None, lease_ttl: float | None = None) -> None:
        self.settings = settings
        self.store = store
        self.recorder = recorder
        self.metrics = metrics
        self.rng = random.Random(seed)
        self.pollers: dict[str, Poller] = {}
        self.leases = (leasing.PollLeases(store, lease_ttl or leasing.lease_ttl(settings))
                       if isinstance(store, Leases) else None)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, http: httpx.AsyncClient) -> None:
        """Rebuild the schedule from the store, then poll and follow the store's log."""
        self.pollers = {
            provider.name: POLLERS[provider.schema](provider, client_for(provider, http),
                                                    self.recorder, self.metrics, self.rng)
            for provider in self.settings.providers.values() if provider.base_url}
        for name in self.settings.providers.keys() - self.pollers.keys():
            logger.info("provider %s has no base_url: its jobs are not polled", name)
        cursor = await self.store.last_cursor()
        restored = await self._restore()
        if restored:
            logger.info("polling %d unfinished jobs again", len(restored))
        if self.leases is not None:
            self.leases.start_round(time.monotonic())
            logger.info("sharing the polling through leases held as %s (ttl %.0f s); "
                        "%d unfinished jobs are polled by other instances",
                        self.leases.owner, self.leases.ttl, len(self.leases.waiting))
        self._tasks = [asyncio.create_task(poller.run(), name=f"poller-{name}")
                       for name, poller in self.pollers.items()]
        self._tasks.append(asyncio.create_task(self._follow(cursor), name="polling-follower"))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        for poller in self.pollers.values():
            await poller.stop()
        await self._release_all()

    def client(self, provider: str) -> ProviderClient | None:
        """The API client of a provider the relay can call (None before start, or without
        a base_url)."""
        poller = self.pollers.get(provider)
        return poller.client if poller is not None else None

    def nudge(self, provider: str, external_id: str) -> bool:
        """Poll a job now (at most once per `poll_max_interval`); whether it will be."""
        poller = self.pollers.get(provider)
        return poller is not None and poller.nudge(external_id, time.monotonic())

    def unverified(self, provider: str, body: bytes) -> None:
        """A webhook delivery for `provider` failed verification: if its body names a job the
        relay polls, poll that job now, in case the real update was in it."""
        settings = self.settings.providers.get(provider)
        external_id = None if settings is None else _external_id(settings.schema, body)
        if external_id is not None and self.nudge(provider, external_id):
            logger.info("an unverified webhook named job %r at %s: polling it now",
                        external_id[:64], provider)

    def health(self) -> dict[str, Any]:
        """Per provider: whether polling works."""
        return {name: self.pollers[name].health() if name in self.pollers
                else {"polling": "off", "reason": "no base_url"}
                for name in self.settings.providers}

    def problems(self) -> dict[str, Any]:
        """The providers polling cannot reach as it should (refused credentials, throttled),
        for /readyz."""
        return {name: state for name, state in self.health().items()
                if state["polling"] not in ("ok", "off")}

    async def _restore(self) -> set[str]:
        """Poll the unfinished jobs of the store; their ids."""
        now, offset, unfinished = time.monotonic(), 0, set[str]()
        while True:
            jobs, total = await self.store.list_jobs(
                JobQuery(terminal=False, limit=PAGE, offset=offset))
            polled = [job for job in jobs if job.provider in self.pollers]
            unfinished.update(job.id for job in polled)
            await self._admit([job for job in polled
                               if job.external_id not in self.pollers[job.provider].jobs],
                              now, restored=True)
            offset += len(jobs)
            if not jobs or offset >= total:
                return unfinished

    async def _admit(self, jobs: list[Job], now: float, *, restored: bool) -> None:
        """Start polling `jobs` (with leases: those whose lease this instance wins; the others
        wait for the next round)."""
        if self.leases is not None and jobs:
            held = await self.leases.claim(job.id for job in jobs)
            for job in jobs:
                if job.id in held:
                    self.leases.waiting.pop(job.id, None)
                else:
                    self.leases.waiting[job.id] = job.provider
            jobs = [job for job in jobs if job.id in held]
        for job in jobs:
            self.pollers[job.provider].track(job, now, restored=restored)

    async def _resync(self) -> str | None:
        """The store trimmed its log past this scheduler's cursor (Redis retention, after a
        long stall): rebuild the schedule from the jobs themselves, and go on from the newest
        event."""
        logger.warning("polling fell behind the events the store keeps; rebuilding its "
                       "schedule from the unfinished jobs")
        newest = await self.store.last_cursor()
        unfinished = await self._restore()
        for poller in self.pollers.values():
            for tracked in [t for t in poller.jobs.values() if t.job_id not in unfinished]:
                self._finished(poller, tracked.job_id, tracked.external_id)
        if self.leases is not None:
            for job_id in [j for j in self.leases.waiting if j not in unfinished]:
                del self.leases.waiting[job_id]
            await self.leases.flush()
        return newest

    async def _follow(self, cursor: str | None) -> None:
        while True:
            try:
                await self._lease_round()
                cursor = await self._read(cursor)
            except RelayError:
                logger.exception("polling could not read the store's log; retrying")
                await asyncio.sleep(1)

    async def _read(self, cursor: str | None) -> str | None:
        try:
            events = await self.store.read_since(cursor, limit=PAGE)
        except CursorExpired:
            return await self._resync()
        if not events:
            await self.store.wait(cursor, timeout=self._wait_time())
            return cursor
        now = time.monotonic()
        fresh: dict[str, Job] = {}
        for event in events:
            self._observe(event, now, fresh)
        await self._admit(list(fresh.values()), now, restored=False)
        if self.leases is not None:
            await self.leases.flush()
        return events[-1].cursor

    def _observe(self, event: Event, now: float, fresh: dict[str, Job]) -> None:
        """Note one event of the log; jobs new to the scheduler go into `fresh`."""
        job = event.job
        poller = self.pollers.get(job.provider)
        if poller is None:
            return
        if job.terminal:
            fresh.pop(job.id, None)
            self._finished(poller, job.id, job.external_id)
        elif job.external_id in poller.jobs:
            if event.source is Source.WEBHOOK:
                poller.heard(job.external_id, now)
        elif self.leases is None or job.id not in self.leases.waiting:
            fresh[job.id] = job

    def _finished(self, poller: Poller, job_id: str, external_id: str) -> None:
        held = external_id in poller.jobs
        poller.forget(external_id)
        if self.leases is not None:
            self.leases.finished(job_id, held)

    def _wait_time(self) -> float:
        if self.leases is None:
            return WAIT
        return min(WAIT, max(0.01, self.leases.until_round(time.monotonic())))

    # -- leases (a store shared by several instances) -------------------------------------

    async def _lease_round(self) -> None:
        """Every `period`: renew the leases of the jobs polled here, and claim the jobs that
        wait (their holder may have died or stopped)."""
        leases = self.leases
        if leases is None or leases.until_round(time.monotonic()) > 0:
            return
        tracked = {t.job_id: (poller, t) for poller in self.pollers.values()
                   for t in poller.jobs.values()}
        waiting = list(leases.waiting)
        held = await leases.claim([*tracked, *waiting])
        leases.start_round(time.monotonic())
        self._drop_lost(tracked, held)
        await self._take_over([job_id for job_id in waiting if job_id in held])

    def _drop_lost(self, tracked: dict[str, tuple[Poller, Tracked]], held: set[str]) -> None:
        """Stop polling the jobs whose lease lapsed and went elsewhere (renewals came late)."""
        assert self.leases is not None
        lost = [pair for job_id, pair in tracked.items() if job_id not in held]
        for poller, job in lost:
            poller.forget(job.external_id)
            self.leases.waiting[job.job_id] = poller.provider.name
        if lost:
            logger.warning("another instance took over polling %d jobs: their leases lapsed "
                           "before this one renewed them", len(lost))

    async def _take_over(self, job_ids: list[str]) -> None:
        """Poll the jobs whose leases were won from the waiting list, as they are now."""
        assert self.leases is not None
        now, finished = time.monotonic(), []
        for job_id in job_ids:
            job = await self.store.get(job_id)
            provider = self.leases.waiting.pop(job_id)
            if job is None or job.terminal:
                finished.append(job_id)
            else:
                self.pollers[provider].track(job, now, restored=True)
        await self.leases.release(finished)
        if len(job_ids) > len(finished):
            logger.info("took over polling %d jobs another instance held",
                        len(job_ids) - len(finished))

    async def _release_all(self) -> None:
        if self.leases is None:
            return
        held = [t.job_id for poller in self.pollers.values() for t in poller.jobs.values()]
        try:
            await self.leases.release(held)
        except RelayError:
            logger.warning("could not release %d poll leases; they lapse within %.0f s",
                           len(held), self.leases.ttl, exc_info=True)


def _external_id(schema: Schema, body: bytes) -> str | None:
    """The job id a webhook body names, if it parses (best effort: it proved nothing)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return None
    value = payload.get(ID_FIELDS[schema]) if isinstance(payload, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None
