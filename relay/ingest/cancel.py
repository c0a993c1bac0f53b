"""`POST /v1/jobs/{id}/cancel`: cancel a job at its provider (schemas that can), then record it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.auth import Access
from relay.errors import ApiError, PayloadError, ProviderError, StoreError
from relay.ingest.providers import JobStatusClient, ProviderClient
from relay.ingest.recorder import Recorder
from relay.models import Job, Schema, Source, State, Update, utcnow
from relay.settings import ProviderSettings, Settings
from relay.store import Store

logger = logging.getLogger(__name__)


class Cancel:
    """`clients(provider)` is the API client of a provider (from the poll scheduler)."""

    def __init__(self, settings: Settings, store: Store, recorder: Recorder, access: Access,
                 clients: Callable[[str], ProviderClient | None]) -> None:
        self.settings = settings
        self.store = store
        self.recorder = recorder
        self.access = access
        self.clients = clients

    async def cancel(self, request: Request) -> Response:
        self.access.require_key(request.headers.get("authorization"))
        job = await self.store.get(request.path_params["id"])
        if job is None:
            raise ApiError("no such job", status=404, code="not_found")
        if job.schema != Schema.JOBSTATUS:
            raise _not_supported(job)
        if job.terminal:
            raise _already_terminal(job)
        provider = self.settings.providers.get(job.provider)
        client = self.clients(job.provider)
        if provider is None or not isinstance(client, JobStatusClient):
            raise ApiError(f"provider {job.provider!r} is not configured with a base_url",
                           status=502, code="provider_error", details={"provider": job.provider})
        await self._cancel_at_provider(provider, client, job)
        applied = await self.recorder.record(provider, _canceled(job), Source.API)
        assert applied.job is not None
        if applied.job.state is not State.CANCELED:  # it finished while we were asking
            raise _already_terminal(applied.job)
        return JSONResponse(applied.job.to_dict())

    async def _cancel_at_provider(self, provider: ProviderSettings, client: JobStatusClient,
                                  job: Job) -> None:
        try:
            await client.cancel(job.external_id)
        except ProviderError as exc:
            if exc.status == 409:  # the provider says it is final already: learn how
                raise _already_terminal(await self._refresh(provider, client, job)) from exc
            logger.warning("cancelling job %s at %s failed: %s", job.id, provider.name, exc)
            raise ApiError(f"{provider.name} could not cancel the job: {exc}", status=502,
                           code="provider_error",
                           details={"provider": provider.name, "status": exc.status,
                                    "retry_after": exc.retry_after}) from exc

    async def _refresh(self, provider: ProviderSettings, client: JobStatusClient,
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
                  state=State.CANCELED, received_at=utcnow())


def _not_supported(job: Job) -> ApiError:
    return ApiError(f"jobs of schema {job.schema!r} cannot be cancelled through the relay",
                    status=409, code="cancel_not_supported", details={"schema": job.schema})


def _already_terminal(job: Job) -> ApiError:
    return ApiError(f"the job is already {job.state.value}", status=409,
                    code="already_terminal", details={"state": job.state.value})
