"""Webhook ingest throughput: real relay processes, N concurrent clients, signed webhooks.

    .venv/bin/python tests/benchmarks/bench_ingest.py --clients 64 --seconds 10
    .venv/bin/python tests/benchmarks/bench_ingest.py --store redis --instances 2

Starts `python -m relay serve` on a free port with a SQLite store in a temporary directory
(synchronous=FULL: every 202 is committed), then posts Sync-Signature-signed `generation`
webhooks from `--clients` concurrent keep-alive connections, spread over `--procs` client
processes. Each job gets five updates (PROCESSING at 0/25/50/75 %, then COMPLETED), so the mix
holds both new jobs and updates of tracked ones. It prints accepted webhooks per second and
latency percentiles, then stops the relay and counts the webhook events in the store, so
the figure is of durably stored webhooks, not of answers.

`--store redis` runs the relay on the Redis at 127.0.0.1:6379 under a key prefix of its own
(deleted afterwards); `--instances N` (Redis only) starts N relay processes and spreads the
client connections over them.

`--compare` runs, back to back with the same client: the ceiling (ceiling_app.py: a Starlette
route that parses the JSON and answers 202, storing nothing), then the relay on SQLite, on
Redis with one instance and with two, and prints one table: webhooks/s and their share of the
ceiling's, relay CPU per webhook (and its ratio to the ceiling's CPU per request), Redis CPU
per webhook (from its `INFO cpu`), and p50/p99 acknowledge latency. Then Redis again, x1
offered R webhooks/s and x2 offered 2R (`--rate`; R is 40 % of what x1 took): the same load
per instance, which is what adding an instance with its share of the traffic means. Run as
fast as answered, x2 measures two relays, Redis and the client preempting each other on a
small machine, and a relay's CPU per webhook falls as its load rises (more requests share
each wake-up and each script call), so x2 at the same total load is no fair measure either.
Last, the x2/x1 ratio of relay CPU per webhook, both ways. `--rounds N` runs the sequence N
times and prints the median of each column and each round's ratios: on a shared machine whose
speed drifts by a fifth within minutes, one round is not a measurement.

The default client speaks HTTP/1.1 over raw asyncio streams: on a small machine the client
competes with the relay for CPU, and httpx costs several times more per request than the
relay's own parsing. `--client httpx` measures with httpx.AsyncClient instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from benchstore import KINDS, REDIS, bench_store
from common import cpu_seconds, free_port, percentile, wait_ready

SECRET = "bench-webhook-secret"
PROVIDER = "bench"
STEPS = ("PROCESSING:0", "PROCESSING:25", "PROCESSING:50", "PROCESSING:75", "COMPLETED:100")


@dataclass
class Tally:
    accepted: int = 0
    other: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0

    def add(self, other: Tally) -> None:
        self.accepted += other.accepted
        self.cpu += other.cpu
        self.errors += other.errors
        self.latencies += other.latencies
        for status, count in other.other.items():
            self.other[status] = self.other.get(status, 0) + count


# -- the relay under test ------------------------------------------------------------------


Relay = tuple[str, subprocess.Popen[bytes]]


@contextlib.contextmanager
def relay_processes(workdir: Path, store: str, count: int, log_level: str
                    ) -> Iterator[list[Relay]]:
    config = workdir / "relay.toml"
    config.write_text(
        f'[server]\nstore = "{store}"\n\n'
        f'[providers.{PROVIDER}]\nschema = "generation"\nwebhook_secret = "{SECRET}"\n')
    relays: list[Relay] = []
    try:
        for index in range(count):
            port = free_port()
            with (workdir / f"relay-{index}.log").open("wb") as log:
                relays.append((f"http://127.0.0.1:{port}", subprocess.Popen(
                    [sys.executable, "-m", "relay", "serve", "--config", str(config),
                     "--port", str(port), "--log-level", log_level],
                    stdout=log, stderr=subprocess.STDOUT)))
        for index, (url, process) in enumerate(relays):
            wait_ready(url, process, workdir / f"relay-{index}.log")
        yield relays
    finally:
        for _, process in relays:
            if process.poll() is None:
                process.terminate()
        for _, process in relays:
            process.wait(30)




# -- the clients -----------------------------------------------------------------------------

def signed(job: str, step: str) -> tuple[bytes, str]:
    status, percent = step.split(":")
    body = json.dumps({"id": job, "status": status, "progress_percent": int(percent)},
                      separators=(",", ":")).encode()
    stamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={stamp},v1={digest}"


def webhooks(name: str) -> Iterator[tuple[bytes, str]]:
    job = 0
    while True:
        job += 1
        for step in STEPS:
            yield signed(f"{name}-{job}", step)


def raw_request(port: int, body: bytes, signature: str) -> bytes:
    head = (f"POST /hooks/{PROVIDER} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\nsync-signature: {signature}\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Pace:
    """A client's sending times at a set rate: one request every `interval` seconds, or as
    soon as the last one is answered when that is later (a slow server gets no backlog)."""

    def __init__(self, interval: float, first: float) -> None:
        self.interval = interval
        self.due = first

    async def wait(self) -> None:
        now = time.perf_counter()
        if self.due > now:
            await asyncio.sleep(self.due - now)
        self.due = max(self.due, now) + self.interval


async def raw_client(port: int, name: str, stop_at: float, tally: Tally,
                     pace: Pace | None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for body, signature in webhooks(name):
            if pace is not None:
                await pace.wait()
            if time.perf_counter() >= stop_at:
                return
            started = time.perf_counter()
            writer.write(raw_request(port, body, signature))
            status = await read_response(reader)
            record(tally, status, time.perf_counter() - started)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines
                  if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def httpx_client(url: str, name: str, stop_at: float, tally: Tally,
                       pace: Pace | None) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for body, signature in webhooks(name):
            if pace is not None:
                await pace.wait()
            if time.perf_counter() >= stop_at:
                return
            started = time.perf_counter()
            response = await client.post(f"/hooks/{PROVIDER}", content=body, headers={
                "content-type": "application/json", "sync-signature": signature})
            record(tally, response.status_code, time.perf_counter() - started)


def record(tally: Tally, status: int, latency: float) -> None:
    tally.latencies.append(latency)
    if status == 202:
        tally.accepted += 1
    else:
        tally.other[status] = tally.other.get(status, 0) + 1


async def run_clients(urls: list[str], kind: str, clients: int, seconds: float, prefix: str,
                      rate: float | None) -> Tally:
    """`clients` connections posting for `seconds`, as fast as they are answered, or
    together at `rate` webhooks/s."""
    now = time.perf_counter()
    stop_at = now + seconds
    interval = clients / rate if rate else 0.0
    paces = [Pace(interval, now + interval * i / clients) if rate else None
             for i in range(clients)]
    tallies = [Tally() for _ in range(clients)]
    targets = [urls[i % len(urls)] for i in range(clients)]  # spread over the instances
    tasks = [raw_client(int(url.rsplit(":", 1)[1]), f"{prefix}-{i}", stop_at, t, pace)
             if kind == "raw" else httpx_client(url, f"{prefix}-{i}", stop_at, t, pace)
             for i, (url, t, pace) in enumerate(zip(targets, tallies, paces, strict=True))]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    total = Tally()
    for tally, result in zip(tallies, results, strict=True):
        total.add(tally)
        total.errors += isinstance(result, BaseException)
    return total


def client_process(urls: list[str], kind: str, clients: int, seconds: float, prefix: str,
                   rate: float | None, out: multiprocessing.Queue[Tally]) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    tally = asyncio.run(run_clients(urls, kind, clients, seconds, prefix, rate))
    tally.cpu = time.process_time()
    out.put(tally)


def drive(urls: list[str], args: argparse.Namespace) -> tuple[Tally, float]:
    out: multiprocessing.Queue[Tally] = multiprocessing.Queue()
    shares = [args.clients // args.procs + (i < args.clients % args.procs)
              for i in range(args.procs)]
    rate = getattr(args, "rate", None)
    workers = [multiprocessing.Process(target=client_process, args=(
        urls, args.client, share, args.seconds, f"p{i}-{os.getpid()}",
        rate and rate * share / args.clients, out))
        for i, share in enumerate(shares)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    total = Tally()
    for _ in workers:
        total.add(out.get())
    elapsed = time.perf_counter() - started
    for worker in workers:
        worker.join()
    return total, elapsed


# -- the report ------------------------------------------------------------------------------


def report(args: argparse.Namespace, total: Tally, elapsed: float, stored: int) -> None:
    print(f"store: {args.store}, {args.instances} relay instance(s)")
    print(f"clients: {args.clients} over {args.procs} {args.client} client process(es), "
          f"{args.seconds:g} s requested, {elapsed:.2f} s measured (incl. client start)")
    print(f"accepted (202): {total.accepted}   other statuses: {total.other or '-'}   "
          f"connection errors: {total.errors}")
    print(f"stored webhook events after shutdown: {stored}"
          f" ({'ok' if stored >= total.accepted else 'LOST ACKNOWLEDGED WEBHOOKS'})")
    print(f"throughput: {total.accepted / args.seconds:,.0f} accepted webhooks/s")
    lat = total.latencies
    print(f"latency ms: p50 {percentile(lat, 0.50) * 1000:.1f}  "
          f"p90 {percentile(lat, 0.90) * 1000:.1f}  p99 {percentile(lat, 0.99) * 1000:.1f}  "
          f"max {max(lat, default=float('nan')) * 1000:.1f}  "
          f"mean {statistics.fmean(lat) * 1000 if lat else float('nan'):.1f}")


@dataclass
class Measured:
    label: str
    total: Tally
    seconds: float
    cpu: float  # the server processes'
    redis_cpu: float = 0.0
    stored: int | None = None

    @property
    def rate(self) -> float:
        return self.total.accepted / self.seconds

    def per_webhook(self, cpu: float) -> float:
        return cpu / self.total.accepted * 1e6 if self.total.accepted else float("nan")


def redis_cpu() -> float:
    info = redis.Redis.from_url(REDIS).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(label: str, processes: list[subprocess.Popen[bytes]], urls: list[str],
            args: argparse.Namespace) -> Measured:
    pids = [process.pid for process in processes]
    cpu_before, redis_before = sum(map(cpu_seconds, pids)), redis_cpu()
    total, _ = drive(urls, args)
    return Measured(label, total, args.seconds, sum(map(cpu_seconds, pids)) - cpu_before,
                    redis_cpu() - redis_before)


@contextlib.contextmanager
def ceiling_process(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with (workdir / "ceiling.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent),
             "ceiling_app:app", "--port", str(port), "--no-access-log", "--loop", "uvloop",
             "--http", "httptools", "--log-level", "warning"], stdout=log,
            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.05)
        yield url, process
    finally:
        process.terminate()
        process.wait(30)


PACED_SHARE = 0.4
"""The paced runs offer each instance this share of what Redis x1 took in the same round."""


def compare(args: argparse.Namespace) -> None:
    rounds: list[list[Measured]] = []
    for _ in range(args.rounds):
        rounds.append(compare_once(args))
        if args.rounds > 1:
            print(f"round {len(rounds)}:")
        print_table([Row.of(rounds[-1:], [run]) for run in rounds[-1]])
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds:")
        print_table([Row.of(rounds, list(column)) for column in zip(*rounds, strict=True)])
    for what, x1, x2 in (("as fast as answered", 2, 3), ("at R per instance", 4, 5)):
        ratios = [runs[x2].per_webhook(runs[x2].cpu) / runs[x1].per_webhook(runs[x1].cpu)
                  for runs in rounds]
        print(f"relay CPU per webhook, redis x2 / x1, {what}, each round: "
              f"{' '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")


def compare_once(args: argparse.Namespace) -> list[Measured]:
    """The ceiling, SQLite, Redis x1 and x2 as fast as the clients are answered; then Redis
    x1 offered R webhooks/s and x2 offered 2R (R: PACED_SHARE of what x1 took), the same
    load per instance, with the cores to spare that the first x2 lacks (two relays, Redis
    and the client on two cores preempt each other)."""
    runs: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        with ceiling_process(Path(tmp)) as (url, process):
            runs.append(measure("ceiling", [process], [url], args))
        for label, kind, count in (("sqlite", "sqlite", 1), ("redis x1", "redis", 1),
                                   ("redis x2", "redis", 2)):
            runs.append(relay_run(Path(tmp), label, kind, count, args))
        share = round(runs[2].rate * PACED_SHARE, -1)
        print(f"R = {share:,.0f} webhooks/s ({PACED_SHARE:.0%} of what redis x1 took)")
        for label, count in (("redis x1 at R", 1), ("redis x2 at 2R", 2)):
            paced = argparse.Namespace(**{**vars(args), "rate": share * count})
            runs.append(relay_run(Path(tmp), label, "redis", count, paced))
    return runs


def relay_run(tmp: Path, label: str, kind: str, count: int, args: argparse.Namespace
              ) -> Measured:
    work = tmp / label.replace(" ", "-")
    work.mkdir()
    with bench_store(kind, work) as store:
        with relay_processes(work, store.url, count, args.log_level) as relays:
            run = measure(label, [p for _, p in relays], [u for u, _ in relays], args)
        run.stored = store.webhook_events()
    return run


@dataclass
class Row:
    """One line of the table: a configuration's figures, the median over its rounds, each
    against the ceiling of the same round."""

    label: str
    rate: float
    of_ceiling: float
    relay_cpu: float  # us per webhook
    x_ceiling: float
    redis_cpu: float
    p50: float  # ms
    p99: float
    lost: bool

    @classmethod
    def of(cls, rounds: list[list[Measured]], runs: list[Measured]) -> Row:
        """`runs`: one configuration's run in each of `rounds` (the ceiling first in each)."""
        def median(values: Iterable[float]) -> float:
            return statistics.median(list(values))

        pairs = [(round_[0], run) for round_, run in zip(rounds, runs, strict=True)]
        return cls(
            runs[0].label, median(run.rate for _, run in pairs),
            median(run.rate / ceiling.rate for ceiling, run in pairs),
            median(run.per_webhook(run.cpu) for _, run in pairs),
            median(run.per_webhook(run.cpu) / ceiling.per_webhook(ceiling.cpu)
                   for ceiling, run in pairs),
            median(run.per_webhook(run.redis_cpu) for _, run in pairs),
            median(percentile(run.total.latencies, 0.5) * 1000 for _, run in pairs),
            median(percentile(run.total.latencies, 0.99) * 1000 for _, run in pairs),
            any(run.stored is not None and run.stored < run.total.accepted for _, run in pairs))


