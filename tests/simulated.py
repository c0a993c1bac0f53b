"""Simulated providers of the three schemas, served over real HTTP, and a relay on uvicorn
pointed at them, polling every 50 ms and backing off to 500 ms so tests stay fast; with the
steps tests take against it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import httpx

from relay.app import create_app
from relay.config import Settings
from relay.runtime.server import serving
from relay.settings import parse_settings
from relay.sim import GenerationProvider, JobStatusProvider, StoryProvider
from tests.senders import WEBHOOK_SECRET
from tests.support import Relay, free_port

KEY = "sim-api-key"
FAST = {"poll_interval": 0.05, "poll_max_interval": 0.5}


class Recorded:
    """An ASGI wrapper noting when each request arrived and when each answer started, with
    its status, and the `jobId` each asked about: what a provider would see of the relay's
    polling."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state  # the server signals shutdown through it
        self.arrivals: list[float] = []
        self.answers: list[tuple[float, int]] = []
        self.asked: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.arrivals.append(time.monotonic())
        self.asked.append(parse_qs(scope["query_string"].decode()).get("jobId", [""])[0])

        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.answers.append((time.monotonic(), message["status"]))
            await send(message)

        await self.app(scope, receive, noting)


@dataclass
class Sims:
    story: StoryProvider
    gen: GenerationProvider
    jobs: JobStatusProvider
    jobs_seen: Recorded
    urls: dict[str, str]


@contextlib.asynccontextmanager
async def simulators(jobs_key: str = KEY) -> AsyncIterator[Sims]:
    story = StoryProvider(KEY)
    gen = GenerationProvider(KEY, webhook_secret=WEBHOOK_SECRET)
    jobs = JobStatusProvider(jobs_key)
    jobs_seen = Recorded(jobs.app)
    async with serving(story.app) as s, serving(gen.app) as g, serving(jobs_seen) as j:
        yield Sims(story, gen, jobs, jobs_seen, {"stories": s, "gen": g, "jobs": j})


def settings_for(sims: Sims, store: str = "memory://", server: dict[str, Any] | None = None,
                 **overrides: dict[str, Any]) -> Settings:
    """One provider of each schema pointed at the simulators; `overrides` per provider name.
    The relay gets a port of its own, so its public URL (the base of its webhook URLs) is
    where `relay_for` serves it."""
    providers: dict[str, dict[str, Any]] = {
        "gen": {"schema": "generation", "webhook_secret": WEBHOOK_SECRET, "webhook_grace": 0.3},
        "stories": {"schema": "story"},
        "jobs": {"schema": "jobstatus"},
    }
    return parse_settings({
        "server": {"store": store, "port": free_port(), **(server or {})},
        "providers": {name: {**table, **FAST, "base_url": sims.urls[name], "api_key": KEY,
                             **overrides.get(name, {})}
                      for name, table in providers.items()},
    })


@contextlib.asynccontextmanager
async def relay_for(settings: Settings, http: httpx.AsyncClient | None = None
                    ) -> AsyncIterator[Relay]:
    app = create_app(settings, http=http)
    async with serving(app, port=settings.server.port) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield Relay(url, app.state.store, client)


async def final(relay: Relay, job_id: str, timeout: float = 10) -> dict[str, Any]:
    """The job once terminal (the jobs API's long-poll), failing if it is not by `timeout`."""
    response = await relay.client.get(f"/v1/jobs/{job_id}",
                                      params={"wait": "true", "timeout": str(timeout)})
    job = response.json()
    assert job["terminal"], job
    return job  # type: ignore[no-any-return]


async def counter(relay: Relay, name: str, **labels: str) -> float:
    text = (await relay.client.get("/metrics")).text
    wanted = ",".join(f'{key}="{labels[key]}"' for key in sorted(labels))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def history(relay: Relay, job_id: str) -> list[dict[str, Any]]:
    response = await relay.client.get(f"/v1/jobs/{job_id}/history")
    return response.json()["events"]  # type: ignore[no-any-return]
