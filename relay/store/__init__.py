"""The store: current job state plus an append-only event log, behind one small async interface.

Every write is `apply(provider, external_id, change)`: the store reads the current job (or
None), calls the pure `change` function, and when it returns a new job, commits the job and
one event in one transaction, then wakes `wait()`ers. A `dedupe_key` seen before makes the call
a duplicate that writes nothing (`change` may have run, against a guess: its result is dropped,
which is why it must be pure). Fan-out only reads: `read_since(cursor)` and `wait()`.

Cursors are opaque strings that order events within one store; pass back only what the store
gave: one it cannot place raises `UnknownCursor` (also one given by an earlier incarnation of
the store: relay.store.cursors), one older than it keeps `CursorExpired`.
`follow(store, cursor)` (relay.store.follow) is how a component reads the log as it grows.
`open_store(url)` picks the backend by URL scheme and imports it lazily.

Every store owns two objects besides its log: `outbox` (relay.store.outbox: the outbound
webhook subscriptions and the deliveries written in `apply`'s transaction) and `leases`
(relay.store.leases: which instance does which piece of shared work; a store that serves one
process grants everything to it). A store shared by processes is also a `Broadcast`.

Retention (relay.store.retention) deletes finished jobs with `sweep`, a batch at a time; a
backend that can give the freed space back to the system also implements `Compacting`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from relay.errors import StoreError
from relay.models import Event, Job, Source
from relay.store.cursors import Cursors
from relay.store.leases import Leases
from relay.store.outbox import Outbox

DEDUPE_WINDOW = 7 * 86400.0
"""Seconds a dedupe key is remembered, unless the retention is shorter."""

Change = Callable[[Job | None], Job | None]
"""A pure function from the current job (None when untracked) to the new one (None: no change)."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply` did: the job as it now is (None if still untracked), the event it made
    (None when nothing changed), and whether the dedupe key had been seen before."""

    job: Job | None
    event: Event | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class JobQuery:
    provider: str | None = None
    state: str | None = None
    topic: str | None = None
    external_id: str | None = None
    terminal: bool | None = None
    limit: int = 50
    offset: int = 0


class Store(abc.ABC):
    """The async interface every backend implements; the contract suite in
    tests/test_store_contract.py proves they behave alike."""

    outbox: Outbox
    leases: Leases
    cursors: Cursors  # how the backend's positions become cursors, with the store's epoch
    dedupe_window: float = DEDUPE_WINDOW
    """Seconds a dedupe key is remembered; the composition root shortens it to a shorter
    retention, so that nothing about a finished job outlives that."""

    async def open(self) -> None:  # noqa: B027 - a backend with nothing to connect keeps it
        """Connect and create what is missing. Called once before use."""

    async def close(self) -> None:  # noqa: B027
        """Release connections; pending writes are finished first."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the store cannot be reached (for /readyz)."""

    @abc.abstractmethod
    async def apply(self, provider: str, external_id: str, change: Change, *,
                    source: Source, received_at: str, dedupe_key: str | None = None) -> Applied:
        """Apply `change` to the job atomically; returns only once the result is durable."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job with this relay id."""

    @abc.abstractmethod
    async def find(self, provider: str, external_id: str) -> Job | None:
        """The job a provider knows by `external_id`."""

    @abc.abstractmethod
    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], int]:
        """Jobs matching the query, most recently tracked first, and how many match."""

    @abc.abstractmethod
    async def latest(self, topics: Collection[str], limit: int = 100) -> list[Event]:
        """The newest event of each job with one of `topics`: the most recently tracked
        `limit` jobs, returned oldest cursor first."""

    @abc.abstractmethod
    async def history(self, job_id: str, limit: int = 1000) -> list[Event]:
        """The events of one job, oldest first."""

    @abc.abstractmethod
    async def read_since(self, cursor: str | None, *, topics: Collection[str] | None = None,
                         limit: int = 500) -> list[Event]:
        """Events after `cursor` (from the start when None), oldest first; only those of jobs
        with one of `topics` when given. Raises UnknownCursor for a cursor it never gave, and
        CursorExpired for one older than the events it keeps."""

    @abc.abstractmethod
    async def last_cursor(self) -> str | None:
        """The cursor of the newest event, or None when the log is empty."""

    @abc.abstractmethod
    async def wait(self, cursor: str | None, timeout: float) -> None:
        """Return once an event after `cursor` may exist, or after `timeout` seconds."""

    @abc.abstractmethod
    async def secret(self, name: str, generate: Callable[[], str]) -> str:
        """A value kept in the store: the one stored under `name`, else `generate()` stored."""

    @abc.abstractmethod
    async def sweep(self, finished_before: float, limit: int) -> int:
        """Delete up to `limit` terminal jobs whose `finished` moment is before
        `finished_before` (Unix seconds), oldest first, each with its events, its deliveries
        and every index entry that names it, in one short step (one transaction, one
        script); how many it deleted. From then on a cursor older than any deleted event
        raises CursorExpired: the events after it are no longer all there."""


@runtime_checkable
class Compacting(Protocol):
    """A store whose deletions leave space it must give back itself (SQLite's free pages)."""

    async def compact(self) -> None:
        """Give back the space sweeps freed, in short steps that let writes in between."""


def finished(job: Job) -> float | None:
    """When a terminal job finished, in Unix seconds, for retention (None: not terminal).
    The later of its `finished_at` and its `updated_at`: a job tracked long after it finished
    (the provider's `finished_at` is old) is still kept for the whole retention."""
    if not job.terminal:
        return None
    moments = [m for m in (_unix(job.finished_at), _unix(job.updated_at)) if m is not None]
    return max(moments, default=0.0)


def _unix(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@runtime_checkable
class Broadcast(Protocol):
    """A store several processes share (Redis) that can tell all of them a message that is
    not in the log (the operational events), and reads what the others write at the pace its
    readers ask for (`hurry`). What one `publish`es, every process's `messages()` yields, its
    own included; a message published while a process is not listening (reconnecting) is
    not yielded to it."""

    async def publish(self, message: str) -> None:
        """Send `message` to every process; StoreError when it cannot be sent."""

    def messages(self) -> AsyncIterator[str]:
        """The messages published from now on, for as long as it is iterated."""

    def hurry(self, eager: bool) -> None:
        """Whether readers here want new events as soon as they can have them (streams are
        open: True), or the store may gather another process's events into fewer reads."""


def open_store(url: str) -> Store:
    """The backend for `url`: `memory://`, `sqlite:///PATH` or `redis://…`, imported only
    when it is the one asked for (Redis's client is not needed to run on SQLite)."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from relay.store.memory import MemoryStore
        return MemoryStore()
    if scheme == "sqlite":
        from relay.store.sqlite import SQLiteStore
        return SQLiteStore.from_url(url)
    if scheme in ("redis", "rediss"):
        from relay.store.redis import RedisStore
        return RedisStore.from_url(url)
    raise StoreError(f"no store for {url!r}: expected sqlite:///PATH, redis://… or memory://")


def matches(job: Job, query: JobQuery) -> bool:
    """Whether `job` passes the filters of `query` (for backends that filter in Python)."""
    return ((query.provider is None or job.provider == query.provider)
            and (query.state is None or job.state == query.state)
            and (query.topic is None or query.topic in job.topics)
            and (query.external_id is None or job.external_id == query.external_id)
            and (query.terminal is None or job.terminal == query.terminal))
