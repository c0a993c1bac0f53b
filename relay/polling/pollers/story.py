"""The `story` schema's poller: many jobs refreshed by each list page."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from relay.config import ProviderConfig
from relay.errors import PayloadError, ProviderError, StoreError
from relay.ingest.providers import Page, ProviderClient, StoryClient
from relay.models import Source
from relay.normalise.story import Unreadable
from relay.polling.answers import Meaning, meaning, outcome
from relay.polling.pollers.base import Pick, Poller, Services, Work, until
from relay.polling.schedule import Schedule, Tracked

logger = logging.getLogger(__name__)

LIST_SLACK = 200
"""Entries a sweep reads past as many as this relay polls jobs of the provider: room for the
finished and untracked jobs the list shows among them. In entries, not pages, so a smaller
`page_size` does not make relay give up on the list sooner."""


class StoryPoller(Poller):
    """Refreshes its jobs with `GET /v1/jobs` pages of `page_size` entries, newest first, one
    sweep at a time: when a job is due, every job within half an interval of its due time is
    wanted, and pages are read until all of them were seen (or the list ends, or the pages held
    `LIST_SLACK` more entries than this relay polls jobs). Every tracked job a page shows is
    refreshed; each page moves the offset on by all of its entries, readable or not. A wanted
    job no page showed is old or hidden, and one whose entry relay cannot read is odd: from
    then on either is read alone (`GET /v1/generate/story/{id}`), so that one bad entry costs
    only itself. A list the provider refuses (400, 404, 410, 422, 451) leaves the wanted jobs
    to be read alone too: each job's own answer then decides about it."""

    client: StoryClient

    def __init__(self, provider: ProviderConfig, client: ProviderClient,
                 services: Services) -> None:
        super().__init__(provider, client, services)
        self.direct = Schedule()
        self.sweeping = False
        self.page_size = provider.page_size

    def schedule_of(self, tracked: Tracked) -> Schedule:
        return self.schedule if tracked.listed else self.direct

    def pick(self, now: float) -> Pick:
        entry = self.direct.pop_due(now)
        if entry is not None:
            tracked = self.jobs[entry[1]]
            return Work(partial(self.poll, tracked, self.client.status), (tracked,))
        if not self.sweeping:
            wanted = self._wanted(now)
            if len(wanted) == 1 and not self.schedule:  # alone: one GET costs one call
                return Work(partial(self.poll, wanted[0], self.client.status), tuple(wanted))
            if wanted:
                self.sweeping = True
                return Work(partial(self._sweep, wanted), tuple(wanted))
        waits = [self.direct.next_due(), None if self.sweeping else self.schedule.next_due()]
        return until(min((w for w in waits if w is not None), default=None), now)

    def _wanted(self, now: float) -> list[Tracked]:
        first = self.schedule.next_due()
        if first is None or first > now:
            return []
        wanted: list[tuple[float, str]] = []
        later: list[tuple[float, str]] = []
        while (entry := self.schedule.pop_due(now + self.pacing.slow / 2)) is not None:
            tracked = self.jobs[entry[1]]
            (wanted if entry[0] - tracked.interval / 2 <= now else later).append(entry)
        for due, key in later:
            self.schedule.set(key, due)
        return [self.jobs[key] for _, key in wanted]

    async def _sweep(self, wanted: list[Tracked]) -> None:
        remaining = {tracked.external_id: tracked for tracked in wanted}
        try:
            complete = await self._read_pages(remaining)
        except ProviderError as exc:
            self._sweep_failed(remaining, exc)
            return
        except PayloadError as exc:
            for tracked in remaining.values():
                self.broken(tracked, exc, "invalid_payload")
            return
        finally:
            self.sweeping = False
        for tracked in remaining.values():
            if complete:  # no page showed it: read it alone from now on
                tracked.listed = False
            self.settle(tracked, 0.0 if complete else self.until_open())

    async def _read_pages(self, remaining: dict[str, Tracked]) -> bool:
        """Pages until every wanted job was seen; False when the gate closed on the way."""
        offset = pages = 0
        most = -(-(len(self.jobs) + LIST_SLACK) // self.page_size)  # pages, rounded up
        while remaining and pages < most:
            if pages and self.gate.delay(time.monotonic()) != 0:
                return False
            page = await self.client.page(self.page_size, offset)
            pages += 1
            await self._take(page, remaining)
            offset += page.entries
            if not page.entries or offset >= page.total:
                break
        return True

    async def _take(self, page: Page, remaining: dict[str, Tracked]) -> None:
        self.accepted()
        self._set_aside(page.unreadable, remaining)
        known = [(self.jobs[u.external_id], u) for u in page.updates if u.external_id in self.jobs]
        results = await asyncio.gather(
            *(self.recorder.record(self.provider, update, Source.POLL) for _, update in known),
            return_exceptions=True)
        changed = False
        for (tracked, _), result in zip(known, results, strict=True):
            wanted = remaining.pop(tracked.external_id, None) is not None
            if tracked.busy and not wanted:
                continue  # a poll of its own is in flight and will settle it
            if isinstance(result, BaseException):
                self.broken(tracked, StoreError(str(result)), "store_error")
                continue
            changed = changed or result.event is not None
            self.settled(tracked, result)
        self.count("changed" if changed else "unchanged")

    def _set_aside(self, unreadable: tuple[Unreadable, ...], remaining: dict[str, Tracked]
                   ) -> None:
        """Entries relay cannot read: their jobs are read alone, now and from now on."""
        if not unreadable:
            return
        self.metrics.unreadable_entries.labels(self.provider.name).inc(len(unreadable))
        logger.warning("provider %s listed %d entries relay cannot read (first: %s); their "
                       "jobs are read one by one", self.provider.name, len(unreadable),
                       unreadable[0].problem[:200])
        for entry in unreadable:
            tracked = self.jobs.get(entry.external_id or "")
            if tracked is None:
                continue
            wanted = remaining.pop(tracked.external_id, None) is not None
            if tracked.busy and not wanted:
                continue  # a poll of its own is in flight and will settle it
            self.schedule.discard(tracked.external_id)
            tracked.listed = False
            self.settle(tracked, 0.0)

    def _sweep_failed(self, remaining: dict[str, Tracked], error: ProviderError) -> None:
        self.count(outcome(error))
        said = meaning(error, one_job=False)
        whole = self.provider_failed(error, said)
        if said is Meaning.REFUSED:
            self.accepted()
            logger.warning("provider %s refuses its job list (%s); the %d jobs wanted from it "
                           "are read one by one", self.provider.name, error, len(remaining))
        for tracked in remaining.values():
            if whole:
                self.settle(tracked, self.until_open())
            elif said is Meaning.REFUSED:
                tracked.listed = False
                self.settle(tracked, 0.0)
            else:
                self._log_failure(tracked, error)
                self.settle(tracked, max(self.pacing.after_failure(tracked),
                                         error.retry_after or 0.0))
