"""The SQLite backend: the embedded default (`sqlite:///PATH`, one process).

Writes: one task takes every `apply` waiting in its queue and commits them in one
transaction (group commit): concurrent webhooks share an fsync instead of queueing behind one
each, and each caller is answered only after that commit. The database is in WAL mode with
`synchronous=FULL`, so a committed update survives a crash or power loss. The transaction
runs on the event loop, BEGIN to COMMIT and its fsync (a millisecond or less on an SSD): run
on the writer thread, its merges took turns with the event loop for the GIL, and the event
loop saw each commit end only after a round of other work, 4-5 ms later: that cost about
90 us more CPU per webhook and a fifth of the webhooks per second
(tests/benchmarks/bench_ingest.py). The webhooks that arrive meanwhile make the next batch.
Only a wait for another process's write lock goes to the writer thread. Reads use their own
connections (one per thread), which WAL lets run beside the writer.

What keeps a write cheap: the writer remembers the jobs it wrote last (no read and decode of
the job it is about to update), writes a batch's rows with a few `executemany` calls, and
keeps the newest committed events in memory so that followers of the log (`read_since` with
no topics: the hub, the pollers) need no query. All of it is only trusted while this process
is the database's only writer: `PRAGMA data_version`, checked under the write lock, tells
when another connection has written, and then it is forgotten.

A cursor's position (relay.store.cursors) is the event's `seq`. The writer assigns seqs itself
(consecutively, under the write lock), so a batch's events are numbered before they are
written. The cursors' epoch is kept in the file (`secrets`): a new file makes a new one.

Retention: `sweep` deletes finished jobs (`jobs.finished`, Unix seconds, indexed) a batch per
transaction, and remembers the newest event it deleted (`marks.swept`): a cursor older than
that raises CursorExpired. The file is in `auto_vacuum=INCREMENTAL` mode (a database made
before is vacuumed into it once, at open), so `compact` can hand the freed pages back to the
file system a few thousand at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from relay.errors import CursorExpired, StoreError, UnknownCursor
from relay.models import Event, Job, Source
from relay.store import DEDUPE_WINDOW, Applied, Change, JobQuery, Store, finished
from relay.store.cursors import EPOCH, Cursors, new_epoch
from relay.store.health import WriteHealth
from relay.store.leases import LocalLeases
from relay.store.outbox import KEEP_FINISHED
from relay.store.sqlite.database import BUSY_TIMEOUT_MS, Database
from relay.store.sqlite.outbox import OUTBOX_SCHEMA, Enqueuer, SQLiteOutbox, upgrade_outbox

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_CACHED = 4096
MAX_TAIL = 2048
PRUNE_BATCH = 5000
"""Rows one compaction step deletes (old dedupe keys, old finished deliveries)."""
VACUUM_PAGES = 2048
"""Free pages one compaction step gives back: 8 MiB of 4 KiB pages."""
JOURNAL_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is cut back to after a checkpoint (a sweep can make it grow)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    state TEXT NOT NULL,
    terminal INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    job TEXT NOT NULL,
    finished REAL,
    UNIQUE (provider, external_id)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_terminal ON jobs (terminal);
CREATE TABLE IF NOT EXISTS job_topics (
    topic TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (topic, job_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at TEXT NOT NULL,
    job TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS dedupe (
    key TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS health (
    name TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class _Write:
    provider: str
    external_id: str
    change: Change
    source: Source
    received_at: str
    dedupe_key: str | None


class SQLiteStore(Store):
    """The outbox's deliveries are added by `_Batch` with their events."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = Database(path)
        self.cursors = Cursors()  # its epoch is read from the file by `open`
        self.outbox = SQLiteOutbox(self._db, self.cursors)
        self.leases = LocalLeases()
        self.health = WriteHealth(f"SQLite {path}")
        self._queue: asyncio.Queue[tuple[_Write, asyncio.Future[Applied]] | None] = (
            asyncio.Queue())
        self._write_task: asyncio.Task[None] | None = None
        self._last_seq = 0  # the newest committed event, as the event loop knows it
        self._max_seq = 0  # the newest event a reader may see: _last_seq, or one committing
        self._changed = asyncio.Event()  # set, and replaced, after each commit
        self._swept = 0  # the newest event a sweep deleted: cursors before it are expired
        self._tail = _Tail()
        self._jobs = _JobCache()
        self._data_version: int | None = None
        self._pending = 0
        self._commits = 0

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
        path = url.removeprefix("sqlite:///")
        if not path:
            raise StoreError(f"no database path in {url!r}")
        return cls(path)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        self._last_seq, self._swept = await self._db.open(_prepare)
        self._max_seq = self._last_seq
        self.cursors.adopt(await self.secret(EPOCH, new_epoch))
        self._write_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        if self._write_task is not None:
            self._queue.put_nowait(None)
            await self._write_task
            self._write_task = None
        self._db.close()

    async def ping(self) -> None:
        """The store answers reads, and writes: after a failed write, a small write is tried
        (a full disk, a read-only file) so readiness comes back once writes work again."""
        await self._db.read(lambda conn: conn.execute("SELECT 1").fetchone())
        if self.health.failure is not None:
            try:
                await self._db.transaction(_probe)
            except StoreError as exc:
                self.health.failed(exc)
                raise
            self.health.succeeded()

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, provider: str, external_id: str, change: Change, *,
                    source: Source, received_at: str, dedupe_key: str | None = None) -> Applied:
        if self._write_task is None:
            raise StoreError("the store is not open")
        done: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        write = _Write(provider, external_id, change, source, received_at, dedupe_key)
        self._queue.put_nowait((write, done))
        self._pending += 1
        try:
            return await done
        finally:
            self._pending -= 1

    @property
    def pending(self) -> int:
        """Writes handed to `apply` and not answered yet (waiting for, or in, a commit)."""
        return self._pending

    @property
    def commits(self) -> int:
        """Write transactions committed since `open`: with group commit, fewer than writes."""
        return self._commits

    async def _write_loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                return
            await self._commit_batch(batch)
            if batch[-1] is None:
                return

    async def _next_batch(self) -> list[tuple[_Write, asyncio.Future[Applied]] | None]:
        batch = [await self._queue.get()]
        while batch[-1] is not None and len(batch) < MAX_BATCH and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _commit_batch(self, batch: list[tuple[_Write, asyncio.Future[Applied]] | None]
                            ) -> None:
        items = [item for item in batch if item is not None]
        if not items:
            return
        results: list[Applied | BaseException]
        try:
            committed = await self._commit([write for write, _ in items])
        except Exception as exc:  # whatever went wrong, every caller is answered
            if not isinstance(exc, StoreError):
                logger.exception("the SQLite writer failed")
                exc = StoreError(f"SQLite write failed: {exc!r}")
            self.health.failed(exc)
            results = [exc] * len(items)
        else:
            self.health.succeeded()
            results = committed.results
            self._publish(committed)
        for (_, done), result in zip(items, results, strict=True):
            if done.cancelled():
                continue
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

    def _publish(self, committed: _Committed) -> None:
        """After a commit: the new events become readable from the tail and the last cursor
        moves, in one step, then followers are woken."""
        if committed.foreign:
            self._tail.clear()
        self._tail.extend(committed.events, committed.seq)
        self._last_seq = max(self._last_seq, committed.seq)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _commit(self, writes: list[_Write]) -> _Committed:
        """The writes in one transaction, on the event loop from BEGIN to COMMIT (see the
        module's docstring); only waiting for another process's write lock is left to the
        writer thread."""
        async with self._db.writing() as on_thread:
            conn = self._db.writer
            try:
                if not _begin_at_once(conn):
                    await on_thread(conn.execute, "BEGIN IMMEDIATE")
                foreign = self._catch_up(conn)
                batch = _Batch(conn, self._jobs, self._max_seq, self.cursors)
                results = [batch.apply(write) for write in writes]
                batch.flush()
                self._publish_and_commit(conn, batch.seq)
            except BaseException as exc:
                self._abandon(conn)
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"SQLite write failed: {exc}") from exc
                raise
        self._commits += 1
        self._jobs.keep(batch.jobs)
        return _Committed(results, batch.new_events, batch.seq, foreign)

    def _abandon(self, conn: sqlite3.Connection) -> None:
        # Whatever failed, the next batch must not find this transaction still open.
        self._jobs.clear()
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _publish_and_commit(self, conn: sqlite3.Connection, seq: int) -> None:
        # The new last cursor is published before COMMIT: a reader may see the new rows the
        # moment COMMIT returns, and must not find their cursors unknown (UnknownCursor).
        published = self._max_seq
        self._max_seq = seq
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._max_seq = published
            raise

    def _catch_up(self, conn: sqlite3.Connection) -> bool:
        """Forget what this writer remembers when another connection has committed since
        (`PRAGMA data_version` says so; checked under the write lock). True when it had."""
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return False
        foreign = self._data_version is not None
        self._data_version = version
        self._jobs.clear()
        self._max_seq = max(self._max_seq, _max_seq(conn))
        return foreign

    async def secret(self, name: str, generate: Callable[[], str]) -> str:
        def keep(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (name, generate()))
            return str(conn.execute("SELECT value FROM secrets WHERE name = ?",
                                    (name,)).fetchone()[0])

        return await self._db.on_writer(lambda: keep(self._db.writer))

    # -- retention ------------------------------------------------------------------------

    async def sweep(self, finished_before: float, limit: int) -> int:
        return await self._db.on_writer(self._sweep, finished_before, limit)

    def _sweep(self, finished_before: float, limit: int) -> int:
        conn = self._db.writer
        swept = self._swept
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute("SELECT id, seq, job FROM jobs WHERE finished < ?"
                                " ORDER BY finished LIMIT ?", (finished_before, limit)).fetchall()
            if rows:
                # Raised before COMMIT, as the last cursor is: a reader that sees the rows
                # gone must already find its older cursor expired.
                self._swept = max(swept, _delete_jobs(conn, rows))
            conn.execute("COMMIT")
        except BaseException:
            self._swept = swept
            self._abandon(conn)
            raise
        self._jobs.clear()  # it may remember jobs that are gone now
        return len(rows)

    async def compact(self) -> None:
        """Old dedupe keys and finished deliveries pruned, then the free pages given back, each
        a step at a time on the writer, so webhooks' commits go in between."""
        for prune, older in ((_PRUNE_DEDUPE, self.dedupe_window),
                             (_PRUNE_DELIVERIES, KEEP_FINISHED)):
            while await self._db.transaction(_prune, prune, older) == PRUNE_BATCH:
                pass
        while await self._db.on_writer(self._vacuum_step):
            pass
        await self._db.on_writer(lambda: self._db.writer.execute(
            "PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    def _vacuum_step(self) -> bool:
        """Give back up to VACUUM_PAGES free pages; whether there may be more to give."""
        conn = self._db.writer
        before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        # Each row the pragma steps through frees a page: read them all.
        conn.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
        after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return 0 < after < before

    # -- reads ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        row = await self._db.read(lambda c: c.execute(
            "SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return Job.from_json(row[0]) if row else None

    async def find(self, provider: str, external_id: str) -> Job | None:
        row = await self._db.read(lambda c: c.execute(
            "SELECT job FROM jobs WHERE provider = ? AND external_id = ?",
            (provider, external_id)).fetchone())
        return Job.from_json(row[0]) if row else None

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], int]:
        where, params = _where(query)

        def run(conn: sqlite3.Connection) -> tuple[list[Job], int]:
            total = conn.execute(f"SELECT count(*) FROM jobs{where}", params).fetchone()[0]
            rows = conn.execute(f"SELECT job FROM jobs{where} ORDER BY n DESC LIMIT ? OFFSET ?",
                                [*params, query.limit, query.offset]).fetchall()
            return [Job.from_json(row[0]) for row in rows], int(total)

        return await self._db.read(run)

    async def latest(self, topics: Collection[str], limit: int = 100) -> list[Event]:
        topics = list(topics)
        marks = ", ".join("?" * len(topics))
        rows = await self._db.read(lambda c: c.execute(
            "SELECT e.seq, e.source, e.received_at, e.job FROM events e WHERE e.seq IN"
            " (SELECT seq FROM jobs WHERE id IN"
            f"  (SELECT job_id FROM job_topics WHERE topic IN ({marks}))"
            " ORDER BY n DESC LIMIT ?) ORDER BY e.seq", [*topics, limit]).fetchall())
        return [self._event(row) for row in rows]

    async def history(self, job_id: str, limit: int = 1000) -> list[Event]:
        rows = await self._db.read(lambda c: c.execute(
            "SELECT seq, source, received_at, job FROM events WHERE job_id = ?"
            " ORDER BY seq LIMIT ?", (job_id, limit)).fetchall())
        return [self._event(row) for row in rows]

    async def read_since(self, cursor: str | None, *, topics: Collection[str] | None = None,
                         limit: int = 500) -> list[Event]:
        after = self._seq(cursor)
        if after < self._swept and cursor is not None:
            raise CursorExpired(cursor)
        if topics is None and after >= self._swept:  # the tail may hold events swept since
            recent = self._tail.since(after, limit)
            if recent is not None:
                return recent
        sql = "SELECT seq, source, received_at, job FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if topics is not None:
            topics = list(topics)
            marks = ", ".join("?" * len(topics))
            sql += f" AND job_id IN (SELECT job_id FROM job_topics WHERE topic IN ({marks}))"
            params += topics
        sql += " ORDER BY seq LIMIT ?"
        rows = await self._db.read(lambda c: c.execute(sql, [*params, limit]).fetchall())
        return [self._event(row) for row in rows]

    async def last_cursor(self) -> str | None:
        return self.cursors.cursor(self._last_seq) if self._last_seq else None

    async def wait(self, cursor: str | None, timeout: float) -> None:
        # An Event per commit rather than Condition.wait_for inside wait_for: on Python 3.11
        # that pair can swallow a cancellation, and a follower that ignores cancel hangs
        # shutdown.
        after = self._seq(cursor)
        changed = self._changed
        if self._last_seq > after:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()

    def _seq(self, cursor: str | None) -> int:
        if cursor is None:
            return 0
        seq = self.cursors.number(cursor)
        if seq > self._max_seq:
            raise UnknownCursor(cursor)
        return seq

    def _event(self, row: tuple[Any, ...]) -> Event:
        seq, source, received_at, body = row
        return Event(self.cursors.cursor(seq), Job.from_json(body), Source(source), received_at)


