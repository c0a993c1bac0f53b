"""Retention on SQLite: 100,000 finished jobs (two events each) written through the store in
bulk, then one sweep with a retention shorter than their age. Prints the database's size
(file + WAL, after a checkpoint) before and after, the sweep's duration, the longest one
batch held the writer, and the slowest webhook-sized write made meanwhile (what a webhook
waits for while retention runs).

    python tests/benchmarks/bench_retention.py [--jobs 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from relay.models import Job, Source, State
from relay.store import Store
from relay.store.retention import BATCH
from relay.store.sqlite import SQLiteStore

AT = "2026-01-01T00:00:00.000Z"


def size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def write_jobs(store: Store, count: int) -> None:
    async def one(n: int) -> None:
        job = Job(f"job_{n:08d}", "gen", "generation", f"ext-{n}", State.RUNNING,
                  topics=(f"job:job_{n:08d}", "provider:gen"), created_at=AT, updated_at=AT,
                  version=1)
        await store.apply("gen", job.external_id, lambda _: job, source=Source.WEBHOOK,
                          received_at=AT)
        done = job.replace(state=State.SUCCEEDED, progress=1.0, finished_at=AT, version=2)
        await store.apply("gen", job.external_id, lambda _: done, source=Source.WEBHOOK,
                          received_at=AT)

    for start in range(0, count, 2000):
        await asyncio.gather(*(one(n) for n in range(start, min(start + 2000, count))))


async def probe(store: Store, stop: asyncio.Event) -> float:
    """Webhook-sized writes one after another until `stop`; the slowest one's seconds."""
    slowest, n = 0.0, 0
    while not stop.is_set():
        n += 1
        job = Job(f"probe_{n}", "gen", "generation", f"probe-{n}", State.RUNNING, version=1)
        started = time.perf_counter()
        await store.apply("gen", job.external_id, lambda _, job=job: job,
                          source=Source.WEBHOOK, received_at=AT)
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0.005)
    return slowest


async def main(jobs: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "relay.db"
        store = SQLiteStore(str(path))
        await store.open()
        started = time.perf_counter()
        await write_jobs(store, jobs)
        print(f"wrote {jobs:,} finished jobs ({2 * jobs:,} events) in "
              f"{time.perf_counter() - started:.1f} s")
        print(f"size before the sweep: {size(path) / 2**20:8.1f} MiB")

        stop = asyncio.Event()
        probing = asyncio.create_task(probe(store, stop))
        held, deleted, started = [], 0, time.perf_counter()
        while True:  # what Retention.sweep does, timing each batch
            batch_started = time.perf_counter()
            count = await store.sweep(time.time() - 60, BATCH)
            held.append(time.perf_counter() - batch_started)
            deleted += count
            if count < BATCH:
                break
            await asyncio.sleep(0)
        swept = time.perf_counter() - started
        compact_started = time.perf_counter()
        await store.compact()
        compacted = time.perf_counter() - compact_started
        stop.set()
        slowest = await probing
        await store.close()
        print(f"swept {deleted:,} jobs in {swept:.1f} s, {len(held)} batches of {BATCH}; "
              f"longest batch {max(held) * 1000:.0f} ms, median "
              f"{sorted(held)[len(held) // 2] * 1000:.0f} ms")
        print(f"compacted (old keys pruned, free pages given back) in {compacted:.1f} s")
        print(f"slowest webhook-sized write during sweep and compaction: "
              f"{slowest * 1000:.0f} ms")
        print(f"size after the sweep:  {size(path) / 2**20:8.1f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().jobs))
