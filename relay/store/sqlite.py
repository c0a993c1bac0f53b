"""The SQLite backend: the embedded default (`sqlite:///PATH`, one process).

Writes go through one writer thread that takes every `apply` waiting in its queue and commits
them in one transaction (group commit): concurrent webhooks share an fsync instead of queueing
behind one each, and each caller is answered only after that commit. The database is in WAL
mode with `synchronous=FULL`, so a committed update survives a crash or power loss. Reads use
their own connections (one per thread), which WAL lets run beside the writer.

Cursors are the event's `seq`, in decimal.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.errors import InvalidCursor, StoreError
from relay.models import Event, Job, Source
from relay.store import Applied, Change, JobQuery, Store

T = TypeVar("T")

MAX_BATCH = 1000
DEDUPE_DAYS = 7

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
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
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
    def __init__(self, path: str) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-writer")
        self._write_conn: sqlite3.Connection | None = None
        self._readers = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._queue: asyncio.Queue[tuple[_Write, asyncio.Future[Applied]] | None] = (
            asyncio.Queue())
        self._write_task: asyncio.Task[None] | None = None
        self._last_seq = 0
        self._changed = asyncio.Condition()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
        path = url.removeprefix("sqlite:///")
        if not path:
            raise StoreError(f"no database path in {url!r}")
        return cls(path)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        self._last_seq = await self._on_writer(self._open_writer)
        self._write_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    def _open_writer(self) -> int:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        conn.execute("DELETE FROM dedupe WHERE seen_at < unixepoch() - ?", (DEDUPE_DAYS * 86400,))
        self._write_conn = conn
        row = conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return conn

    async def close(self) -> None:
        if self._write_task is not None:
            self._queue.put_nowait(None)
            await self._write_task
            self._write_task = None
        for conn in [self._write_conn, *self._read_conns]:
            if conn is not None:
                conn.close()
        self._writer.shutdown(wait=True)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- writes ---------------------------------------------------------------------------

    async def apply(self, provider: str, external_id: str, change: Change, *,
                    source: Source, received_at: str, dedupe_key: str | None = None) -> Applied:
        if self._write_task is None:
            raise StoreError("the store is not open")
        done: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        write = _Write(provider, external_id, change, source, received_at, dedupe_key)
        self._queue.put_nowait((write, done))
        return await done

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
        try:
            results = await self._on_writer(self._commit, [write for write, _ in items])
        except StoreError as exc:
            results = [exc] * len(items)
        for (_, done), result in zip(items, results, strict=True):
            if done.cancelled():
                continue
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)
        await self._notify()

    def _commit(self, writes: list[_Write]) -> list[Applied | BaseException]:
        conn = self._write_conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [self._apply_one(conn, write) for write in writes]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"SQLite write failed: {exc}") from exc
        for result in results:
            if isinstance(result, Applied) and result.event is not None:
                self._last_seq = max(self._last_seq, int(result.event.cursor))
        return results

    def _apply_one(self, conn: sqlite3.Connection, write: _Write) -> Applied | BaseException:
        row = conn.execute("SELECT job FROM jobs WHERE provider = ? AND external_id = ?",
                           (write.provider, write.external_id)).fetchone()
        current = _job(row[0]) if row else None
        if write.dedupe_key is not None:
            if conn.execute("SELECT 1 FROM dedupe WHERE key = ?",
                            (write.dedupe_key,)).fetchone():
                return Applied(current, None, duplicate=True)
            conn.execute("INSERT INTO dedupe VALUES (?, unixepoch())", (write.dedupe_key,))
        try:
            new = write.change(current)
        except Exception as exc:  # the caller's pure function failed: its own error, not ours
            return exc
        if new is None:
            return Applied(current, None)
        return Applied(new, self._insert(conn, write, current, new))

    def _insert(self, conn: sqlite3.Connection, write: _Write, current: Job | None,
                new: Job) -> Event:
        body = json.dumps(new.to_dict(), separators=(",", ":"))
        seq = conn.execute(
            "INSERT INTO events (job_id, source, received_at, job) VALUES (?, ?, ?, ?)",
            (new.id, write.source.value, write.received_at, body)).lastrowid
        conn.execute(
            "INSERT INTO jobs (id, provider, external_id, state, terminal, seq, job)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
            " terminal = excluded.terminal, seq = excluded.seq, job = excluded.job",
            (new.id, new.provider, new.external_id, new.state.value, new.terminal, seq, body))
        if current is None or current.topics != new.topics:
            conn.execute("DELETE FROM job_topics WHERE job_id = ?", (new.id,))
            conn.executemany("INSERT OR IGNORE INTO job_topics VALUES (?, ?)",
                             [(topic, new.id) for topic in new.topics])
        return Event(str(seq), new, write.source, write.received_at)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def secret(self, name: str, generate: Callable[[], str]) -> str:
        def keep(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (name, generate()))
            return str(conn.execute("SELECT value FROM secrets WHERE name = ?",
                                    (name,)).fetchone()[0])

        assert self._write_conn is not None
        return await self._on_writer(keep, self._write_conn)

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    # -- reads ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        row = await self._read(lambda c: c.execute(
            "SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return _job(row[0]) if row else None

    async def find(self, provider: str, external_id: str) -> Job | None:
        row = await self._read(lambda c: c.execute(
            "SELECT job FROM jobs WHERE provider = ? AND external_id = ?",
            (provider, external_id)).fetchone())
        return _job(row[0]) if row else None

    async def list_jobs(self, query: JobQuery) -> tuple[list[Job], int]:
        where, params = _where(query)

        def run(conn: sqlite3.Connection) -> tuple[list[Job], int]:
            total = conn.execute(f"SELECT count(*) FROM jobs{where}", params).fetchone()[0]
            rows = conn.execute(f"SELECT job FROM jobs{where} ORDER BY n DESC LIMIT ? OFFSET ?",
                                [*params, query.limit, query.offset]).fetchall()
            return [_job(row[0]) for row in rows], int(total)

        return await self._read(run)

    async def latest(self, topics: Collection[str], limit: int = 100) -> list[Event]:
        topics = list(topics)
        marks = ", ".join("?" * len(topics))
        rows = await self._read(lambda c: c.execute(
            "SELECT e.seq, e.source, e.received_at, e.job FROM events e WHERE e.seq IN"
            " (SELECT seq FROM jobs WHERE id IN"
            f"  (SELECT job_id FROM job_topics WHERE topic IN ({marks}))"
            " ORDER BY n DESC LIMIT ?) ORDER BY e.seq", [*topics, limit]).fetchall())
        return [_event(row) for row in rows]

    async def history(self, job_id: str, limit: int = 1000) -> list[Event]:
        rows = await self._read(lambda c: c.execute(
            "SELECT seq, source, received_at, job FROM events WHERE job_id = ?"
            " ORDER BY seq LIMIT ?", (job_id, limit)).fetchall())
        return [_event(row) for row in rows]

    async def read_since(self, cursor: str | None, *, topics: Collection[str] | None = None,
                         limit: int = 500) -> list[Event]:
        after = self._seq(cursor)
        sql = "SELECT seq, source, received_at, job FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if topics is not None:
            topics = list(topics)
            marks = ", ".join("?" * len(topics))
            sql += f" AND job_id IN (SELECT job_id FROM job_topics WHERE topic IN ({marks}))"
            params += topics
        sql += " ORDER BY seq LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, [*params, limit]).fetchall())
        return [_event(row) for row in rows]

    async def last_cursor(self) -> str | None:
        return str(self._last_seq) if self._last_seq else None

    async def wait(self, cursor: str | None, timeout: float) -> None:
        after = self._seq(cursor)
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._last_seq > after), timeout)
            except TimeoutError:
                pass

    def _seq(self, cursor: str | None) -> int:
        if cursor is None:
            return 0
        if not cursor.isdigit() or len(cursor) > 19 or int(cursor) > self._last_seq:
            raise InvalidCursor(cursor)
        return int(cursor)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(self._with_reader, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc

    def _with_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            self._readers.conn = conn
            self._read_conns.append(conn)
        return fn(conn)


def _where(query: JobQuery) -> tuple[str, list[Any]]:
    clauses, params = [], []
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


def _job(body: str) -> Job:
    return Job.from_dict(json.loads(body))


def _event(row: tuple[Any, ...]) -> Event:
    seq, source, received_at, body = row
    return Event(str(seq), _job(body), Source(source), received_at)

