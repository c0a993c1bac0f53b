"""The `generation` schema's poller: one read when tracking starts, then progress polls, or
webhooks first and long-polls past their grace."""

from __future__ import annotations

import logging
import time
from functools import partial
from urllib.parse import urlsplit

from relay.config import ProviderConfig
from relay.ingest.providers import GenerationClient, ProviderClient
from relay.models import Job, Update
from relay.polling.pollers.base import Pick, Poller, Services, Work, until
from relay.polling.schedule import Tracked, seconds_since

logger = logging.getLogger(__name__)

LONG_POLL_MAX = 55.0


class GenerationPoller(Poller):
    """Every job is read once as soon as it is tracked (`include=progress`, which also shows
    the `webhookUrl` it will call back). Then:

    - `progress` on (the default): quick reads with `include=progress` on the back-off
      schedule until terminal, whether webhooks arrive or not: the provider's webhooks report
      only the end, so only polls move a job's progress;
    - `progress` off: a job that calls relay back is polled once no callback came for
      `webhook_grace` seconds; one whose webhookUrl is not relay's (not under
      `public_url`/hooks/<provider>), or that has none, will never call back and is polled
      from the first read on. Either way it is long-polled (`wait=true`) until terminal, or
      until webhooks flow again. Long-polls hold at most half of the provider's slots; past
      that a job gets quick polls, backing off.

    A webhook about a job shows that it calls back, whatever its webhookUrl said."""

    client: GenerationClient

    def __init__(self, provider: ProviderConfig, client: ProviderClient,
                 services: Services) -> None:
        super().__init__(provider, client, services)
        self.hooks = f"{services.public_url}/hooks/{provider.name}" if services.public_url \
            else ""
        self.hold = min(LONG_POLL_MAX, max(provider.poll_max_interval, 1.0))
        self.long_polls = 0
        self.long_poll_cap = max(1, provider.max_concurrency // 2)

    def first_delay(self, tracked: Tracked, job: Job, restored: bool, now: float) -> float:
        if restored:  # callbacks may have been missed: count the grace from the last update
            tracked.heard = now - seconds_since(job.updated_at)
        return self.pacing.first()

    def heard(self, external_id: str, now: float) -> None:
        tracked = self.jobs.get(external_id)
        if tracked is None:
            return
        tracked.heard = now
        tracked.calls_back = True
        if self.provider.progress:
            return  # its progress polls go on as scheduled
        tracked.watching = False
        if tracked.inspected and not tracked.busy and not tracked.done:
            self._place(tracked, now + self.provider.webhook_grace)

    def next_delay(self, tracked: Tracked, changed: bool) -> float:
        if self.provider.progress:
            return self.pacing.after_poll(tracked, changed)
        now = time.monotonic()
        quiet = now - tracked.heard
        if tracked.calls_back and quiet < self.provider.webhook_grace:
            tracked.watching = False  # webhooks flow: wait for the next one
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
        if not tracked.inspected:
            return Work(partial(self.poll, tracked, partial(self._inspect, tracked)), (tracked,))
        if tracked.watching and self.long_polls < self.long_poll_cap:
            self.long_polls += 1
            return Work(partial(self._long_poll, tracked), (tracked,))
        return Work(partial(self.poll, tracked, self.client.status), (tracked,))

    def calls_relay(self, webhook_url: str | None) -> bool:
        """Whether a job's webhookUrl is relay's own for this provider."""
        return bool(webhook_url and self.hooks) and _under(webhook_url or "", self.hooks)

    async def _inspect(self, tracked: Tracked, external_id: str) -> Update:
        update, webhook_url = await self.client.inspect(external_id)
        tracked.inspected = True
        tracked.calls_back = self.calls_relay(webhook_url)
        if not tracked.calls_back:
            logger.debug("job %s at %s will not call relay back (webhookUrl %r): polled "
                         "without waiting for webhooks", tracked.job_id, self.provider.name,
                         (webhook_url or "")[:200])
        return update

    async def _long_poll(self, tracked: Tracked) -> None:
        try:
            await self.poll(tracked, self._wait)
        finally:
            self.long_polls -= 1

    async def _wait(self, external_id: str) -> Update:
        return await self.client.wait(external_id, self.hold)


def _under(url: str, base: str) -> bool:
    """Whether `url` is `base` or below it (scheme and host compared case-insensitively)."""
    try:
        given, ours = urlsplit(url), urlsplit(base)
    except ValueError:
        return False
    if (given.scheme.lower(), given.netloc.lower()) != (ours.scheme.lower(),
                                                          ours.netloc.lower()):
        return False
    path = given.path.rstrip("/")
    return path == ours.path or path.startswith(ours.path + "/")
