"""Signed webhooks beside senders that prove nothing: does unauthenticated traffic slow down
genuine deliveries?

    .venv/bin/python tests/benchmarks/bench_unauthenticated.py --seconds 8

Starts one relay (SQLite), then twice posts signed webhooks from `--clients` keep-alive
connections for `--seconds`: first alone, then beside `--attackers` connections that post
1 MiB JSON bodies (just under the cap) with a false Sync-Signature, as fast as they are
answered. Prints the signed deliveries' p50/p99 acknowledge latency in both runs, and their
ratio (the aim: p99 within 2x), plus how many refusals the attackers got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from bench_ingest import Tally, raw_request, read_response, record, relay_processes, webhooks
from common import percentile

BIG = b'{"id":"attack","status":"PROCESSING","pad":"' + b"x" * (1024 * 1024 - 64) + b'"}'


async def attacker(port: int, stop_at: float, refused: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = raw_request(port, BIG, f"t={int(time.time())},v1={'0' * 64}")
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            status = await read_response(reader)
            refused.append(status)
    finally:
        writer.close()


async def signed_client(port: int, name: str, stop_at: float, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for body, signature in webhooks(name):
            if time.perf_counter() >= stop_at:
                return
            started = time.perf_counter()
            writer.write(raw_request(port, body, signature))
            record(tally, await read_response(reader), time.perf_counter() - started)
    finally:
        writer.close()


async def run(port: int, clients: int, attackers: int, seconds: float, name: str
              ) -> tuple[Tally, list[int]]:
    stop_at = time.perf_counter() + seconds
    tally, refused = Tally(), []
    await asyncio.gather(
        *(signed_client(port, f"{name}-{i}", stop_at, tally) for i in range(clients)),
        *(attacker(port, stop_at, refused) for _ in range(attackers)))
    return tally, refused


def line(label: str, tally: Tally) -> str:
    lat = tally.latencies
    return (f"{label}: {tally.accepted} signed webhooks accepted, p50 "
            f"{percentile(lat, 0.5) * 1000:.1f} ms, p99 {percentile(lat, 0.99) * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="signed senders")
    parser.add_argument("--attackers", type=int, default=8, help="unauthenticated senders")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with tempfile.TemporaryDirectory() as name, relay_processes(
            Path(name), f"sqlite:///{name}/relay.db", 1, "warning") as relays:
        port = int(relays[0][0].rsplit(":", 1)[1])
        alone, _ = asyncio.run(run(port, args.clients, 0, args.seconds, "alone"))
        beside, refused = asyncio.run(run(port, args.clients, args.attackers, args.seconds,
                                          "beside"))
    print(line("signed alone", alone))
    print(line(f"beside {args.attackers} unauthenticated senders of 1 MiB", beside))
    statuses = {status: refused.count(status) for status in sorted(set(refused))}
    print(f"unauthenticated requests answered: {len(refused)} {statuses}")
    ratio = percentile(beside.latencies, 0.99) / percentile(alone.latencies, 0.99)
    print(f"p99 with them / p99 alone: {ratio:.2f}x (aim: at most 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