_Key = tuple[str, str]


class _JobCache:
    """The current job of recently written (provider, external_id) pairs, as committed, so
    an update need not read and decode its job again. Only the holder of the writer
    connection (`Database.writing`) touches it."""

    def __init__(self, size: int = MAX_CACHED) -> None:
        self.size = size
        self._jobs: dict[_Key, Job | None] = {}

    def get(self, key: _Key) -> tuple[bool, Job | None]:
        if key in self._jobs:
            return True, self._jobs[key]
        return False, None

    def keep(self, jobs: dict[_Key, Job | None]) -> None:
        for key, job in jobs.items():
            self._jobs.pop(key, None)
            self._jobs[key] = job
        while len(self._jobs) > self.size:
            del self._jobs[next(iter(self._jobs))]

    def clear(self) -> None:
        self._jobs.clear()


@dataclass(frozen=True, slots=True)
class _Committed:
    results: list[Applied | BaseException]
    events: list[Event]
    seq: int
    foreign: bool  # another connection had written since this writer's last commit


class _Tail:
    """The newest committed events, in order, so that followers of the log (the hub, the
    pollers) read what was just written without a query and a JSON decode per event.
    Only the event loop touches it; the writer's seqs are consecutive, so a seq is an index."""

    def __init__(self, size: int = MAX_TAIL) -> None:
        self.size = size
        self.events: list[Event] = []
        self.first = 0  # the seq of events[0]

    def extend(self, events: list[Event], last_seq: int) -> None:
        """Add the events of a commit, whose last one has seq `last_seq`."""
        if not events:
            return
        first_seq = last_seq - len(events) + 1
        if first_seq != self.first + len(self.events):
            self.clear()
            self.first = first_seq
        self.events += events
        if len(self.events) > 2 * self.size:
            dropped = len(self.events) - self.size
            del self.events[:dropped]
            self.first += dropped

    def since(self, after: int, limit: int) -> list[Event] | None:
        """The events after seq `after`, or None when the tail does not reach back to it."""
        if not self.events or after + 1 < self.first:
            return None
        start = after + 1 - self.first
        return self.events[start:start + limit]

    def clear(self) -> None:
        self.events = []