def print_table(rows: list[Row]) -> None:
    print(f"{'':14} {'webhooks/s':>10} {'of ceiling':>10} {'relay CPU/wh':>13} {'x ceiling':>9}"
          f" {'redis CPU/wh':>13} {'p50 ms':>7} {'p99 ms':>7}  stored")
    for row in rows:
        redis = f"{row.redis_cpu:10.0f} us" if "redis" in row.label else ""
        stored = "-" if row.label == "ceiling" else (
            "LOST ACKNOWLEDGED WEBHOOKS" if row.lost else "ok")
        print(f"{row.label:14} {row.rate:10,.0f} {row.of_ceiling:10.0%} "
              f"{row.relay_cpu:10.0f} us {row.x_ceiling:8.2f}x {redis:>13} "
              f"{row.p50:7.1f} {row.p99:7.1f}  {stored}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to post")
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--log-level", default="warning", help="the relay's log level")
    parser.add_argument("--store", choices=KINDS, default="sqlite")
    parser.add_argument("--instances", type=int, default=1, help="relay processes (redis)")
    parser.add_argument("--compare", action="store_true",
                        help="the ceiling app, then SQLite, Redis x1 and Redis x2, in one table")
    parser.add_argument("--rate", type=float, default=None,
                        help="webhooks/s offered, all clients together (default: as fast as "
                             "they are answered)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --compare: run it this many times, and print the medians")
    args = parser.parse_args()
    if args.compare:
        args.procs = max(1, min(args.procs, args.clients))
        compare(args)
        return 0
    if args.instances > 1 and args.store != "redis":
        parser.error("--instances above 1 needs --store redis: SQLite serves one process")
    args.procs = max(1, min(args.procs, args.clients))
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, \
            bench_store(args.store, Path(tmp)) as store:
        with relay_processes(Path(tmp), store.url, args.instances, args.log_level) as relays:
            pids = [process.pid for _, process in relays]
            cpu_before = sum(map(cpu_seconds, pids))
            total, elapsed = drive([url for url, _ in relays], args)
            cpu = sum(map(cpu_seconds, pids)) - cpu_before
        report(args, total, elapsed, store.webhook_events())
        if total.accepted:
            print(f"relay CPU, all instances: {cpu:.2f} s, "
                  f"{cpu / total.accepted * 1e6:.0f} us per accepted"
                  f" webhook ({cpu / elapsed:.0%} of one core); clients' CPU: {total.cpu:.2f} s"
                  f" ({total.cpu / elapsed:.0%} of one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
