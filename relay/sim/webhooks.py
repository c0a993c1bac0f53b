"""Webhook pushes from a simulated provider, signed the `Sync-Signature` way.

Deliveries for one job go out in order, one at a time; different jobs go out concurrently.
A delivery that fails is logged and counted, never retried and never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import httpx

from relay.runtime.tasks import cancel_all
from relay.sim.faults import FaultQueue

logger = logging.getLogger(__name__)


def sync_signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Sync-Signature` header value: `t=<unix seconds>,v1=<hex HMAC-SHA256>`."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


class WebhookSender:
    """Queues webhook bodies (from any thread) and delivers them while started."""

    def __init__(self, secret: str | None, counts: Counter[str], faults: FaultQueue,
                 timeout: float) -> None:
        self._secret = secret
        self._counts = counts
        self._faults = faults
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending: dict[str, deque[tuple[str, bytes]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None

    def enqueue(self, job_id: str, url: str, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        with self._lock:
            self._pending.setdefault(job_id, deque()).append((url, body))

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout)

    def pump(self) -> None:
        """Start a delivery task for each job with queued bodies and none running."""
        if self._client is None:
            return
        with self._lock:
            ready = [job_id for job_id in self._pending if job_id not in self._tasks]
        for job_id in ready:
            self._tasks[job_id] = asyncio.create_task(self._drain(job_id))

    async def close(self) -> None:
        await cancel_all(list(self._tasks.values()))
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _drain(self, job_id: str) -> None:
        try:
            while (item := self._pop(job_id)) is not None:
                await self._deliver(*item)
        finally:
            self._tasks.pop(job_id, None)

    def _pop(self, job_id: str) -> tuple[str, bytes] | None:
        with self._lock:
            queue = self._pending.get(job_id)
            if not queue:
                self._pending.pop(job_id, None)
                return None
            return queue.popleft()

    async def _deliver(self, url: str, body: bytes) -> None:
        if self._faults.drop_webhook():
            self._counts["dropped"] += 1
            logger.info("simulated provider dropped a webhook to %s", url)
            return
        self._counts[await self._post(url, body)] += 1

    async def _post(self, url: str, body: bytes) -> str:
        client = self._client
        if client is None:
            return "failed"
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers["Sync-Signature"] = sync_signature(self._secret, body)
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("simulated webhook to %s failed: %r", url, exc)
            return "failed"
        if not response.is_success:
            logger.warning("simulated webhook to %s answered %d", url, response.status_code)
            return "failed"
        return "sent"
