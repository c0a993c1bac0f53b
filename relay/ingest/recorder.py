"""Folding provider updates into the store, whichever way they came (webhook, poll, API).
Each change of a job's state is logged here, once, at info (`job_id`, `provider`, `state`)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter

from relay.config import ProviderConfig
from relay.models import Job, Source, State, Update, now
from relay.normalise import merge
from relay.runtime.metrics import Metrics
from relay.store import Applied, Store

logger = logging.getLogger(__name__)


def new_job_id() -> str:
    """24 hex characters: the time in milliseconds, then 48 random bits. Ids in the order
    jobs were made keep the store's indexes of them (and of their `job:` topics) appending
    at one end, instead of writing a page anywhere in them for every new job."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def new_job(provider: ProviderConfig, external_id: str, *, topics: Sequence[str] = (),
            metadata: Mapping[str, Any] | None = None, now: str) -> Job:
    """A freshly tracked job: queued, with its `job:` and `provider:` topics first."""
    job_id = new_job_id()
    builtin = (f"job:{job_id}", f"provider:{provider.name}")
    return Job(id=job_id, provider=provider.name, schema=provider.schema.value,
               external_id=external_id,
               topics=builtin + tuple(t for t in dict.fromkeys(topics) if t not in builtin),
               metadata=dict(metadata or {}), created_at=now, updated_at=now)


class _Before:
    """The job as the store had it when it ran the change (the change's last run counts: a
    store may run it again after a conflicting write)."""

    __slots__ = ("job",)

    def __init__(self) -> None:
        self.job: Job | None = None


class Recorder:
    """The one way updates enter the store, so webhook and poll follow the same merge rules."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._unknown_words: set[tuple[str, str]] = set()
        self._event_counters: dict[Source, Counter] = {}

    async def record(self, provider: ProviderConfig, update: Update, source: Source,
                     dedupe_key: str | None = None) -> Applied:
        """Merge `update` into its job, tracking the job if it is new."""
        if update.state is None:
            self._unknown_word(provider.name, update.provider_status)
        if update.ignored:
            logger.debug("provider %s sent job %s with fields relay ignored: %s",
                         provider.name, update.external_id, ", ".join(update.ignored))
            self.metrics.count_ignored_fields(provider.name, update.ignored)
        received = update.received_at
        before = _Before()

        def change(current: Job | None) -> Job | None:
            before.job = current
            job = current or new_job(provider, update.external_id, now=received)
            return merge(job, update)

        applied = await self.store.apply(provider.name, update.external_id, change,
                                         source=source, received_at=received,
                                         dedupe_key=dedupe_key)
        self._stored(applied, source, before)
        return applied

    def _stored(self, applied: Applied, source: Source, before: _Before) -> None:
        """Count the event `applied` made, and log the job's move when its state changed."""
        if applied.event is None:
            return
        self._events(source).inc()
        job, previous = applied.event.job, before.job
        if (previous is None or previous.state is not job.state) and logger.isEnabledFor(
                logging.INFO):
            logger.info("job %s (%s) is %s", job.id, job.provider, job.state.value, extra={
                "job_id": job.id, "provider": job.provider, "state": job.state.value,
                "previous": previous.state.value if previous is not None else None,
                "source": source.value})

    def _events(self, source: Source) -> Counter:
        # The labelled child is looked up once per source, not once per event.
        counter = self._event_counters.get(source)
        if counter is None:
            counter = self._event_counters[source] = self.metrics.events.labels(source.value)
        return counter

    async def conclude(self, provider: ProviderConfig, external_id: str, state: State,
                       error: Mapping[str, Any]) -> Applied:
        """Relay's own verdict on a job it tracks, the provider having said nothing new (it
        refuses the job, or the job's deadline passed): the job ends in `state` with `error`,
        under the merge rules (a terminal job stays as it is), its `provider_status` kept.
        A job the store does not hold is not started by this."""
        received = now()
        before = _Before()

        def change(current: Job | None) -> Job | None:
            before.job = current
            if current is None:
                return None
            status = current.provider_status
            merged = merge(current, Update(external_id, status or "", state, received,
                                           error=error))
            return None if merged is None else merged.replace(provider_status=status)

        applied = await self.store.apply(provider.name, external_id, change, source=Source.POLL,
                                         received_at=received)
        self._stored(applied, Source.POLL, before)
        return applied

    async def track(self, provider: ProviderConfig, external_id: str, *,
                    topics: Sequence[str] = (), metadata: Mapping[str, Any] | None = None
                    ) -> Applied:
        """Start tracking a job; `applied.event` is None when it was tracked already."""
        tracked_at = now()

        def change(current: Job | None) -> Job | None:
            if current is not None:
                return None
            return new_job(provider, external_id, topics=topics, metadata=metadata,
                           now=tracked_at).replace(version=1)

        applied = await self.store.apply(provider.name, external_id, change, source=Source.API,
                                         received_at=tracked_at)
        self._stored(applied, Source.API, _Before())  # a new job: nothing before it
        return applied

    def _unknown_word(self, provider: str, word: str) -> None:
        # Words are labels, so past a hundred distinct ones they are counted as "other".
        seen = (provider, word) in self._unknown_words
        if not seen and len(self._unknown_words) < 100:
            self._unknown_words.add((provider, word))
            logger.warning("provider %s sent unknown status word %r; the job keeps its state",
                           provider, word)
            seen = True
        self.metrics.unknown_status.labels(provider, word if seen else "other").inc()