class _Batch:
    """The writes of one transaction. Each is applied in order against the jobs as the
    batch left them, and the rows are written together by `flush` (a few `executemany`
    calls rather than several statements per write)."""

    def __init__(self, conn: sqlite3.Connection, cache: _JobCache, last_seq: int,
                 cursors: Cursors) -> None:
        self.conn = conn
        self.cursors = cursors
        self.cache = cache
        self.seq = last_seq
        self.jobs: dict[_Key, Job | None] = {}
        self.dedupe: set[str] = set()
        self.events: list[tuple[int, str, str, str, str]] = []
        self.rows: list[tuple[str, str, str, str, bool, int, str, float | None]] = []
        self.topics_gone: list[tuple[str, str]] = []
        self.topics_new: list[tuple[str, str]] = []
        self.new_events: list[Event] = []
        self.outbox = Enqueuer(conn)  # a delivery per subscription that wants an event

    def apply(self, write: _Write) -> Applied | BaseException:
        key = (write.provider, write.external_id)
        current = self._current(key)
        if write.dedupe_key is not None and self._seen(write.dedupe_key):
            return Applied(current, None, duplicate=True)
        try:
            new = write.change(current)
        except Exception as exc:  # the caller's pure function failed: its own error, not ours
            return exc
        if write.dedupe_key is not None:  # only once the change is made, so a retry can land
            self.dedupe.add(write.dedupe_key)
        if new is None:
            return Applied(current, None)
        self.jobs[key] = new
        return Applied(new, self._event(write, current, new))

    def _current(self, key: _Key) -> Job | None:
        if key in self.jobs:
            return self.jobs[key]
        known, job = self.cache.get(key)
        if not known:
            row = self.conn.execute("SELECT job FROM jobs WHERE provider = ? AND external_id = ?",
                                    key).fetchone()
            job = Job.from_json(row[0]) if row else None
        self.jobs[key] = job
        return job

    def _seen(self, dedupe_key: str) -> bool:
        return dedupe_key in self.dedupe or self.conn.execute(
            "SELECT 1 FROM dedupe WHERE key = ?", (dedupe_key,)).fetchone() is not None

    def _event(self, write: _Write, current: Job | None, new: Job) -> Event:
        self.seq += 1
        body = new.to_json()
        self.events.append((self.seq, new.id, write.source.value, write.received_at, body))
        self.rows.append((new.id, new.provider, new.external_id, new.state.value, new.terminal,
                          self.seq, body, finished(new)))
        old = current.topics if current is not None else ()
        if old != new.topics:
            self.topics_gone += [(topic, new.id) for topic in old if topic not in new.topics]
            self.topics_new += [(topic, new.id) for topic in new.topics if topic not in old]
        self.outbox.add(self.seq, new, current)
        event = Event(self.cursors.cursor(self.seq), new, write.source, write.received_at)
        self.new_events.append(event)
        return event

    def flush(self) -> None:
        conn = self.conn
        conn.executemany("INSERT INTO events (seq, job_id, source, received_at, job)"
                         " VALUES (?, ?, ?, ?, ?)", self.events)
        conn.executemany(
            "INSERT INTO jobs (id, provider, external_id, state, terminal, seq, job, finished)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " state = excluded.state, terminal = excluded.terminal, seq = excluded.seq,"
            " job = excluded.job, finished = excluded.finished", self.rows)
        # By primary key (topic, job_id): a DELETE by job_id alone would scan the whole table.
        conn.executemany("DELETE FROM job_topics WHERE topic = ? AND job_id = ?",
                         self.topics_gone)
        conn.executemany("INSERT OR IGNORE INTO job_topics VALUES (?, ?)", self.topics_new)
        conn.executemany("INSERT OR IGNORE INTO dedupe VALUES (?, unixepoch())",
                         [(key,) for key in self.dedupe])
        self.outbox.flush()


