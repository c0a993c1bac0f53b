"""Retention: once an hour the terminal jobs that finished more than
`server.retention` seconds ago are deleted, with their events and deliveries, so the store
never grows without bound.

    at start, then every EVERY s ─► lease `retention` ─► store.sweep(cutoff, BATCH) ─┐
      (of several instances,          held? else skip    again while a batch is full, │
       one sweeps an hour)                               other work between them  ◄──┘
                                                       ─► store.compact() (SQLite: space back)

A batch is one transaction (one script on Redis), so the writer is never held for long and
webhooks' commits go in between. Two instances sweeping at once (a lease that lapsed) is
safe, only wasted work: a batch deletes what is still there. A resume from a cursor older
than a deleted event gets `relay.reset` (the store raises CursorExpired for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from relay.errors import StoreError
from relay.runtime.tasks import cancel_all
from relay.store import Compacting, Store

logger = logging.getLogger(__name__)

EVERY = 3600.0
"""Seconds between two sweeps (read when a `Retention` is made: tests shorten it)."""
BATCH = 500
"""Jobs one sweep step deletes, in one transaction."""
LEASE = "retention"


class Retention:
    """Sweeps `store` of the jobs that finished more than `keep` seconds ago (0: never)."""

    def __init__(self, store: Store, keep: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keep = keep
        self.every = EVERY
        self.clock = clock
        self._owner = f"retention-{uuid.uuid4().hex}"
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.keep > 0:
            self._tasks = [asyncio.create_task(self._run(), name="retention")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    async def sweep(self) -> int:
        """Delete every job past retention now, batch by batch, then compact; how many."""
        if self.keep <= 0:
            return 0  # keeps everything
        cutoff = self.clock() - self.keep
        deleted = 0
        while (count := await self.store.sweep(cutoff, BATCH)) > 0:
            deleted += count
            if count < BATCH:
                break
            await asyncio.sleep(0)  # the event loop's other work between two batches
        if isinstance(self.store, Compacting):
            await self.store.compact()
        return deleted

    async def _run(self) -> None:
        while True:
            await self._sweep_if_leased()
            await asyncio.sleep(self.every)

    async def _sweep_if_leased(self) -> None:
        started = time.monotonic()
        try:
            # Held for the whole interval and renewed by its holder: one instance sweeps.
            if LEASE not in await self.store.leases.claim([LEASE], self._owner, self.every):
                return
            deleted = await self.sweep()
        except StoreError:
            logger.exception("the retention sweep failed; the next is in %.0f s", self.every)
            return
        if deleted:
            logger.info("retention deleted %d jobs finished more than %.0f s ago (%.1f s)",
                        deleted, self.keep, time.monotonic() - started)
