"""`relay demo`: the relay on the embedded default, with simulated providers of all three
schemas and a generator that keeps starting jobs, so the dashboard has something to show.

The `generation` provider pushes signed webhooks; `story` and `jobstatus` are polled. Some jobs
fail, one jobstatus job is cancelled, and the story provider answers an occasional 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from relay.app import create_app
from relay.config import Settings
from relay.runtime.server import serving
from relay.settings import parse_settings
from relay.sim import (
    Fault,
    GenerationProvider,
    JobStatusProvider,
    StoryProvider,
    generation_timeline,
    jobstatus_timeline,
    story_timeline,
)

logger = logging.getLogger(__name__)

WEBHOOK_SECRET = "demo-webhook-secret"


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    jobs: int | None = None          # start this many jobs, then stop starting new ones
    exit_after: float | None = None  # seconds; with `jobs`, exit 0 once all are terminal
    directory: Path | None = None    # where relay.db lives; a temporary one by default
    every: float = 2.0               # seconds between new jobs


@dataclass
class Providers:
    story: StoryProvider = field(default_factory=lambda: StoryProvider(api_key="demo-story"))
    generation: GenerationProvider = field(default_factory=lambda: GenerationProvider(
        api_key="demo-generation", webhook_secret=WEBHOOK_SECRET))
    jobstatus: JobStatusProvider = field(
        default_factory=lambda: JobStatusProvider(api_key="demo-jobstatus"))


def demo_settings(directory: Path, urls: dict[str, str], options: DemoOptions) -> Settings:
    fast = {"poll_interval": 0.5, "poll_max_interval": 2.0, "webhook_grace": 10.0}
    return parse_settings({
        "server": {"host": options.host, "port": options.port,
                   "store": f"sqlite:///{directory / 'relay.db'}"},
        "providers": {
            "stories": {"schema": "story", "base_url": urls["story"], "api_key": "demo-story",
                        **fast},
            "lipsync": {"schema": "generation", "base_url": urls["generation"],
                        "api_key": "demo-generation", "webhook_secret": WEBHOOK_SECRET, **fast},
            "writer": {"schema": "jobstatus", "base_url": urls["jobstatus"],
                       "api_key": "demo-jobstatus", **fast},
        },
    })


class JobStarter:
    """Starts jobs at the simulated providers and tracks them in the relay."""

    def __init__(self, relay: httpx.AsyncClient, providers: Providers, relay_url: str,
                 seed: int | None = None) -> None:
        self.relay = relay
        self.providers = providers
        self.relay_url = relay_url
        self.random = random.Random(seed)
        self.job_ids: list[str] = []
        self._kinds = itertools.cycle(["story", "generation", "jobstatus"])
        self._count = 0
        self._canceled_one = False

    async def start_one(self) -> str:
        self._count += 1
        kind = next(self._kinds)
        fail = self.random.random() < 0.2
        step = self.random.uniform(0.6, 1.6)
        if kind == "story":
            if self._count % 7 == 0:
                self.providers.story.faults.push(Fault(status=429, retry_after=1))
            external = self.providers.story.create_job(
                story_timeline(scenes=self.random.randint(3, 6), step=step, fail=fail))
            return await self._track("stories", external, ["demo", "kind:story"])
        if kind == "generation":
            external = self.providers.generation.create_job(
                generation_timeline(step=step, progress_steps=4, fail=fail),
                webhook_url=f"{self.relay_url}/hooks/lipsync")
            return await self._track("lipsync", external, ["demo", "kind:generation"])
        external = self.providers.jobstatus.create_job(jobstatus_timeline(step=step, fail=fail))
        job_id = await self._track("writer", external, ["demo", "kind:jobstatus"])
        if not self._canceled_one and not fail:
            self._canceled_one = True
            asyncio.get_running_loop().call_later(
                2 * step, lambda: asyncio.ensure_future(self._cancel(job_id)))
        return job_id

    async def _track(self, provider: str, external_id: str, topics: list[str]) -> str:
        response = await self.relay.post("/v1/jobs", json={
            "provider": provider, "external_id": external_id, "topics": topics})
        response.raise_for_status()
        job_id: str = response.json()["job"]["id"]
        self.job_ids.append(job_id)
        return job_id

    async def _cancel(self, job_id: str) -> None:
        response = await self.relay.post(f"/v1/jobs/{job_id}/cancel")
        logger.info("demo cancelled job %s: %s", job_id, response.status_code)

    async def all_terminal(self) -> bool:
        for job_id in self.job_ids:
            job = (await self.relay.get(f"/v1/jobs/{job_id}")).json()
            if not job.get("terminal"):
                return False
        return True


@contextlib.asynccontextmanager
async def _directory(given: Path | None) -> AsyncIterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as name:
        yield Path(name)


async def run_demo(options: DemoOptions) -> int:
    """Run until Ctrl-C (or SIGTERM); headless with `jobs`/`exit_after`. Exit status 0 when
    headless and every job reached a terminal state."""
    providers = Providers()
    async with (_directory(options.directory) as directory,
                serving(providers.story.app) as story_url,
                serving(providers.generation.app) as generation_url,
                serving(providers.jobstatus.app) as jobstatus_url):
        urls = {"story": story_url, "generation": generation_url, "jobstatus": jobstatus_url}
        app = create_app(demo_settings(directory, urls, options))
        async with (serving(app, options.host, options.port) as relay_url,
                    httpx.AsyncClient(base_url=relay_url, timeout=10) as client):
            print(f"relay demo: dashboard at {relay_url}/  (store {directory / 'relay.db'})",
                  flush=True)
            status = await _drive(JobStarter(client, providers, relay_url), options)
    return status


async def _drive(starter: JobStarter, options: DemoOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    deadline = None if options.exit_after is None else loop.time() + options.exit_after
    started = 0
    while not stop.is_set():
        if options.jobs is None or started < options.jobs:
            await starter.start_one()
            started += 1
        elif await starter.all_terminal():
            print(f"relay demo: all {started} jobs are terminal", flush=True)
            return 0
        if deadline is not None and loop.time() >= deadline:
            break
        pause = options.every if options.jobs is None else 0.2
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
    if options.jobs is not None:
        done = await starter.all_terminal()
        print(f"relay demo: stopped; all jobs terminal: {done}", flush=True)
        return 0 if done else 1
    return 0
