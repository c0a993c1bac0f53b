"""The providers as an operator sees them, for the console and for tools:

    GET /v1/providers    each provider's schema, its jobs by state, polls and webhooks per
                         minute, and the health of its polling

Read-only: the health is the poll scheduler's own (`ok`, `throttled` until a time,
`unauthorized` or `payment_required` since a time, `off` without a `base_url`), the rates come
from the metrics. The rates are measured between the calls of this endpoint over the last
minute, so the first call has none (null).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.config import Providers as ProviderConfigs
from relay.http.auth import Access
from relay.models import State, isoformat
from relay.runtime.metrics import Metrics
from relay.store import JobQuery, Store

RATE_WINDOW = 60.0
"""Seconds of samples the per-minute rates are measured over."""
RATE_LEAST = 2.0
"""The shortest span a rate is given for: over less, a single poll would read as a torrent."""

Totals = dict[str, tuple[float, float]]
"""Per provider: (polls, webhooks) counted since the start."""


class Providers:
    def __init__(self, providers: ProviderConfigs, store: Store, metrics: Metrics,
                 access: Access, health: Callable[[], Mapping[str, dict[str, Any]]]) -> None:
        self.providers = providers
        self.store = store
        self.metrics = metrics
        self.access = access
        self.health = health
        self._samples: deque[tuple[float, Totals]] = deque()

    def routes(self) -> list[Route]:
        return [Route("/v1/providers", self.list, methods=["GET"])]

    async def list(self, request: Request) -> Response:
        self.access.require_key(request)
        health = self.health()
        rates = self._rates()
        found = [{"name": name, "schema": provider.schema.value,
                  "polled": provider.base_url is not None,
                  "health": _health(health.get(name, {})),
                  "jobs": await self._jobs_by_state(name),
                  "per_minute": rates.get(name, {"polls": None, "webhooks": None})}
                 for name, provider in self.providers.items()]
        return JSONResponse({"providers": found})

    async def _jobs_by_state(self, provider: str) -> dict[str, int]:
        counts = {}
        for state in State:
            _, total = await self.store.list_jobs(
                JobQuery(provider=provider, state=state.value, limit=1))
            counts[state.value] = total
        return counts

    def _rates(self) -> dict[str, dict[str, float | None]]:
        """Polls and webhooks per minute since the oldest sample of the last minute."""
        now = time.monotonic()
        polls = self.metrics.by_provider(self.metrics.polls)
        webhooks = self.metrics.by_provider(self.metrics.webhooks)
        current = {name: (polls.get(name, 0.0), webhooks.get(name, 0.0))
                   for name in self.providers}
        samples = self._samples
        while samples and now - samples[0][0] > RATE_WINDOW:
            samples.popleft()
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, current))
        then, old = samples[0]
        span = now - then
        if span < RATE_LEAST:
            return {}
        return {name: {"polls": round((count[0] - old.get(name, (0, 0))[0]) * 60 / span, 1),
                       "webhooks": round((count[1] - old.get(name, (0, 0))[1]) * 60 / span, 1)}
                for name, count in current.items()}


def _health(polling: dict[str, Any]) -> dict[str, Any]:
    """The scheduler's health of a provider, with a pause's end as a time, not a countdown."""
    health = dict(polling)
    retry_in = health.pop("retry_in", None)
    if retry_in is not None:
        health["until"] = isoformat(datetime.now(UTC) + timedelta(seconds=retry_in))
    return health
