"""SSE fan-out: N subscribers on one job against a real relay process, webhooks at a steady rate.

    .venv/bin/python tests/benchmarks/bench_fanout.py --subscribers 1000 --rate 20 --seconds 10
    .venv/bin/python tests/benchmarks/bench_fanout.py --subscribers 1000 --find-max-rate
    .venv/bin/python tests/benchmarks/bench_fanout.py --idle 5000
    .venv/bin/python tests/benchmarks/bench_fanout.py --store redis --instances 2

Starts `python -m relay serve` on a free port with a SQLite store in a temporary directory,
tracks one `generation` job, and opens `--subscribers` SSE streams on it (`/v1/jobs/{id}/events`)
from `--procs` client processes speaking HTTP/1.1 over raw asyncio streams (httpx would cost
the 2-core machine more than the relay does). Once every stream has the job's current state,
it posts signed webhooks at `--rate` per second for `--seconds`, each a change with its own
sequence number in `outputUrl`, then a final COMPLETED, which ends every stream.

Latency is from the moment a webhook's request is written to the moment a subscriber has read
the event's frame (CLOCK_MONOTONIC is shared by all processes), over every (subscriber, event)
pair. Loss is the pairs never received (it must be 0); a subscriber the relay dropped for
falling behind shows up there.

`--store redis` runs the relay on the Redis at 127.0.0.1:6379 under a key prefix of its own
(deleted afterwards); `--instances N` (Redis only) starts N relay processes, opens the
subscribers round-robin over all of them and posts the webhooks to the first, so most frames
cross from one instance to another through Redis.

`--find-max-rate` repeats the run at rising rates, then bisects, for the highest rate whose p99
stays under `--target-p99` (100 ms) with no loss. `--idle N` opens N streams and no webhooks
and prints the relay's resident memory per idle subscriber (VmRSS before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
from benchstore import KINDS, bench_store
from common import cpu_seconds, free_port, percentile, wait_ready

SECRET = "bench-webhook-secret"
PROVIDER = "bench"
MARKER = b"bench.example/"
POSTERS = 16
GRACE = 15.0


# -- the relay under test --------------------------------------------------------------------


@dataclass
class Relays:
    """The relay processes under test: webhooks go to the first; subscribers to all."""

    ports: list[int]
    processes: list[subprocess.Popen[bytes]]

    @property
    def port(self) -> int:
        return self.ports[0]

    def cpu(self) -> float:
        return sum(cpu_seconds(process.pid) for process in self.processes)

    def rss_kib(self) -> int:
        return sum(rss_kib(process.pid) for process in self.processes)


@contextlib.contextmanager
def relay_processes(workdir: Path, store: str, count: int) -> Iterator[Relays]:
    config = workdir / "relay.toml"
    config.write_text(
        f'[server]\nstore = "{store}"\n\n'
        f'[providers.{PROVIDER}]\nschema = "generation"\nwebhook_secret = "{SECRET}"\n')
    relays = Relays([], [])
    try:
        for index in range(count):
            relays.ports.append(free_port())
            with (workdir / f"relay-{index}.log").open("wb") as log:
                relays.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "relay", "serve", "--config", str(config),
                     "--port", str(relays.ports[-1]), "--log-level", "warning"],
                    stdout=log, stderr=subprocess.STDOUT))
        for index, (port, process) in enumerate(zip(relays.ports, relays.processes,
                                                    strict=True)):
            wait_ready(f"http://127.0.0.1:{port}", process, workdir / f"relay-{index}.log")
        yield relays
    finally:
        for process in relays.processes:
            if process.poll() is None:
                process.terminate()
        for process in relays.processes:
            process.wait(30)



def track(port: int, external_id: str) -> str:
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", timeout=10,
                        json={"provider": PROVIDER, "external_id": external_id})
    answer.raise_for_status()
    return str(answer.json()["job"]["id"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")



def raise_open_files_limit(needed: int) -> None:
    """Children (the relay, the client processes) inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"warning: open files limited to {target}; some streams may fail to open")


