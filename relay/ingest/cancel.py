"""Cancelling a job at its provider (for the schemas that can), then recording it."""

from __future__ import annotations

import logging

from relay.config import ProviderConfig, Providers
from relay.errors import PayloadError, ProviderError, Refusal, Refused, StoreError
from relay.ingest.providers import JobStatusClient, ProviderClients
from relay.ingest.recorder import Recorder
from relay.models import Job, Schema, Source, State, Update, now
from relay.store import Store

logger = logging.getLogger(__name__)


class Cancel:
    def __init__(self, providers: Providers, store: Store, recorder: Recorder,
                 clients: ProviderClients) -> None:
        self.providers = providers
        self.store = store
        self.recorder = recorder
        self.clients = clients

    async def cancel(self, job_id: str) -> Job:
        """The job, canceled; Refused when it cannot be."""
        job = await self.store.get(job_id)
        if job is None:
            raise Refused(Refusal.MISSING, "not_found", "no such job")
        if job.schema != Schema.JOBSTATUS:
            raise _not_supported(job)
        if job.terminal:
            raise _already_terminal(job)
        provider = self.providers.get(job.provider)
        client = self.clients.get(job.provider)
        if provider is None or not isinstance(client, JobStatusClient):
            raise Refused(Refusal.UPSTREAM, "provider_error",
                          f"provider {job.provider!r} is not configured with a base_url",
                          {"provider": job.provider})
        await self._cancel_at_provider(provider, client, job)
        applied = await self.recorder.record(provider, _canceled(job), Source.API)
        assert applied.job is not None
        if applied.job.state is not State.CANCELED:  # it finished while we were asking
            raise _already_terminal(applied.job)
        return applied.job

    async def _cancel_at_provider(self, provider: ProviderConfig, client: JobStatusClient,
                                  job: Job) -> None:
        try:
            await client.cancel(job.external_id)
        except ProviderError as exc:
            if exc.status == 409:  # the provider says it is final already: learn how
                raise _already_terminal(await self._refresh(provider, client, job)) from exc
            logger.warning("cancelling job %s at %s failed: %s", job.id, provider.name, exc)
            raise Refused(Refusal.UPSTREAM, "provider_error",
                          f"{provider.name} could not cancel the job: {exc}",
                          {"provider": provider.name, "status": exc.status,
                           "retry_after": exc.retry_after}) from exc

    async def _refresh(self, provider: ProviderConfig, client: JobStatusClient,
                       job: Job) -> Job:
        try:
            update = await client.status(job.external_id)
            applied = await self.recorder.record(provider, update, Source.POLL)
        except (ProviderError, PayloadError, StoreError) as exc:
            logger.info("could not refresh job %s after its cancel was refused: %s", job.id, exc)
            return job
        return applied.job or job


def _canceled(job: Job) -> Update:
    return Update(external_id=job.external_id, provider_status="cancelled",
                  state=State.CANCELED, received_at=now())


def _not_supported(job: Job) -> Refused:
    return Refused(Refusal.CONFLICT, "cancel_not_supported",
                   f"jobs of schema {job.schema!r} cannot be cancelled through the relay",
                   {"schema": job.schema})


def _already_terminal(job: Job) -> Refused:
    return Refused(Refusal.CONFLICT, "already_terminal", f"the job is already {job.state.value}",
                   {"state": job.state.value})
