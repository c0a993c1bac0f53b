"""The jobs API, for downstream HTTP consumers.

    POST /v1/jobs                 start tracking a provider's job: 201, or 200 when tracked already
    GET  /v1/jobs                 ?provider=&state=&topic=&external_id=&limit=&offset=, newest first
    GET  /v1/jobs/{id}            ?wait=true&timeout=S holds the request until it is terminal
    GET  /v1/jobs/{id}/history    every stored change, oldest first
    POST /v1/jobs/{id}/cancel     at the provider (schemas that can), then recorded
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import ApiError
from relay.fanout.hub import Hub
from relay.fanout.longpoll import until_terminal
from relay.http.auth import Access
from relay.http.requests import (
    flag,
    invalid,
    read_object,
    seconds,
    text_field,
    topics_field,
    whole_number,
)
from relay.ingest.cancel import Cancel
from relay.ingest.tracking import Tracking
from relay.limits import (
    JOBS_PAGE_DEFAULT,
    JOBS_PAGE_MAX,
    METADATA_BYTES,
    OFFSET_MAX,
    RESERVED_TOPICS,
    TOPICS_PER_JOB,
    WAIT_DEFAULT,
    WAIT_MAX,
)
from relay.models import Job, State
from relay.store import JobQuery, Store


class Jobs:
    def __init__(self, store: Store, hub: Hub, access: Access, tracking: Tracking,
                 cancel: Cancel) -> None:
        self.store = store
        self.hub = hub
        self.access = access
        self.tracking = tracking
        self.canceller = cancel

    def routes(self) -> list[Route]:
        return [Route("/v1/jobs", self.track, methods=["POST"]),
                Route("/v1/jobs", self.list, methods=["GET"]),
                Route("/v1/jobs/{id}", self.get, methods=["GET"]),
                Route("/v1/jobs/{id}/history", self.history, methods=["GET"]),
                Route("/v1/jobs/{id}/cancel", self.cancel, methods=["POST"])]

    async def track(self, request: Request) -> Response:
        self.access.require_key(request)
        body = await read_object(request)
        provider = text_field(body, "provider")
        tracked = await self.tracking.track(
            provider, text_field(body, "external_id"), topics=_topics(body),
            metadata=_metadata(body))
        answer = {"job": tracked.job.to_dict(), "webhook_url": tracked.webhook_url,
                  "subscribe_token": tracked.subscribe_token, "events_url": tracked.events_url}
        return JSONResponse(answer, status_code=201 if tracked.created else 200)

    async def get(self, request: Request) -> Response:
        """`GET /v1/jobs/{id}`, with `?wait=true&timeout=S` to hold until terminal."""
        self.access.require_key(request)
        job_id = request.path_params["id"]
        params = request.query_params
        if flag(params.get("wait"), "wait"):
            timeout = seconds(params.get("timeout"), "timeout", WAIT_DEFAULT, WAIT_MAX)
            found = await until_terminal(self.store, self.hub, job_id, timeout)
            job = _found(found)
        else:
            job = await self._job(job_id)
        return JSONResponse(job.to_dict())

    async def list(self, request: Request) -> Response:
        self.access.require_key(request)
        params = request.query_params
        state = params.get("state")
        if state is not None and state not in State.__members__.values():
            raise invalid("state", f"expected one of {', '.join(State)}", 400)
        query = JobQuery(
            provider=params.get("provider"), state=state, topic=params.get("topic"),
            external_id=params.get("external_id"),
            limit=whole_number(params.get("limit"), "limit", JOBS_PAGE_DEFAULT, 1, JOBS_PAGE_MAX),
            offset=whole_number(params.get("offset"), "offset", 0, 0, OFFSET_MAX))
        jobs, total = await self.store.list_jobs(query)
        return JSONResponse({"jobs": [job.to_dict() for job in jobs], "total": total,
                             "limit": query.limit, "offset": query.offset})

    async def history(self, request: Request) -> Response:
        self.access.require_key(request)
        job = await self._job(request.path_params["id"])
        events = await self.store.history(job.id)
        return JSONResponse({"events": [event.to_dict() for event in events]})

    async def cancel(self, request: Request) -> Response:
        self.access.require_key(request)
        job = await self.canceller.cancel(request.path_params["id"])
        return JSONResponse(job.to_dict())

    async def _job(self, job_id: str) -> Job:
        return _found(await self.store.get(job_id))


def _found(job: Job | None) -> Job:
    if job is None:
        raise ApiError("no such job", status=404, code="not_found")
    return job


def _topics(body: dict[str, Any]) -> list[str]:
    topics = topics_field(body, "topics", TOPICS_PER_JOB)
    if any(t.startswith(RESERVED_TOPICS) for t in topics):
        raise invalid("topics", "job:, provider: and relay: topics are given by the relay")
    return topics


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict) or len(json.dumps(metadata)) > METADATA_BYTES:
        raise invalid("metadata", f"expected an object of at most {METADATA_BYTES} bytes")
    return metadata