# -- subscribers (in client processes) -------------------------------------------------------

class Stream:
    """One SSE subscriber on a raw connection: records when each sequence number arrives."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.receipts: list[tuple[int, float]] = []
        self.ended_cleanly = False
        self.current = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(f"GET {self.path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
                           f"accept: text/event-stream\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream refused: {head[:200]!r}")

    async def read(self) -> None:
        assert self._reader is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
            while size := int(await self._reader.readline(), 16):
                frame = await self._reader.readexactly(size + 2)
                self._received(frame, time.monotonic())
            self.ended_cleanly = True
        self.current.set()

    def _received(self, chunk: bytes, now: float) -> None:
        # A chunk holds one frame, or several when the relay catches a subscriber up.
        if chunk.startswith((b"id:", b": ")):
            self.current.set()
        at = chunk.find(MARKER)
        while at >= 0:
            end = chunk.index(b'"', at)
            digits = chunk[at + len(MARKER):end]
            if digits.isdigit():
                self.receipts.append((int(digits), now))
            at = chunk.find(MARKER, end)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass
class Result:
    latencies: array[float] = field(default_factory=lambda: array("d"))
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    unclean: int = 0
    failed_to_open: int = 0

    def add(self, other: Result) -> None:
        self.latencies.extend(other.latencies)
        self.received += other.received
        self.lost += other.lost
        self.duplicates += other.duplicates
        self.unclean += other.unclean
        self.failed_to_open += other.failed_to_open


async def open_streams(ports: list[int], path: str, count: int) -> tuple[list[Stream], int]:
    streams, failed = [], 0
    for start in range(0, count, 250):  # in waves, so the listen backlog never overflows
        wave = [Stream(ports[(start + i) % len(ports)], path)  # round-robin over instances
                for i in range(min(250, count - start))]
        results = await asyncio.gather(*(s.open() for s in wave), return_exceptions=True)
        for stream, result in zip(wave, results, strict=True):
            if isinstance(result, BaseException):
                failed += 1
            else:
                streams.append(stream)
    return streams, failed


def score(streams: list[Stream], posted: dict[int, float], failed: int) -> Result:
    result = Result(failed_to_open=failed)
    for stream in streams:
        seen = set()
        for seq, at in stream.receipts:
            if seq in seen:
                result.duplicates += 1
                continue
            seen.add(seq)
            if seq in posted:
                result.latencies.append(at - posted[seq])
        result.received += len(seen)
        result.lost += len(set(posted) - seen)
        result.unclean += not stream.ended_cleanly
    return result


async def subscribe(ports: list[int], job_id: str, count: int, control: Connection) -> None:
    loop = asyncio.get_running_loop()
    streams, failed = await open_streams(ports, f"/v1/jobs/{job_id}/events", count)
    readers = [asyncio.create_task(s.read()) for s in streams]
    await asyncio.gather(*(s.current.wait() for s in streams))
    control.send(("ready", len(streams)))
    message = await loop.run_in_executor(None, control.recv)  # ("posted", {seq: t}) or "close"
    if message == "close":
        for stream in streams:
            stream.close()
        await asyncio.gather(*readers)
        return
    _, posted = message
    _, pending = await asyncio.wait(readers, timeout=GRACE) if readers else (set(), set())
    for task in pending:
        task.cancel()
    for stream in streams:
        stream.close()
    control.send(score(streams, posted, failed))


def client_process(ports: list[int], job_id: str, count: int, control: Connection) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(subscribe(ports, job_id, count, control))


@contextlib.contextmanager
def clients(ports: list[int], job_id: str, subscribers: int, procs: int
            ) -> Iterator[list[Connection]]:
    shares = [subscribers // procs + (i < subscribers % procs) for i in range(procs)]
    pipes = [multiprocessing.Pipe() for _ in shares]
    workers = [multiprocessing.Process(target=client_process, args=(ports, job_id, share, child))
               for share, (_, child) in zip(shares, pipes, strict=True) if share]
    for worker in workers:
        worker.start()
    try:
        controls = [parent for parent, _ in pipes][:len(workers)]
        opened = sum(control.recv()[1] for control in controls)
        if opened < subscribers:
            print(f"warning: only {opened} of {subscribers} streams opened")
        yield controls
    finally:
        for worker in workers:
            worker.join(GRACE + 30)
            if worker.is_alive():
                worker.kill()


# -- webhooks (in this process) --------------------------------------------------------------

def webhook_request(port: int, external_id: str, status: str, url: str) -> bytes:
    body = json.dumps({"id": external_id, "status": status, "outputUrl": url},
                      separators=(",", ":")).encode()
    stamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    head = (f"POST /hooks/{PROVIDER} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\nsync-signature: t={stamp},v1={digest}\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Poster:
    """Keep-alive connections that post webhooks, each timed from the moment it is written."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())
        self.posted: dict[int, float] = {}
        self.acked = array("d")  # seconds from writing a webhook to its 202
        self.refused = 0

    async def open(self, connections: int) -> None:
        for _ in range(connections):
            self.pool.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def post(self, external_id: str, status: str, seq: int | None) -> None:
        url = f"https://{MARKER.decode()}{'end' if seq is None else seq}"
        request = webhook_request(self.port, external_id, status, url)
        reader, writer = await self.pool.get()
        try:
            if seq is not None:
                self.posted[seq] = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            if seq is not None:
                self.acked.append(time.monotonic() - self.posted[seq])
            if not head.startswith(b"HTTP/1.1 202"):
                self.refused += 1
        finally:
            self.pool.put_nowait((reader, writer))

    def close(self) -> None:
        while not self.pool.empty():
            self.pool.get_nowait()[1].close()


