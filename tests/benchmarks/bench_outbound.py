"""Outbound webhooks: how fast a relay process delivers to a fast local consumer.

    .venv/bin/python tests/benchmarks/bench_outbound.py
    .venv/bin/python tests/benchmarks/bench_outbound.py --live 3000 --backlog 10000

Starts `python -m relay serve` on a free port with a SQLite store in a temporary directory,
one `generation` provider and one `[[subscriptions]]` entry (topics `*`) pointing at a consumer
in this process: a raw asyncio HTTP/1.1 server that answers 200 at once and notes when each
`webhook-id` arrived (httpx or uvicorn here would cost the 2-core machine more than the relay).

1. Live: `--live` signed webhooks, one job each, posted from `--clients` connections as fast
   as the relay takes them; prints deliveries per second (first post to last delivery) and
   the latency from each webhook's 202 to its delivery (p50, p99).
2. Backlog: the relay is stopped, `--backlog` events are written straight into its SQLite
   file (the store adds a pending delivery with each, as it does for webhooks), and the relay
   is started again; prints how long the backlog took to drain, from the relay's start and
   from its first delivery, and the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import cpu_seconds, free_port, percentile, wait_ready

SECRET = "bench-webhook-secret"
WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PROVIDER = "bench"


# -- the consumer ----------------------------------------------------------------------------

@dataclass
class Consumer:
    arrived: dict[str, float] = field(default_factory=dict)  # webhook-id -> perf_counter
    requests: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                webhook_id = await read_request(reader)
                self.requests += 1
                self.arrived.setdefault(webhook_id, time.perf_counter())
                if len(self.arrived) >= self.expected:
                    self.done.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the relay closed the connection, or the benchmark is over
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> str:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return headers["webhook-id"]


# -- the relay under test --------------------------------------------------------------------


def write_config(workdir: Path, consumer_port: int) -> Path:
    config = workdir / "relay.toml"
    config.write_text(
        f'[server]\nstore = "sqlite:///{workdir}/relay.db"\nallow_private_targets = true\n\n'
        f'[providers.{PROVIDER}]\nschema = "generation"\nwebhook_secret = "{SECRET}"\n\n'
        f'[[subscriptions]]\nurl = "http://127.0.0.1:{consumer_port}/hook"\ntopics = ["*"]\n'
        f'secret = "{WHSEC}"\n')
    return config


@contextlib.contextmanager
def relay_process(workdir: Path, config: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (workdir / "relay.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port",
             str(port), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, process, workdir / "relay.log")
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)




# -- 1. live ---------------------------------------------------------------------------------

def signed(job: str) -> tuple[bytes, str]:
    body = json.dumps({"id": job, "status": "PROCESSING", "progress_percent": 50},
                      separators=(",", ":")).encode()
    stamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={stamp},v1={digest}"


async def post_all(url: str, count: int, clients: int) -> dict[str, float]:
    """Posts `count` webhooks; the moment each was acknowledged, by its cursor."""
    acknowledged: dict[str, float] = {}
    jobs = iter(range(count))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for job in jobs:
                body, signature = signed(f"live-{job}")
                answer = await http.post(f"/hooks/{PROVIDER}", content=body, headers={
                    "content-type": "application/json", "sync-signature": signature})
                acknowledged[answer.json()["cursor"]] = time.perf_counter()

    await asyncio.gather(*(client() for _ in range(clients)))
    return acknowledged


async def live(workdir: Path, config: Path, consumer: Consumer, count: int, clients: int,
               timeout: float) -> None:
    consumer.expected = count
    with relay_process(workdir, config) as (url, pid):
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        acknowledged = await post_all(url, count, clients)
        posted = time.perf_counter() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.done.wait(), timeout)
        cpu = cpu_seconds(pid) - cpu
    got = {cursor: consumer.arrived[cursor] for cursor in acknowledged
           if cursor in consumer.arrived}
    if not got:
        print("live: nothing was delivered")
        return
    elapsed = max(got.values()) - started
    latencies = sorted(got[c] - acknowledged[c] for c in got)
    print(f"live: {count} webhooks posted in {posted:.2f} s ({count / posted:.0f}/s); "
          f"{len(got)} delivered in {elapsed:.2f} s: {len(got) / elapsed:.0f} deliveries/s; "
          f"202 -> delivery p50 {1000 * percentile(latencies, 0.50):.0f} ms, "
          f"p99 {1000 * percentile(latencies, 0.99):.0f} ms; relay CPU {1000 * cpu / count:.2f} ms "
          f"per webhook and its delivery; repeats {consumer.requests - len(consumer.arrived)}")



# -- 2. backlog ------------------------------------------------------------------------------

async def fill_backlog(db: Path, count: int) -> None:
    """`count` new jobs written straight into the store: each adds a pending delivery."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from relay.models import Job, Source
    from relay.store.sqlite import SQLiteStore

    store = SQLiteStore(str(db))
    await store.open()
    try:
        def created(n: int) -> Job:
            job_id = f"backlog-{n}"
            return Job(id=job_id, provider=PROVIDER, schema="generation", external_id=job_id,
                       version=1, topics=(f"job:{job_id}", f"provider:{PROVIDER}"))

        for start in range(0, count, 1000):
            await asyncio.gather(*(
                store.apply(PROVIDER, f"backlog-{n}", lambda _, n=n: created(n),
                            source=Source.API, received_at="2026-01-01T00:00:00.000Z")
                for n in range(start, min(count, start + 1000))))
    finally:
        await store.close()


async def backlog(workdir: Path, config: Path, consumer: Consumer, count: int,
                  timeout: float) -> None:
    with relay_process(workdir, config):
        pass  # registers the subscription in the database, then stops
    await fill_backlog(workdir / "relay.db", count)
    consumer.arrived.clear()
    consumer.requests = 0
    consumer.done = asyncio.Event()
    consumer.expected = count
    started = time.perf_counter()
    with relay_process(workdir, config) as (_, pid):
        ready = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.done.wait(), timeout)
        cpu = cpu_seconds(pid)
    times = sorted(consumer.arrived.values())
    if len(times) < count:
        print(f"backlog: only {len(times)} of {count} delivered within {timeout:g} s")
        return
    drained, first = times[-1] - started, times[-1] - times[0]
    print(f"backlog: {count} pending deliveries drained {drained:.2f} s after the relay was "
          f"started (ready after {ready - started:.2f} s), {first:.2f} s from the first "
          f"delivery to the last: {count / first:.0f} deliveries/s; relay CPU "
          f"{1000 * cpu / count:.2f} ms per delivery (startup included)")


async def main(args: argparse.Namespace) -> None:
    consumer = Consumer()
    server = await asyncio.start_server(consumer.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-outbound-") as tmp:
        workdir = Path(tmp)
        config = write_config(workdir, port)
        if args.live:
            await live(workdir, config, consumer, args.live, args.clients, args.timeout)
        if args.backlog:
            await backlog(workdir, config, consumer, args.backlog, args.timeout)
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=3000, help="webhooks to post (0: skip)")
    parser.add_argument("--clients", type=int, default=16, help="posting connections")
    parser.add_argument("--backlog", type=int, default=10_000,
                        help="pending deliveries to drain (0: skip)")
    parser.add_argument("--timeout", type=float, default=300.0)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(parser.parse_args()))
