"""The connections to one SQLite file, shared by the store and its outbox: one writer
connection with a thread of its own, and a pool of reader threads with a connection each,
which WAL lets read beside the writer. `sqlite3.Error` ends here as `StoreError`.

The writer connection belongs to one caller at a time (`writing`, or `on_writer` for one
step). Sweeps, compaction, the outbox's writes and any wait for another process's write lock
run on the writer thread; the store's batches of webhooks run their transaction on the event
loop, COMMIT's fsync included (relay.store.sqlite.store says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from relay.errors import StoreError

T = TypeVar("T")

READERS = 4
BUSY_TIMEOUT_MS = 30_000
"""How long a connection waits for another's lock before failing."""


class Database:
    def __init__(self, path: str) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-writer")
        # Reads run on a pool of their own, so close() can wait for the ones in flight before
        # closing their connections (a thread still reading a closed one crashes the process).
        self._reader_pool = ThreadPoolExecutor(READERS, thread_name_prefix="relay-sqlite-reader")
        self._write_conn: sqlite3.Connection | None = None
        self._writing = asyncio.Lock()
        self._readers = threading.local()
        self._read_conns: list[sqlite3.Connection] = []

    async def open(self, setup: Callable[[sqlite3.Connection], T]) -> T:
        """Connect the writer and run `setup` on its connection (schema, recovery)."""
        def run() -> T:
            self._write_conn = self.connect()
            try:
                return setup(self._write_conn)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open SQLite database {self.path!r} for writing: "
                                 f"{exc}") from exc

        return await self.on_writer(run)

    def connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return conn

    @property
    def writer(self) -> sqlite3.Connection:
        """The writer's connection: touch it only inside `on_writer` or `writing`."""
        if self._write_conn is None:
            raise StoreError("the store is not open")
        return self._write_conn

    async def on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the writer thread, the writer connection its alone."""
        async with self._writing:
            return await self._on_thread(fn, *args)

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """The writer connection, this caller's alone until the block ends; what it yields
        runs a step on the writer thread."""
        async with self._writing:
            yield self._on_thread

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` in one write transaction, on the writer thread."""
        def run() -> T:
            conn = self.writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return await self.on_writer(run)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._reader_pool, self._with_reader, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc
        except RuntimeError as exc:  # the pool is shut down: the store is closing
            raise StoreError("the store is closed") from exc

    def _with_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self.connect()
            self._readers.conn = conn
            self._read_conns.append(conn)
        return fn(conn)

    def close(self) -> None:
        """Wait for the reads and writes in flight, then close every connection."""
        self._reader_pool.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        for conn in [self._write_conn, *self._read_conns]:
            if conn is not None:
                conn.close()
