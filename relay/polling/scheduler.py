"""The poll scheduler: every tracked, non-terminal job reaches its final state, webhook or not.

    store event log ──follow──> Scheduler ──track/forget/heard──> Poller (per provider)
                                                                   │ dispatcher: gate,
    store.list_jobs(terminal=False) ──at startup──┘                │ slots, schedule
                                                                   v
    webhook ingest ──unverified(provider, job)──> nudge    ProviderClient (httpx) ──> Recorder

The scheduler learns about jobs only from the store: tracking (`POST /v1/jobs`), a webhook
for an unknown job, a terminal state however it came. So ingest and scheduling stay
decoupled, and after a restart the schedule is rebuilt from the non-terminal jobs in the store.
Poll results enter the store through the `Recorder`, like webhooks.

A job goes to its `Poller` only while this instance holds its poll lease
(relay.polling.leases: with a store several instances share, each job is polled by one of
them at a time); lease rounds run between the pages of the log, on the task that follows it.
Every unfinished job, polled or not, also has its deadline here (relay.polling.deadlines).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from relay.config import Providers
from relay.errors import RelayError
from relay.ingest.providers import ProviderClients
from relay.ingest.recorder import Recorder
from relay.models import Event, Job, Source
from relay.polling.deadlines import Deadlines
from relay.polling.leases import PollLeases, lease_ttl
from relay.polling.notices import AccountNotices
from relay.polling.pollers import POLLERS, Poller, Services
from relay.polling.pollers.base import Announce
from relay.polling.schedule import Tracked
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store import JobQuery, Store
from relay.store.follow import RETRY, WAIT, Gap, follow

logger = logging.getLogger(__name__)

PAGE = 500


class Scheduler:
    """One `Poller` per provider that has a `base_url`, fed by the store's event log.
    `public_url` is the relay's (`server.public_url`): a `generation` job whose webhookUrl is
    not under it will never call back (without it, none is taken to)."""

    def __init__(self, providers: Providers, store: Store, recorder: Recorder,
                 clients: ProviderClients, metrics: Metrics, *, public_url: str = "",
                 seed: int | None = None, lease_ttl_seconds: float | None = None,
                 announce: Announce | None = None) -> None:
        self.providers = providers
        self.store = store
        self.recorder = recorder
        self.clients = clients
        self.metrics = metrics
        self.leases = PollLeases(store.leases, lease_ttl_seconds or lease_ttl(providers))
        self.notices = AccountNotices(store.leases, self.leases.owner, announce)
        self.services = Services(recorder, metrics, random.Random(seed), public_url,
                                 self.notices)
        self.pollers: dict[str, Poller] = {}
        self.deadlines = Deadlines(providers, recorder, metrics)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Rebuild the schedule from the store, then poll and follow the store's log."""
        self.pollers = {
            name: POLLERS[provider.schema](provider, client, self.services)
            for name, provider in self.providers.items()
            if (client := self.clients.get(name)) is not None}
        for name in self.providers.keys() - self.pollers.keys():
            logger.info("provider %s has no base_url: its jobs are not polled", name)
        cursor = await self.store.last_cursor()
        restored = await self._restore()
        if restored:
            logger.info("polling %d unfinished jobs again", len(restored))
        self.leases.start_round(time.monotonic())
        if self.store.leases.shared:
            logger.info("sharing the polling through leases held as %s (ttl %.0f s); "
                        "%d unfinished jobs are polled by other instances",
                        self.leases.owner, self.leases.ttl, len(self.leases.waiting()))
        self._tasks = [asyncio.create_task(poller.run(), name=f"poller-{name}")
                       for name, poller in self.pollers.items()]
        self._tasks.append(asyncio.create_task(self._follow(cursor), name="polling-follower"))
        self._tasks.append(asyncio.create_task(self.deadlines.run(), name="job-deadlines"))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        for poller in self.pollers.values():
            await poller.stop()
        await self.notices.stop()
        await self._release_all()

    def nudge(self, provider: str, external_id: str) -> bool:
        """Poll a job now (at most once per `poll_max_interval`); whether it will be."""
        poller = self.pollers.get(provider)
        return poller is not None and poller.nudge(external_id, time.monotonic())

    def unverified(self, provider: str, external_id: str) -> None:
        """A webhook delivery for `provider` that failed verification named this job: if the
        relay polls it, poll it now, in case the real update was in it."""
        if self.nudge(provider, external_id):
            logger.info("an unverified webhook named job %r at %s: polling it now",
                        external_id[:64], provider)

    def health(self) -> dict[str, Any]:
        """Per provider: whether polling works."""
        return {name: self.pollers[name].health() if name in self.pollers
                else {"polling": "off", "reason": "no base_url"}
                for name in self.providers}

    def problems(self) -> dict[str, Any]:
        """The providers polling cannot reach as it should (refused credentials, throttled),
        for /readyz."""
        return {name: state for name, state in self.health().items()
                if state["polling"] not in ("ok", "off")}

    async def _restore(self) -> set[str]:
        """Poll the unfinished jobs of the store, and give each its deadline; their ids."""
        now, offset, unfinished = time.monotonic(), 0, set[str]()
        while True:
            jobs, total = await self.store.list_jobs(
                JobQuery(terminal=False, limit=PAGE, offset=offset))
            await self._give_deadlines(jobs)
            polled = [job for job in jobs if job.provider in self.pollers]
            unfinished.update(job.id for job in polled)
            await self._admit([job for job in polled
                               if job.external_id not in self.pollers[job.provider].jobs],
                              now, restored=True)
            offset += len(jobs)
            if not jobs or offset >= total:
                return unfinished

    async def _give_deadlines(self, jobs: list[Job]) -> None:
        """Deadlines for jobs the scheduler did not see being tracked: counted from their
        first event (one read of their history each), else from their creation."""
        for job in jobs:
            if self.deadlines.wants(job):
                first = await self.store.history(job.id, limit=1)
                since = first[0].received_at if first else job.created_at
                self.deadlines.watch(job, since, time.monotonic())

    async def _admit(self, jobs: list[Job], now: float, *, restored: bool) -> None:
        """Start polling the `jobs` whose lease this instance wins; the others wait for the
        next round."""
        held = await self.leases.claim(job.id for job in jobs) if jobs else set()
        for job in jobs:
            if job.id in held:
                self.leases.won(job.id)
                self.pollers[job.provider].track(job, now, restored=restored)
            else:
                self.leases.wait_for(job.id, job.provider)

    async def _resync(self) -> None:
        """The scheduler lost its place in the log (trimmed past its cursor after a long
        stall, or the store reset): rebuild the schedule from the jobs themselves."""
        unfinished = await self._restore()
        for poller in self.pollers.values():
            for tracked in [t for t in poller.jobs.values() if t.job_id not in unfinished]:
                self._finished(poller, tracked.job_id, tracked.external_id)
        self.leases.forget_waiting(unfinished)
        await self.leases.flush()

    async def _follow(self, cursor: str | None) -> None:
        async for page in follow(self.store, cursor, page=PAGE, wait=self._wait_time):
            while not await self._take(page):  # a page is taken whole, or tried again
                await asyncio.sleep(RETRY)

    async def _take(self, page: list[Event] | Gap) -> bool:
        """Run a due lease round, then note a page of the log; False when the store failed."""
        try:
            await self._lease_round()
            if isinstance(page, Gap):
                logger.warning("polling lost its place in the store's log (%s); "
                               "rebuilding its schedule from the unfinished jobs", page.reason)
                await self._resync()
            elif page:
                await self._observe_all(page)
        except RelayError:
            logger.exception("polling could not read or lease from the store; retrying")
            return False
        return True

    async def _observe_all(self, events: list[Event]) -> None:
        now = time.monotonic()
        fresh: dict[str, Job] = {}
        unplaced: dict[str, Job] = {}
        for event in events:
            self._deadline(event, now, unplaced)
            self._observe(event, now, fresh)
        await self._give_deadlines(list(unplaced.values()))
        await self._admit(list(fresh.values()), now, restored=False)
        await self.leases.flush()

    def _deadline(self, event: Event, now: float, unplaced: dict[str, Job]) -> None:
        """A job's first event starts its deadline; one first seen later (the log was lost
        meanwhile) goes into `unplaced`, to have its history read."""
        head = event.head
        if head.terminal:
            unplaced.pop(head.id, None)
            self.deadlines.forget(head.id)
        elif head.version == 1:
            self.deadlines.watch(head, event.received_at, now)
        elif self.deadlines.wants(head):
            unplaced[head.id] = event.job

    def _observe(self, event: Event, now: float, fresh: dict[str, Job]) -> None:
        """Note one event of the log; jobs new to the scheduler go into `fresh`."""
        head = event.head
        poller = self.pollers.get(head.provider)
        if poller is None:
            return
        if head.terminal:
            fresh.pop(head.id, None)
            self._finished(poller, head.id, head.external_id)
        elif head.external_id in poller.jobs:
            if event.source is Source.WEBHOOK:
                poller.heard(head.external_id, now)
        elif not self.leases.is_waiting(head.id):
            fresh[head.id] = event.job

    def _finished(self, poller: Poller, job_id: str, external_id: str) -> None:
        held = external_id in poller.jobs
        poller.forget(external_id)
        self.leases.finished(job_id, held)

    def _wait_time(self) -> float:
        return min(WAIT, max(0.01, self.leases.until_round(time.monotonic())))

    # -- lease rounds ---------------------------------------------------------------------

    async def _lease_round(self) -> None:
        """Every `period`: renew the leases of the jobs polled here, and claim the jobs that
        wait (their holder may have died or stopped)."""
        if self.leases.until_round(time.monotonic()) > 0:
            return
        tracked = {t.job_id: (poller, t) for poller in self.pollers.values()
                   for t in poller.jobs.values()}
        waiting = self.leases.waiting()
        held = await self.leases.claim([*tracked, *waiting])
        self.leases.start_round(time.monotonic())
        self._drop_lost(tracked, held)
        await self._take_over([job_id for job_id in waiting if job_id in held])

    def _drop_lost(self, tracked: dict[str, tuple[Poller, Tracked]], held: set[str]) -> None:
        """Stop polling the jobs whose lease lapsed and went elsewhere (renewals came late)."""
        lost = [pair for job_id, pair in tracked.items() if job_id not in held]
        for poller, job in lost:
            poller.forget(job.external_id)
            self.leases.wait_for(job.job_id, poller.provider.name)
        if lost:
            logger.warning("another instance took over polling %d jobs: their leases lapsed "
                           "before this one renewed them", len(lost))

    async def _take_over(self, job_ids: list[str]) -> None:
        """Poll the jobs whose leases were won from the waiting list, as they are now."""
        now, finished = time.monotonic(), []
        for job_id in job_ids:
            job = await self.store.get(job_id)
            provider = self.leases.won(job_id)
            if job is None or job.terminal or provider is None:
                finished.append(job_id)
            else:
                self.pollers[provider].track(job, now, restored=True)
        await self.leases.release(finished)
        if len(job_ids) > len(finished):
            logger.info("took over polling %d jobs another instance held",
                        len(job_ids) - len(finished))

    async def _release_all(self) -> None:
        held = [t.job_id for poller in self.pollers.values() for t in poller.jobs.values()]
        try:
            await self.leases.release(held)
        except RelayError:
            logger.warning("could not release %d poll leases; they lapse within %.0f s",
                           len(held), self.leases.ttl, exc_info=True)