WRITER_CACHE_KIB = 65536
"""Pages the writer keeps in memory: the indexes a webhook touches stay read."""


def _prepare(conn: sqlite3.Connection) -> tuple[int, int]:
    """The schema, created where missing, and old dedupe keys pruned; the newest event's seq
    and the newest a sweep deleted. A write is made whatever there is to do, so a file that
    cannot be written (read-only, its WAL index immutable, a full disk) fails startup rather
    than the first webhook."""
    _incremental_vacuum(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_LIMIT}")
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
    conn.executescript(_SCHEMA + OUTBOX_SCHEMA)
    upgrade_outbox(conn)
    _upgrade_jobs(conn)
    conn.execute("DELETE FROM dedupe WHERE seen_at < unixepoch() - ?", (DEDUPE_WINDOW,))
    _probe(conn)
    row = conn.execute("SELECT max(seq) FROM events").fetchone()
    swept = conn.execute("SELECT value FROM marks WHERE name = 'swept'").fetchone()
    return int(row[0] or 0), int(swept[0]) if swept else 0


def _begin_at_once(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE, unless another connection holds the write lock: then False at once
    rather than waiting for it (on the event loop). This process is the only writer but for
    rare moments (an operator's shell, a second relay by mistake)."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return True


def _incremental_vacuum(conn: sqlite3.Connection) -> None:
    """The file in `auto_vacuum=INCREMENTAL` mode, which only a file with no tables yet can
    be switched to: before WAL mode writes the header, a new one is; one made before is
    rebuilt into it once (VACUUM: it is written whole again, once)."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
        conn.execute("VACUUM")
        logger.info("rebuilt the SQLite database once (VACUUM) so that retention can give its "
                    "space back")


def _upgrade_jobs(conn: sqlite3.Connection) -> None:
    """`jobs.finished` (retention's clock), added to a database made before it and filled in
    for its terminal jobs, and its index."""
    if "finished" not in {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE jobs ADD COLUMN finished REAL")
        rows = conn.execute("SELECT n, job FROM jobs WHERE terminal = 1").fetchall()
        conn.executemany("UPDATE jobs SET finished = ? WHERE n = ?",
                         [(finished(Job.from_json(body)), n) for n, body in rows])
        conn.execute("COMMIT")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished)"
                 " WHERE finished IS NOT NULL")


def _delete_jobs(conn: sqlite3.Connection, rows: list[tuple[str, int, str]]) -> int:
    """Delete these jobs (rows of id, seq, job) with their events, topics and deliveries;
    the newest event deleted, also kept in `marks` for the next start."""
    ids = [(job_id,) for job_id, _, _ in rows]
    topics = [(topic, job_id) for job_id, _, body in rows for topic in json.loads(body)["topics"]]
    subscriptions = [row[0] for row in conn.execute("SELECT id FROM subscriptions")]
    conn.executemany("DELETE FROM events WHERE job_id = ?", ids)
    # By (subscription_id, job_id), which the deliveries_job index leads with.
    conn.executemany("DELETE FROM deliveries WHERE subscription_id = ? AND job_id = ?",
                     [(sub, job_id) for sub in subscriptions for (job_id,) in ids])
    conn.executemany("DELETE FROM job_topics WHERE topic = ? AND job_id = ?", topics)
    conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
    newest = max(seq for _, seq, _ in rows)  # a job's seq is its newest event's
    conn.execute("INSERT INTO marks VALUES ('swept', ?) ON CONFLICT (name)"
                 " DO UPDATE SET value = max(value, excluded.value)", (newest,))
    return newest


_PRUNE_DEDUPE = ("DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe"
                 f" WHERE seen_at < unixepoch() - ? LIMIT {PRUNE_BATCH})")
_PRUNE_DELIVERIES = ("DELETE FROM deliveries WHERE n IN (SELECT n FROM deliveries"
                     " WHERE status != 'pending' AND created_at < unixepoch() - ?"
                     f" LIMIT {PRUNE_BATCH})")


def _prune(conn: sqlite3.Connection, sql: str, older: float) -> int:
    """One step of a prune: rows older than `older` seconds."""
    return conn.execute(sql, (older,)).rowcount


def _probe(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR REPLACE INTO health VALUES ('written', ?)", (time.time(),))


def _max_seq(conn: sqlite3.Connection) -> int:
    # AUTOINCREMENT's own counter too, so a seq is never handed out twice.
    row = conn.execute("SELECT max(coalesce((SELECT max(seq) FROM events), 0),"
                       " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))"
                       ).fetchone()
    return int(row[0])


def _where(query: JobQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("provider", query.provider), ("state", query.state),
                          ("external_id", query.external_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.terminal is not None:
        clauses.append("terminal = ?")
        params.append(int(query.terminal))
    if query.topic is not None:
        clauses.append("id IN (SELECT job_id FROM job_topics WHERE topic = ?)")
        params.append(query.topic)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
