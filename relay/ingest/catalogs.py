"""The error catalog of each `generation` provider (seed 001: `GET /v2/errors`, "the full
catalog of codes, messages and suggested fixes"), read at startup and then hourly, and handed
to that provider's adapter for its polls and its webhooks.

    Catalogs.start(sources) ── at once, then hourly ──► source.fetch_catalog()  (unauthenticated)
                                                                │ parse_catalog
    polls:    ProviderClient.read ──────────────────┐           v
    webhooks: read_update(..., catalog=catalogs.get(provider.name))  ◄── the latest one read

A fetch that fails keeps the catalog read before (or none) and is never fatal. It is logged
once when a provider's catalog starts failing and once when it is read again, not every hour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from relay.config import ProviderConfig
from relay.errors import RelayError
from relay.normalise import Catalog
from relay.runtime.metrics import Metrics
from relay.runtime.tasks import cancel_all

logger = logging.getLogger(__name__)

REFRESH = 3600.0
"""Seconds between two reads of a provider's catalog."""


class CatalogSource(Protocol):
    """Where one provider's catalog comes from (relay.ingest.providers.GenerationClient)."""

    provider: ProviderConfig

    async def fetch_catalog(self) -> Catalog:
        """The parsed catalog; RelayError when it could not be fetched."""
        ...


class Catalogs:
    """The latest error catalog read of each provider: `get(provider)`, None until one was."""

    def __init__(self, metrics: Metrics | None = None, every: float = REFRESH) -> None:
        self.metrics = metrics
        self.every = every
        self._catalogs: dict[str, Catalog] = {}
        self._failing: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def get(self, provider: str) -> Catalog | None:
        """The catalog of `provider` to explain its errors with, or None."""
        return self._catalogs.get(provider)

    def start(self, sources: Iterable[CatalogSource]) -> None:
        """Read every source's catalog now, then every `every` seconds, until `stop`."""
        listed = list(sources)
        if listed:
            self._tasks = [asyncio.create_task(self._run(listed), name="error-catalogs")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    async def refresh(self, sources: Iterable[CatalogSource]) -> None:
        """Read each source's catalog once (concurrently); failures are logged, never raised."""
        await asyncio.gather(*(self._read(source) for source in sources))

    async def _run(self, sources: list[CatalogSource]) -> None:
        while True:
            await self.refresh(sources)
            await asyncio.sleep(self.every)

    async def _read(self, source: CatalogSource) -> None:
        name = source.provider.name
        try:
            catalog = await source.fetch_catalog()
        except RelayError as exc:
            self._failed(name, str(exc))
            return
        except Exception as exc:  # never fatal: a catalog only adds detail to errors
            logger.debug("reading the error catalog of %s failed", name, exc_info=True)
            self._failed(name, repr(exc))
            return
        if not catalog:
            self._failed(name, "the answer held no entry relay could read")
            return
        self._read_well(name, catalog)

    def _read_well(self, name: str, catalog: Catalog) -> None:
        known = name in self._catalogs
        self._catalogs[name] = catalog
        self._count(name, "read", len(catalog))
        if name in self._failing:
            self._failing.discard(name)
            logger.info("the error catalog of %s is read again (%d codes)", name, len(catalog))
        elif not known:
            logger.info("read the error catalog of %s: %d codes", name, len(catalog))

    def _failed(self, name: str, problem: str) -> None:
        self._count(name, "failed", None)
        kept = "keeping the one read before" if name in self._catalogs else "errors go unexplained"
        if name in self._failing:
            logger.debug("the error catalog of %s still cannot be read: %s", name, problem)
            return
        self._failing.add(name)
        logger.warning("cannot read the error catalog of %s (%s); %s, and relay tries again "
                       "every %.0f s", name, problem, kept, self.every)

    def _count(self, name: str, outcome: str, codes: int | None) -> None:
        if self.metrics is None:
            return
        self.metrics.catalog_reads.labels(name, outcome).inc()
        if codes is not None:
            self.metrics.catalog_codes.labels(name).set(codes)
