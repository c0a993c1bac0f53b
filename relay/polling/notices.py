"""A provider's account trouble, told once however many instances see it.

Every instance that polls a provider's jobs sees its 401s for itself (each job is polled by
the instance holding its lease, so several poll one provider). The first to see them claims
the lease `unauthorized:<provider>` and tells `relay.provider.unauthorized`; the others find
it held and stay quiet. The one that told it tells `relay.provider.recovered` when its polls
are served again, and gives the lease back. On a store one process uses every claim is
granted: one code path either way. Notices are told in the order the pollers gave them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from relay.errors import StoreError
from relay.polling.pollers.base import UNAUTHORIZED, Announce
from relay.runtime.tasks import cancel_all
from relay.store.leases import Leases

logger = logging.getLogger(__name__)

LEASE = "unauthorized:"
LEASE_TTL = 3600.0
"""Seconds the teller holds the lease: one that dies while a provider is unauthorized lets
another instance tell a later change after this."""


class AccountNotices:
    """What pollers call (relay.polling.pollers.base.Services.announce)."""

    def __init__(self, leases: Leases, owner: str, announce: Announce | None) -> None:
        self.leases = leases
        self.owner = owner
        self.announce = announce
        self._told: set[str] = set()  # the leases held for an unauthorized told here
        self._order = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.announce is None:
            return
        task = asyncio.create_task(self._tell(self.announce, kind, data), name="notice")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        await cancel_all(list(self._tasks))
        if self._told:
            try:
                await self.leases.release(sorted(self._told), self.owner)
            except StoreError as exc:
                logger.warning("could not give back the leases %s: %s", self._told, exc)

    async def _tell(self, announce: Announce, kind: str, data: dict[str, Any]) -> None:
        name = LEASE + str(data["provider"])
        async with self._order:
            if kind == UNAUTHORIZED:
                if await self._claim(name):
                    self._told.add(name)
                    announce(kind, data)
            elif name in self._told:
                self._told.discard(name)
                announce(kind, data)
                try:
                    await self.leases.release([name], self.owner)
                except StoreError as exc:  # it lapses after LEASE_TTL
                    logger.warning("could not give back the lease %s: %s", name, exc)

    async def _claim(self, name: str) -> bool:
        try:
            return name in await self.leases.claim([name], self.owner, LEASE_TTL)
        except StoreError as exc:  # told by every instance that sees it, rather than none
            logger.warning("could not claim the lease %s: %s", name, exc)
            return True
