"""The `generation` schema's poller: webhooks first, long-polls past their grace."""

from __future__ import annotations

import random
import time
from datetime import datetime
from functools import partial

from relay.config import ProviderConfig
from relay.ingest.providers import GenerationClient, ProviderClient
from relay.ingest.recorder import Recorder
from relay.models import Job, Update, utcnow
from relay.polling.pollers.base import Pick, Poller, Work, until
from relay.polling.schedule import Tracked
from relay.runtime.metrics import Metrics

LONG_POLL_MAX = 55.0


class GenerationPoller(Poller):
    """Webhooks first: a job is polled once no callback came for `webhook_grace` seconds, then
    long-polled (`wait=true`) until terminal, or until webhooks flow again. Long-polls hold
    at most half of the provider's slots; past that a job gets quick polls, backing off."""

    client: GenerationClient

    def __init__(self, provider: ProviderConfig, client: ProviderClient, recorder: Recorder,
                 metrics: Metrics, rng: random.Random) -> None:
        super().__init__(provider, client, recorder, metrics, rng)
        self.hold = min(LONG_POLL_MAX, max(provider.poll_max_interval, 1.0))
        self.long_polls = 0
        self.long_poll_cap = max(1, provider.max_concurrency // 2)

    def first_delay(self, tracked: Tracked, job: Job, restored: bool, now: float) -> float:
        if not restored:
            return self.provider.webhook_grace
        # After a restart callbacks may have been missed: count the grace from the last update.
        tracked.heard = now - _age(job.updated_at)
        return max(0.0, tracked.heard + self.provider.webhook_grace - now) + self.pacing.first()

    def heard(self, external_id: str, now: float) -> None:
        tracked = self.jobs.get(external_id)
        if tracked is None:
            return
        tracked.heard = now
        tracked.watching = False
        if not tracked.busy and not tracked.done:
            self._place(tracked, now + self.provider.webhook_grace)

    def next_delay(self, tracked: Tracked, changed: bool) -> float:
        now = time.monotonic()
        quiet = now - tracked.heard
        if quiet < self.provider.webhook_grace:  # webhooks flow: wait for the next one
            tracked.watching = False
            return self.provider.webhook_grace - quiet
        held = now - tracked.started >= self.hold / 2
        if tracked.watching and held:  # a long-poll ran its course: wait again at once
            return 0.0
        tracked.watching = True
        return self.pacing.after_poll(tracked, changed)

    def pick(self, now: float) -> Pick:
        entry = self.schedule.pop_due(now)
        if entry is None:
            return until(self.schedule.next_due(), now)
        tracked = self.jobs[entry[1]]
        if tracked.watching and self.long_polls < self.long_poll_cap:
            self.long_polls += 1
            return Work(partial(self._long_poll, tracked), (tracked,))
        return Work(partial(self.poll, tracked, self.client.status), (tracked,))

    async def _long_poll(self, tracked: Tracked) -> None:
        try:
            await self.poll(tracked, self._wait)
        finally:
            self.long_polls -= 1

    async def _wait(self, external_id: str) -> Update:
        return await self.client.wait(external_id, self.hold)


def _age(stamp: str | None) -> float:
    """Seconds since an ISO 8601 timestamp of the store (0 when there is none)."""
    if not stamp:
        return 0.0
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return 0.0
    if then.tzinfo is None:
        return 0.0
    return max(0.0, (utcnow() - then).total_seconds())
