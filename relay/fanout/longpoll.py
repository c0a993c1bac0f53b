"""Holding a request until a job is terminal (`GET /v1/jobs/{id}?wait=true`): a subscriber of
the hub like a stream, that waits for the terminal frame instead of sending every one."""

from __future__ import annotations

import asyncio
import contextlib

from relay.fanout.hub import Hub, Queued
from relay.models import Job
from relay.store import Store


async def until_terminal(store: Store, hub: Hub, job_id: str, timeout: float) -> Job | None:
    """The job once it is terminal, or as it is when `timeout` seconds have passed or the
    relay is stopping; None when there is no such job."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    job = await store.get(job_id)
    while job is not None and not job.terminal and not hub.stopping.is_set():
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        job = await _next_terminal(store, hub, job_id, remaining)
    return job


async def _next_terminal(store: Store, hub: Hub, job_id: str, timeout: float) -> Job | None:
    """The job once a terminal event arrives, or the timeout passes, or the hub lets go
    of the subscription (dropped or stopping; the caller decides whether to go on)."""
    subscriber = hub.subscribe(Queued([f"job:{job_id}"]))
    try:
        job = await store.get(job_id)  # read after subscribing: no change falls between
        if job is None or job.terminal:
            return job
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while (frame := await subscriber.mailbox.get()) is not None:
                    if frame.terminal:
                        break
        return await store.get(job_id)
    finally:
        hub.unsubscribe(subscriber)