async def post_at_rate(port: int, external_id: str, rate: float, seconds: float) -> Poster:
    poster = Poster(port)
    await poster.open(POSTERS)
    loop = asyncio.get_running_loop()
    start, count = loop.time(), int(rate * seconds)
    tasks = []
    for seq in range(count):
        await asyncio.sleep(max(0.0, start + seq / rate - loop.time()))
        tasks.append(asyncio.create_task(poster.post(external_id, "PROCESSING", seq)))
    await asyncio.gather(*tasks)
    await poster.post(external_id, "COMPLETED", None)  # after every update: ends the streams
    poster.close()
    return poster


# -- runs and reports ------------------------------------------------------------------------

@dataclass
class Round:
    rate: float
    result: Result
    relay_cpu: float
    refused: int
    acked: array[float]

    def p(self, fraction: float) -> float:
        return percentile(self.result.latencies, fraction) * 1000

    @property
    def clean(self) -> bool:
        r = self.result
        return not (r.lost or r.duplicates or r.failed_to_open or r.unclean or self.refused)

    def line(self) -> str:
        r = self.result
        worst = max(r.latencies, default=float("nan")) * 1000
        ack = percentile(self.acked, 0.5) * 1000
        return (f"rate {self.rate:6.1f}/s  p50 {self.p(0.5):6.1f} ms  p99 {self.p(0.99):6.1f} ms"
                f"  max {worst:6.1f} ms  lost {r.lost}/{r.received + r.lost}"
                f"  duplicates {r.duplicates}  (webhook 202 p50 {ack:.1f} ms;"
                f" relay CPU {self.relay_cpu:.1f} s)")



