"""The poll scheduler: every tracked, non-terminal job reaches its final state, webhook or not.

    store event log ──read_since/wait──> Polling ──track/forget/heard──> Poller (per provider)
                                                                           │ dispatcher: gate,
    store.list_jobs(terminal=False) ──at startup──┘                        │ slots, schedule
                                                                           v
    WebhookReceiver ──unverified(provider, body)──> nudge      ProviderClient (httpx) ──> Recorder

The scheduler learns about jobs only from the store: tracking (`POST /v1/jobs`), a webhook
for an unknown job, a terminal state however it came. So ingest and scheduling stay
decoupled, and after a restart the schedule is rebuilt from the non-terminal jobs in the store.
Poll results enter the store through the `Recorder`, like webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from typing import Any

import httpx

from relay.errors import RelayError
from relay.ingest.pollers import POLLERS, Poller
from relay.ingest.providers import ProviderClient, client_for
from relay.ingest.recorder import Recorder
from relay.metrics import Metrics
from relay.models import Event, Schema, Source
from relay.settings import Settings
from relay.store import JobQuery, Store

logger = logging.getLogger(__name__)

PAGE = 500
WAIT = 30.0
ID_FIELDS = {Schema.STORY: "job_id", Schema.GENERATION: "id", Schema.JOBSTATUS: "id"}


class Polling:
    """One `Poller` per provider that has a `base_url`, fed by the store's event log."""

    def __init__(self, settings: Settings, store: Store, recorder: Recorder, metrics: Metrics,
                 *, seed: int | None = None) -> None:
        self.settings = settings
        self.store = store
        self.recorder = recorder
        self.metrics = metrics
        self.rng = random.Random(seed)
        self.pollers: dict[str, Poller] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, http: httpx.AsyncClient) -> None:
        """Rebuild the schedule from the store, then poll and follow the store's log."""
        self.pollers = {
            provider.name: POLLERS[provider.schema](provider, client_for(provider, http),
                                                    self.recorder, self.metrics, self.rng)
            for provider in self.settings.providers.values() if provider.base_url}
        for name in self.settings.providers.keys() - self.pollers.keys():
            logger.info("provider %s has no base_url: its jobs are not polled", name)
        cursor = await self.store.last_cursor()
        restored = await self._restore()
        if restored:
            logger.info("polling %d unfinished jobs again", restored)
        self._tasks = [asyncio.create_task(poller.run(), name=f"poller-{name}")
                       for name, poller in self.pollers.items()]
        self._tasks.append(asyncio.create_task(self._follow(cursor), name="polling-follower"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for poller in self.pollers.values():
            await poller.stop()

    def client(self, provider: str) -> ProviderClient | None:
        """The API client of a provider the relay can call (None before start, or without
        a base_url)."""
        poller = self.pollers.get(provider)
        return poller.client if poller is not None else None

    def nudge(self, provider: str, external_id: str) -> bool:
        """Poll a job now (at most once per `poll_max_interval`); whether it will be."""
        poller = self.pollers.get(provider)
        return poller is not None and poller.nudge(external_id, time.monotonic())

    def unverified(self, provider: str, body: bytes) -> None:
        """A webhook delivery for `provider` failed verification: if its body names a job the
        relay polls, poll that job now, in case the real update was in it."""
        settings = self.settings.providers.get(provider)
        external_id = None if settings is None else _external_id(settings.schema, body)
        if external_id is not None and self.nudge(provider, external_id):
            logger.info("an unverified webhook named job %r at %s: polling it now",
                        external_id[:64], provider)

    def health(self) -> dict[str, Any]:
        """Per provider: whether polling works."""
        return {name: self.pollers[name].health() if name in self.pollers
                else {"polling": "off", "reason": "no base_url"}
                for name in self.settings.providers}

    def problems(self) -> dict[str, Any]:
        """The providers polling cannot reach as it should (refused credentials, throttled),
        for /readyz."""
        return {name: state for name, state in self.health().items()
                if state["polling"] not in ("ok", "off")}

    async def _restore(self) -> int:
        now, offset = time.monotonic(), 0
        while True:
            jobs, total = await self.store.list_jobs(
                JobQuery(terminal=False, limit=PAGE, offset=offset))
            for job in jobs:
                poller = self.pollers.get(job.provider)
                if poller is not None:
                    poller.track(job, now, restored=True)
            offset += len(jobs)
            if not jobs or offset >= total:
                return offset

    async def _follow(self, cursor: str | None) -> None:
        while True:
            try:
                cursor = await self._read(cursor)
            except RelayError:
                logger.exception("polling could not read the store's log; retrying")
                await asyncio.sleep(1)

    async def _read(self, cursor: str | None) -> str | None:
        events = await self.store.read_since(cursor, limit=PAGE)
        if not events:
            await self.store.wait(cursor, timeout=WAIT)
            return cursor
        now = time.monotonic()
        for event in events:
            self._observe(event, now)
        return events[-1].cursor

    def _observe(self, event: Event, now: float) -> None:
        job = event.job
        poller = self.pollers.get(job.provider)
        if poller is None:
            return
        if job.terminal:
            poller.forget(job.external_id)
        elif job.external_id not in poller.jobs:
            poller.track(job, now)
        elif event.source is Source.WEBHOOK:
            poller.heard(job.external_id, now)


def _external_id(schema: Schema, body: bytes) -> str | None:
    """The job id a webhook body names, if it parses (best effort: it proved nothing)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return None
    value = payload.get(ID_FIELDS[schema]) if isinstance(payload, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None
