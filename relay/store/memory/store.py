"""The memory backend: everything in this process, gone at exit. For tests and `memory://`."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
from collections.abc import Callable, Collection

from relay.errors import CursorExpired, UnknownCursor
from relay.models import Event, Job, Source
from relay.store import Applied, Change, JobQuery, Store, finished, matches
from relay.store.cursors import EPOCH, Cursors, new_epoch
from relay.store.leases import LocalLeases
from relay.store.memory.outbox import MemoryOutbox


class MemoryStore(Store):
    """Positions are the event's number, counted from 1; the epoch is this instance's.
    `_seqs` holds the numbers of the events kept, in order (a sweep leaves gaps)."""

    def __init__(self) -> None:
        self._outbox = MemoryOutbox()
        self.outbox = self._outbox
        self.leases = LocalLeases()
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._events: list[Event] = []
        self._seqs: list[int] = []
        self._seq = 0  # the newest event's number, kept when a sweep deletes it
        self._swept = 0  # the newest event a sweep deleted
        self._dedupe: set[str] = set()
        self._secrets: dict[str, str] = {}
        self.cursors = Cursors(self._secrets.setdefault(EPOCH, new_epoch()))
        self._changed = asyncio.Event()  # set, and replaced, on each new event

    async def ping(self) -> None:
        return None

    async def apply(self, provider: str, external_id: str, change: Change, *,
                    source: Source, received_at: str, dedupe_key: str | None = None) -> Applied:
        current = await self.find(provider, external_id)
        if dedupe_key is not None and dedupe_key in self._dedupe:
            return Applied(current, None, duplicate=True)
        new = change(current)
        if dedupe_key is not None:
            self._dedupe.add(dedupe_key)
        if new is None:
            return Applied(current, None)
        self._seq += 1
        event = Event(self.cursors.cursor(self._seq), new, source, received_at)
        self._events.append(event)
        self._seqs.append(self._seq)
        self._jobs[new.id] = new
        self._by_key[(provider, external_id)] = new.id
        self._outbox.enqueue(event, current)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return Applied(new, event)

    async def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def find(self, provider: str, external_id: str) -> Job | None:
        job_id = self._by_key.get((provider, external_id))
        return None if job_id is None else self._jobs[job_id]

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], int]:
        found = [job for job in reversed(self._jobs.values()) if matches(job, query)]
        return found[query.offset:query.offset + query.limit], len(found)

    async def latest(self, topics: Collection[str], limit: int = 100) -> list[Event]:
        wanted = frozenset(topics)
        newest: dict[str, int] = {}  # a job's newest event, by its index in the log
        for index, event in enumerate(self._events):
            if not wanted.isdisjoint(event.job.topics):
                newest[event.job.id] = index
        tracked = [job_id for job_id in reversed(self._jobs) if job_id in newest][:limit]
        return [self._events[index] for index in sorted(newest[job_id] for job_id in tracked)]

    async def history(self, job_id: str, limit: int = 1000) -> list[Event]:
        return [event for event in self._events if event.job.id == job_id][:limit]

    async def read_since(self, cursor: str | None, *, topics: Collection[str] | None = None,
                         limit: int = 500) -> list[Event]:
        wanted = None if topics is None else frozenset(topics)
        position = self._position(cursor)
        if cursor is not None and self.cursors.number(cursor) < self._swept:
            raise CursorExpired(cursor)
        found = []
        for event in self._events[position:]:
            if wanted is None or not wanted.isdisjoint(event.job.topics):
                found.append(event)
                if len(found) == limit:
                    break
        return found

    async def last_cursor(self) -> str | None:
        return self.cursors.cursor(self._seq) if self._seq else None

    async def wait(self, cursor: str | None, timeout: float) -> None:
        # An Event per change, not Condition.wait_for inside wait_for: on Python 3.11 that
        # pair can swallow a cancellation and hang shutdown.
        position = self._position(cursor)
        changed = self._changed
        if len(self._events) > position:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()

    async def secret(self, name: str, generate: Callable[[], str]) -> str:
        return self._secrets.setdefault(name, generate())

    async def sweep(self, finished_before: float, limit: int) -> int:
        expired = sorted((moment, job.id) for job in self._jobs.values()
                         if (moment := finished(job)) is not None and moment < finished_before)
        gone = {job_id for _, job_id in expired[:limit]}
        if not gone:
            return 0
        for job_id in gone:
            job = self._jobs.pop(job_id)
            del self._by_key[(job.provider, job.external_id)]
        keep = [event.job.id not in gone for event in self._events]
        deleted = (seq for seq, kept in zip(self._seqs, keep, strict=True) if not kept)
        self._swept = max([self._swept, *deleted])
        self._seqs = list(itertools.compress(self._seqs, keep))
        self._events = list(itertools.compress(self._events, keep))
        self._outbox.forget_jobs(gone)
        return len(gone)

    def _position(self, cursor: str | None) -> int:
        if cursor is None:
            return 0
        number = self.cursors.number(cursor)
        if number > self._seq:
            raise UnknownCursor(cursor)
        return bisect.bisect_right(self._seqs, number)
