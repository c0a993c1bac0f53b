"""Polling cost: provider requests per job until terminal, and the relay's CPU, per schema.

    .venv/bin/python tests/benchmarks/bench_polling.py --jobs 1000

Starts simulated providers of the three schemas in a child process and `python -m relay serve`
(SQLite store in a temporary directory) as another, then creates `--jobs` jobs of each schema
at the providers with realistic timelines (1 to 3 s per step, 5 % failing), `--rate` per
second of each schema, and tracks each through `POST /v1/jobs` as it is created.
`generation` jobs push signed webhooks to the relay, a fraction of them dropped (`--drop`), so
reconciliation polls have work to do, and are polled for their progress unless `--progress
off` (the provider's `progress` key); `story` and `jobstatus` jobs are polled. It waits until
the relay has every job terminal, then prints, per schema, the provider requests per job (from
the simulators' counters), the relay's poll outcomes (from its /metrics), and the relay
process's CPU seconds (utime + stime from /proc) from the first job tracked to the last one
terminal: tracking, webhooks, polls and the store, all of it. With `BENCH_PROFILE=PATH` the
relay runs under cProfile and writes its profile there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

KEY = "bench-provider-key"
SECRET = "bench-webhook-secret"
NAMES = {"story": "stories", "generation": "gen", "jobstatus": "jobs"}
TERMINAL = ("succeeded", "failed", "canceled")


# -- the simulated providers, in their own process --------------------------------------------

def run_simulators(conn: Connection, seed: int, drop: float) -> None:
    """Child process: serve the three simulators and answer commands from `conn`."""
    import logging

    from relay.runtime.server import serving
    from relay.sim import Fault, GenerationProvider, JobStatusProvider, StoryProvider

    logging.getLogger("relay.sim").setLevel(logging.ERROR)  # counted in sim.webhooks
    sims = {"story": StoryProvider(KEY, tick=0.05),
            "generation": GenerationProvider(KEY, webhook_secret=SECRET, tick=0.05, seed=seed),
            "jobstatus": JobStatusProvider(KEY, tick=0.05)}
    if drop:
        sims["generation"].faults.push(Fault(drop_webhooks=drop))

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            urls = {schema: await stack.enter_async_context(serving(sim.app))
                    for schema, sim in sims.items()}
            conn.send(urls)
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            threading.Thread(target=serve_commands, args=(conn, sims, seed, loop, done),
                             daemon=True).start()
            await done.wait()

    asyncio.run(main())


def serve_commands(conn: Connection, sims: dict[str, Any], seed: int,
                   loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    rng = random.Random(seed)
    while True:
        command, *args = conn.recv()
        if command == "create":
            conn.send(create_jobs(sims[args[0]], args[0], args[1], args[2], rng))
        elif command == "counts":
            conn.send({schema: {"requests": dict(sim.requests), "webhooks": dict(sim.webhooks),
                                "reads": dict(getattr(sim, "reads", {}))}
                       for schema, sim in sims.items()})
        else:
            loop.call_soon_threadsafe(done.set)
            return


def create_jobs(sim: Any, schema: str, count: int, webhook_url: str | None,
                rng: random.Random) -> list[str]:
    from relay.sim import generation_timeline, jobstatus_timeline, story_timeline

    ids = []
    for _ in range(count):
        fail = rng.random() < 0.05
        step = rng.uniform(1.0, 3.0)
        if schema == "story":
            ids.append(sim.create_job(story_timeline(scenes=4, step=step, fail=fail)))
        elif schema == "generation":
            ids.append(sim.create_job(generation_timeline(step=step / 2, fail=fail),
                                      webhook_url=webhook_url))
        else:
            ids.append(sim.create_job(jobstatus_timeline(step=step, fail=fail)))
    return ids


# -- the relay under test ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, urls: dict[str, str], args: argparse.Namespace) -> None:
    tables = []
    for schema, name in NAMES.items():
        extra = f'webhook_secret = "{SECRET}"\nwebhook_grace = {args.grace}\n' \
            f'progress = {str(args.progress == "on").lower()}\n' if schema == "generation" else ""
        if schema == "story" and args.page_size:
            extra = f"page_size = {args.page_size}\n"
        tables.append(
            f'[providers.{name}]\nschema = "{schema}"\nbase_url = "{urls[schema]}"\n'
            f'api_key = "{KEY}"\npoll_interval = {args.poll_interval}\n'
            f'poll_max_interval = {args.max_interval}\n{extra}')
    path.write_text(f'[server]\nstore = "sqlite:///{path.parent}/relay.db"\n\n'
                    + "\n".join(tables))


@contextlib.contextmanager
def relay_process(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = config.with_suffix(".log").open("wb")
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] \
        if os.environ.get("BENCH_PROFILE") else []
    process = subprocess.Popen(
        [sys.executable, *profile, "-m", "relay", "serve", "--config", str(config),
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(config.with_suffix(".log").read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield process
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn re-raises SIGTERM: no profile written
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)
        if process.poll() is None:
            process.kill()
        log.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the run -----------------------------------------------------------------------------------

async def track(client: httpx.AsyncClient, provider: str, external_id: str) -> None:
    response = await client.post("/v1/jobs", json={"provider": provider,
                                                   "external_id": external_id})
    response.raise_for_status()


async def create_and_track(args: argparse.Namespace, conn: Connection,
                           client: httpx.AsyncClient, relay_url: str) -> None:
    """`args.rate` new jobs of each schema per second, each tracked as soon as it exists."""
    batch = max(1, round(args.rate / 10))
    created, started = 0, time.monotonic()
    while created < args.jobs:
        count = min(batch, args.jobs - created)
        jobs = []
        for schema, name in NAMES.items():
            hook = f"{relay_url}/hooks/{name}" if schema == "generation" else None
            conn.send(("create", schema, count, hook))
            jobs += [track(client, name, external_id) for external_id in conn.recv()]
        await asyncio.gather(*jobs)
        created += count
        await asyncio.sleep(max(0.0, started + created / args.rate - time.monotonic()))


async def terminal_count(client: httpx.AsyncClient) -> int:
    totals = [(await client.get("/v1/jobs", params={"state": state, "limit": 1})).json()["total"]
              for state in TERMINAL]
    return sum(totals)


async def wait_all_terminal(client: httpx.AsyncClient, expected: int, timeout: float) -> float:
    started = time.monotonic()
    while (done := await terminal_count(client)) < expected:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"only {done} of {expected} jobs were terminal after {timeout:g} s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


def poll_outcomes(metrics: str) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    pattern = re.compile(r'^relay_polls_total\{outcome="([^"]+)",provider="([^"]+)"\} (\S+)$')
    for line in metrics.splitlines():
        match = pattern.match(line)
        if match:
            outcome, provider, value = match.groups()
            found.setdefault(provider, {})[outcome] = float(value)
    return found


async def run(args: argparse.Namespace, conn: Connection, urls: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-polling-") as tmp:
        config = Path(tmp) / "relay.toml"
        write_config(config, urls, args)
        port = free_port()
        relay_url = f"http://127.0.0.1:{port}"
        with relay_process(config, port) as process:
            async with httpx.AsyncClient(base_url=relay_url, timeout=60) as client:
                await measure(args, conn, client, process.pid, relay_url)


async def measure(args: argparse.Namespace, conn: Connection, client: httpx.AsyncClient,
                  pid: int, relay_url: str) -> None:
    cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
    await create_and_track(args, conn, client, relay_url)
    tracked_in = time.monotonic() - wall_start
    waited = await wait_all_terminal(client, 3 * args.jobs, args.timeout)
    cpu = cpu_seconds(pid) - cpu_start
    conn.send(("counts",))
    counts = conn.recv()
    outcomes = poll_outcomes((await client.get("/metrics")).text)
    report(args, counts, outcomes, cpu, (tracked_in, waited))


def report(args: argparse.Namespace, counts: dict[str, Any], outcomes: dict[str, Any],
           cpu: float, wall: tuple[float, float]) -> None:
    n = args.jobs
    print(f"{n} jobs per schema, {args.rate:g}/s each; poll_interval {args.poll_interval:g} s, "
          f"poll_max_interval {args.max_interval:g} s, webhook_grace {args.grace:g} s, "
          f"webhooks dropped {args.drop:.0%}, generation progress {args.progress}")
    print(f"{'schema':<11} {'requests/job':>12}  by endpoint")
    for schema, name in NAMES.items():
        requests = counts[schema]["requests"]
        total = sum(requests.values())
        detail = ", ".join(f"{route} {count / n:.2f}" for route, count in sorted(requests.items()))
        extra = ""
        if schema == "generation":
            hooks, reads = counts[schema]["webhooks"], counts[schema]["reads"]
            extra = " (reads: " + ", ".join(
                f"{kind} {count / n:.2f}" for kind, count in sorted(reads.items())) + ")"
            extra += "; webhooks per job: " + ", ".join(
                f"{outcome} {count / n:.2f}" for outcome, count in sorted(hooks.items()))
        print(f"{schema:<11} {total / n:>12.2f}  {detail or '-'}{extra}")
        print(f"{'':<11} {'':>12}  relay poll outcomes: {outcomes.get(name, {})}")
    print(f"relay CPU: {cpu:.2f} s for {3 * n} jobs ({1000 * cpu / (3 * n):.2f} ms per job), "
          f"over {wall[0]:.1f} s of tracking and {wall[1]:.1f} s more until the last was "
          f"terminal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per schema")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="new jobs per second, of each schema")
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--max-interval", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=10.0, help="generation webhook_grace")
    parser.add_argument("--drop", type=float, default=0.05,
                        help="fraction of generation webhooks the provider drops")
    parser.add_argument("--progress", choices=("on", "off"), default="on",
                        help="generation providers' `progress` key: poll include=progress")
    parser.add_argument("--page-size", type=int, default=0,
                        help="story providers' `page_size` (0: relay's default)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    sims = multiprocessing.Process(target=run_simulators, args=(child, args.seed, args.drop),
                                   daemon=True)
    sims.start()
    try:
        urls = parent.recv()
        asyncio.run(run(args, parent, urls))
    finally:
        parent.send(("stop",))
        sims.join(15)


if __name__ == "__main__":
    main()
