"""The outbox survives a crash (real processes): deliveries pending when the relay is killed
with SIGKILL are sent once it is restarted on the same SQLite file, in order per job."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests.consumers import SCALE, SECRET, Consumer, serving_consumer, verified
from tests.support import RelayProcess, eventually, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JOBS = 5


def write_config(tmp_path: Path, consumer_url: str) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(f"""
[server]
store = "sqlite:///{tmp_path}/relay.db"
allow_private_targets = true
delivery_retry_scale = {SCALE}

[providers.gen]
schema = "generation"

[[subscriptions]]
url = "{consumer_url}"
topics = ["provider:gen"]
secret = "{SECRET}"
""")
    return config


async def post_updates(relay: RelayProcess) -> dict[str, int]:
    """Tracks JOBS jobs and moves each to version 2 through its webhook URL; the newest
    version of each job, by job id."""
    final: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as client:
        for index in range(JOBS):
            tracked = (await client.post("/v1/jobs", json={"provider": "gen",
                                                           "external_id": f"k-{index}"})).json()
            hook = tracked["webhook_url"].removeprefix(f"http://127.0.0.1:{relay.port}")
            answer = await client.post(hook, json={"id": f"k-{index}", "status": "PROCESSING",
                                                    "progress_percent": 50})
            assert answer.status_code == 202, answer.text
            final[tracked["job"]["id"]] = 2
    return final


async def test_deliveries_pending_at_a_sigkill_are_sent_after_the_restart(tmp_path):
    consumer = Consumer(status=503)
    async with serving_consumer(consumer) as url:
        config = write_config(tmp_path, url)
        relay = RelayProcess(config, free_port()).start()
        try:
            final = await post_updates(relay)
            await eventually(lambda: len(consumer.received) >= JOBS, timeout=10)
        finally:
            relay.kill()
        assert consumer.delivered() == []
        consumer.status = 200
        restarted = RelayProcess(config, relay.port).start()
        try:
            await eventually(lambda: _newest(consumer) == final, timeout=15)
        finally:
            restarted.stop()

    by_job: dict[str, list[int]] = defaultdict(list)
    for received in consumer.received:
        data = verified(SECRET, received)["data"]
        by_job[data["id"]].append(data["version"])
    assert all(versions == sorted(versions) for versions in by_job.values())


def _newest(consumer: Consumer) -> dict[str, int]:
    newest: dict[str, int] = {}
    for received in consumer.delivered():
        data = received.payload["data"]
        newest[data["id"]] = max(newest.get(data["id"], 0), data["version"])
    return newest
