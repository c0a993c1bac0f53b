"""The store: current job state plus an append-only event log, behind one small async interface.

Every write is `apply(provider, external_id, change)`: the store reads the current job (or
None), calls the pure `change` function, and when it returns a new job, commits the job and
one event in one transaction, then wakes `wait()`ers. A `dedupe_key` seen before makes the call
a duplicate without calling `change`. Fan-out only reads: `read_since(cursor)` and `wait()`.

Cursors are opaque strings that order events within one store; pass back only what the store
gave: one it cannot place raises `UnknownCursor`, one older than it keeps `CursorExpired`.
`follow(store, cursor)` (relay.store.follow) is how a component reads the log as it grows.
`open_store(url)` picks the backend by URL scheme and imports it lazily.

Every store owns two objects besides its log: `outbox` (relay.store.outbox: the outbound
webhook subscriptions and the deliveries written in `apply`'s transaction) and `leases`
(relay.store.leases: which instance does which piece of shared work; a store that serves one
process grants everything to it). A store shared by processes is also a `Broadcast`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from relay.errors import StoreError
from relay.models import Event, Job, Source
from relay.store.leases import Leases
from relay.store.outbox import Outbox

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


@runtime_checkable
class Broadcast(Protocol):
    """A store several processes share (Redis) that can tell all of them a message that is
    not in the log: the operational events. What one `publish`es, every process's
    `messages()` yields, its own included; a message published while a process is not
    listening (reconnecting) is not yielded to it."""

    async def publish(self, message: str) -> None:
        """Send `message` to every process; StoreError when it cannot be sent."""

    def messages(self) -> AsyncIterator[str]:
        """The messages published from now on, for as long as it is iterated."""


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
