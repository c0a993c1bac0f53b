"""Leases: which instance does which piece of work that several instances share (polling a
job, delivering to a subscription), one at a time.

A store that several relay instances share (Redis) leases each name to one owner for a while;
an owner that dies stops renewing and its leases lapse after their ttl. A store that serves one
process (memory, SQLite) has `LocalLeases`, which grant everything: one code path either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Leases(Protocol):
    @property
    def shared(self) -> bool:
        """Whether other instances compete for these leases (False: everything is ours)."""

    async def claim(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        """Of `names`, those `owner` now holds for `ttl` seconds: the ones it held (renewed)
        and the free ones (taken). A lease of an instance that died lapses after `ttl`."""

    async def release(self, names: Sequence[str], owner: str) -> None:
        """Give up the leases `owner` holds among `names`."""


class LocalLeases:
    """The leases of a store only one process uses: every claim is granted."""

    shared = False

    async def claim(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        return set(names)

    async def release(self, names: Sequence[str], owner: str) -> None:
        return None
