"""Poll leases: each unfinished job is polled by the one instance holding its lease,
`poll:<job id>` (relay.store.leases; with a store only one process uses, that is always us).

    store log ─► Scheduler ─► claim ─┬─ won ──► Poller.track           (the Poller's jobs are
                                     └─ lost ─► waiting                  exactly the leases held)
    every ttl/3: claim again what the Pollers track (renewal) and what waits
        no longer held ─► Poller.forget, back to waiting
        now held ──────► store.get ─► Poller.track (restored: it may have missed webhooks)
    terminal ─► Poller.forget, release;     shutdown ─► release every lease held

An instance that dies stops renewing; its leases lapse after `ttl` and the next round of
another instance takes the jobs over. Nothing here talks to a provider.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection, Iterable, Mapping

from relay.config import ProviderConfig
from relay.store.leases import Leases

MIN_TTL = 10.0
"""Seconds a lease lasts at least: a pause (GC, a slow Redis) must not hand jobs around."""
TTL_INTERVALS = 3.0
"""... and at least this many of the slowest provider's first poll interval."""
ROUNDS_PER_TTL = 3
"""Renewals per lease lifetime: a lease survives two renewals that fail."""
BATCH = 500
"""Lease names per claim or release call."""
PREFIX = "poll:"


def lease_ttl(providers: Mapping[str, ProviderConfig]) -> float:
    intervals = [p.poll_interval for p in providers.values() if p.base_url]
    return max(MIN_TTL, TTL_INTERVALS * max(intervals, default=0.0))


def owner_id() -> str:
    """This process, as lease holders are told apart (and as an operator reads them)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class PollLeases:
    """The poll leases of one instance: the jobs another instance polls now wait here, by id,
    with their provider, until a round wins their lease."""

    def __init__(self, store: Leases, ttl: float, owner: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = owner or owner_id()
        self._waiting: dict[str, str] = {}
        self._finished: list[str] = []
        self._next_round = 0.0

    @property
    def period(self) -> float:
        return self.ttl / ROUNDS_PER_TTL

    def waiting(self) -> list[str]:
        """The ids of the unfinished jobs another instance polls now."""
        return list(self._waiting)

    def is_waiting(self, job_id: str) -> bool:
        return job_id in self._waiting

    def wait_for(self, job_id: str, provider: str) -> None:
        """Another instance polls the job: claim it at the next rounds."""
        self._waiting[job_id] = provider

    def won(self, job_id: str) -> str | None:
        """The job's lease is ours now: it waits no more; its provider (None if it did not
        wait)."""
        return self._waiting.pop(job_id, None)

    def forget_waiting(self, keep: Collection[str]) -> None:
        """Stop waiting for the jobs not in `keep` (they finished meanwhile)."""
        for job_id in [j for j in self._waiting if j not in keep]:
            del self._waiting[job_id]

    def until_round(self, now: float) -> float:
        """Seconds until the next round is due (0: now)."""
        return max(0.0, self._next_round - now)

    def start_round(self, now: float) -> None:
        self._next_round = now + self.period

    async def claim(self, job_ids: Iterable[str]) -> set[str]:
        """Of `job_ids`, those this instance holds now: renewed or newly taken."""
        held: set[str] = set()
        for batch in _batches(job_ids):
            names = await self.store.claim([PREFIX + i for i in batch], self.owner, self.ttl)
            held.update(name.removeprefix(PREFIX) for name in names)
        return held

    def finished(self, job_id: str, held: bool) -> None:
        """The job is terminal: nobody needs its lease; ours goes at the next `flush`."""
        self._waiting.pop(job_id, None)
        if held:
            self._finished.append(job_id)

    async def flush(self) -> None:
        """Release the leases of the jobs that finished."""
        finished, self._finished = self._finished, []
        await self.release(finished)

    async def release(self, job_ids: Collection[str]) -> None:
        for batch in _batches(job_ids):
            await self.store.release([PREFIX + i for i in batch], self.owner)


def _batches(job_ids: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for job_id in job_ids:
        batch.append(job_id)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