def run_round(relays: Relays, args: argparse.Namespace, rate: float, name: str) -> Round:
    job_id = track(relays.port, name)
    with clients(relays.ports, job_id, args.subscribers, args.procs) as controls:
        cpu = relays.cpu()
        poster = asyncio.run(post_at_rate(relays.port, name, rate, args.seconds))
        cpu = relays.cpu() - cpu
        for control in controls:
            control.send(("posted", poster.posted))
        total = Result()
        for control in controls:
            total.add(control.recv())
    return Round(rate, total, cpu, poster.refused, poster.acked)


def find_max_rate(relays: Relays, args: argparse.Namespace) -> None:
    good: Round | None = None
    rate, bad = args.rate, None
    while bad is None and rate <= args.max_rate:  # double until a rate misses the target
        result = run_round(relays, args, rate, f"rise-{rate:g}")
        print(result.line())
        if result.clean and result.p(0.99) < args.target_p99:
            good, rate = result, rate * 2
        else:
            bad = rate
    low = good.rate if good else 0.0
    while bad is not None and bad - low > max(1.0, low * 0.1):  # then bisect
        mid = (low + bad) / 2
        result = run_round(relays, args, mid, f"bisect-{mid:g}")
        print(result.line())
        if result.clean and result.p(0.99) < args.target_p99:
            good, low = result, mid
        else:
            bad = mid
    if good is None:
        print(f"no rate from {args.rate:g}/s keeps p99 under {args.target_p99:g} ms")
    else:
        print(f"highest rate with p99 < {args.target_p99:g} ms and no loss: "
              f"{good.rate:.1f} updates/s to {args.subscribers} subscribers "
              f"({good.rate * args.subscribers:,.0f} frames/s)")


def measure_idle(relays: Relays, args: argparse.Namespace) -> None:
    job_id = track(relays.port, "idle")
    before = relays.rss_kib()
    with clients(relays.ports, job_id, args.idle, args.procs) as controls:
        after = relays.rss_kib()
        for control in controls:
            control.send("close")
    grown = after - before
    print(f"relay RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with {args.idle} "
          f"idle streams: {grown / args.idle:.1f} KiB per idle subscriber")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="webhooks per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to post")
    parser.add_argument("--procs", type=int, default=2, help="subscriber client processes")
    parser.add_argument("--find-max-rate", action="store_true",
                        help="search for the highest rate whose p99 is under --target-p99")
    parser.add_argument("--target-p99", type=float, default=100.0, help="milliseconds")
    parser.add_argument("--max-rate", type=float, default=5000.0)
    parser.add_argument("--idle", type=int, metavar="N",
                        help="only measure the relay's memory with N idle streams")
    parser.add_argument("--store", choices=KINDS, default="sqlite")
    parser.add_argument("--instances", type=int, default=1, help="relay processes (redis)")
    args = parser.parse_args()
    if args.instances > 1 and args.store != "redis":
        parser.error("--instances above 1 needs --store redis: SQLite serves one process")
    raise_open_files_limit(2 * max(args.subscribers, args.idle or 0) + 1024)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, \
            bench_store(args.store, Path(tmp)) as store, \
            relay_processes(Path(tmp), store.url, args.instances) as relays:
        print(f"store: {args.store}, {args.instances} relay instance(s); webhooks to the "
              f"first, subscribers round-robin over all")
        if args.idle:
            measure_idle(relays, args)
        elif args.find_max_rate:
            print(f"{args.subscribers} subscribers over {args.procs} client processes, "
                  f"{args.seconds:g} s per rate")
            find_max_rate(relays, args)
        else:
            result = run_round(relays, args, args.rate, "steady")
            print(f"{args.subscribers} subscribers over {args.procs} client processes, "
                  f"{int(args.rate * args.seconds)} webhooks in {args.seconds:g} s")
            print(result.line())
            r = result.result
            print("loss: 0" if result.clean else f"LOSS OR ERRORS: lost {r.lost}, duplicates "
                  f"{r.duplicates}, refused webhooks {result.refused}, streams not opened "
                  f"{r.failed_to_open}, streams cut before the terminal event {r.unclean}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
