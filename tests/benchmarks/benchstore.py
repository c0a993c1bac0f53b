"""The store a benchmark runs the relay on: `--store sqlite` (a file in the run's temporary
directory) or `--store redis` (the Redis at 127.0.0.1:6379, under a key prefix of the run's
own, deleted afterwards). Imported by the bench_*.py scripts next to it."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

REDIS = "redis://127.0.0.1:6379/0"
KINDS = ("sqlite", "redis")


@dataclass(frozen=True)
class BenchStore:
    kind: str
    url: str
    path: Path | None = None  # the SQLite file
    prefix: str | None = None  # the Redis key prefix

    def webhook_events(self) -> int:
        """Events stored from webhooks (read after the relays stopped)."""
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                return int(conn.execute("SELECT count(*) FROM events WHERE source = 'webhook'")
                           .fetchone()[0])
        return _redis_webhook_events(f"{self.prefix}:events")


@contextlib.contextmanager
def bench_store(kind: str, workdir: Path) -> Iterator[BenchStore]:
    if kind == "sqlite":
        path = workdir / "relay.db"
        yield BenchStore(kind, f"sqlite:///{path}", path=path)
        return
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"--store redis needs a Redis at 127.0.0.1:6379: {exc}") from None
    try:
        yield BenchStore(kind, f"{REDIS}?prefix={prefix}", prefix=prefix)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start:start + 1000])
        client.close()


def _redis_webhook_events(stream: str) -> int:
    client = redis.Redis.from_url(REDIS, decode_responses=True)
    count, start = 0, "-"
    try:
        while True:
            entries = client.xrange(stream, start, "+", count=10_000)
            count += sum(1 for _, fields in entries if fields.get("s") == "webhook")
            if len(entries) < 10_000:
                return count
            start = f"({entries[-1][0]}"
    finally:
        client.close()
