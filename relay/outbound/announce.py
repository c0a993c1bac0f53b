"""Operational events to the subscriptions whose topics name `relay:ops` (OPS_TOPIC).

`{"type": "relay.subscription.failing", "timestamp", "data": <subscription or provider>}`,
signed like every delivery, its `webhook-id` (`ops_…`) the same on each retry. They are not
job events, so they are not in the store's log nor its outbox: the instance that saw the
change sends them from memory, up to ATTEMPTS times on the retry schedule
(relay.outbound.policy); one still unsent when the process stops is lost (the condition
itself stays visible: a subscription's `status`, /readyz's providers). A subscription's
`events` filter names kinds of job events, so it does not narrow these.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from relay.errors import RelayError
from relay.models import OPS_TOPIC, isoformat, utcnow
from relay.outbound.policy import Policy
from relay.outbound.sending import Lanes, Sender
from relay.outbound.targets import Guard
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all
from relay.store.outbox import Outbox, Subscription

logger = logging.getLogger(__name__)

ATTEMPTS = 5


class Announcer:
    def __init__(self, outbox: Outbox, guard: Guard, policy: Policy, metrics: Metrics) -> None:
        self.outbox = outbox
        self.guard = guard
        self.policy = policy
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def announce(self, kind: str, data: dict[str, Any]) -> None:
        """Send the event to every enabled subscription that names OPS_TOPIC, in the
        background."""
        task = asyncio.create_task(self._send_all(kind, data), name=f"announce-{kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        await cancel_all(list(self._tasks))

    async def _send_all(self, kind: str, data: dict[str, Any]) -> None:
        try:
            every = await self.outbox.subscriptions()
        except RelayError as exc:
            logger.warning("could not send %s to the subscriptions of %s: %s", kind, OPS_TOPIC,
                           exc)
            return
        body = json.dumps({"type": kind, "timestamp": isoformat(utcnow()), "data": data},
                          separators=(",", ":"), default=str).encode()
        webhook_id = f"ops_{secrets.token_hex(12)}"
        await asyncio.gather(*(self._send(s, webhook_id, body) for s in every
                               if s.enabled and OPS_TOPIC in s.topics))

    async def _send(self, subscription: Subscription, webhook_id: str, body: bytes) -> None:
        sender, lanes = Sender(subscription, self.guard), Lanes(1)
        lane = lanes.take()
        try:
            for tries in range(1, ATTEMPTS + 1):
                sent = await sender.post(webhook_id, body, lane)
                self.metrics.outbound_attempts.labels(sent.result).inc()
                if sent.delivered or sent.result in ("gone", "refused"):
                    return
                if tries < ATTEMPTS:
                    await asyncio.sleep(max(self.policy.wait(tries), sent.retry_after or 0.0))
            logger.warning("gave up sending operational event %s to subscription %s after %d "
                           "attempts: %s", webhook_id, subscription.id, ATTEMPTS,
                           sent.attempt.error)
        finally:
            await lanes.aclose()
