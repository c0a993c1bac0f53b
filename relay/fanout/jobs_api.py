"""The jobs API for downstream HTTP consumers (CONTRACT section 4): a job, with an optional
long-poll until it is terminal; the list, filtered and paginated; a job's history."""

from __future__ import annotations

import asyncio
import contextlib
import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.auth import Access
from relay.errors import ApiError
from relay.fanout.hub import Hub
from relay.models import Job, State
from relay.store import JobQuery, Store

DEFAULT_WAIT = 30.0
MAX_WAIT = 55.0
MAX_LIMIT = 200


class JobsApi:
    def __init__(self, store: Store, hub: Hub, access: Access) -> None:
        self.store = store
        self.hub = hub
        self.access = access

    async def get(self, request: Request) -> Response:
        """`GET /v1/jobs/{id}`, with `?wait=true&timeout=S` to hold until terminal."""
        self.access.require_key(request.headers.get("authorization"))
        job_id = request.path_params["id"]
        params = request.query_params
        if _flag(params.get("wait"), "wait"):
            job = await self._wait_terminal(job_id, _timeout(params.get("timeout")))
        else:
            job = await self._job(job_id)
        return JSONResponse(job.to_dict())

    async def list(self, request: Request) -> Response:
        """`GET /v1/jobs?provider=&state=&topic=&external_id=&limit=&offset=`, newest first."""
        self.access.require_key(request.headers.get("authorization"))
        params = request.query_params
        state = params.get("state")
        if state is not None and state not in State.__members__.values():
            raise ApiError(f"state: expected one of {', '.join(State)}", code="invalid_request",
                           details={"field": "state"})
        query = JobQuery(provider=params.get("provider"), state=state,
                         topic=params.get("topic"), external_id=params.get("external_id"),
                         limit=_int(params.get("limit"), "limit", 50, 1, MAX_LIMIT),
                         offset=_int(params.get("offset"), "offset", 0, 0, 10**9))
        jobs, total = await self.store.list_jobs(query)
        return JSONResponse({"jobs": [job.to_dict() for job in jobs], "total": total,
                             "limit": query.limit, "offset": query.offset})

    async def history(self, request: Request) -> Response:
        """`GET /v1/jobs/{id}/history`: every stored change, oldest first."""
        self.access.require_key(request.headers.get("authorization"))
        job = await self._job(request.path_params["id"])
        events = await self.store.history(job.id)
        return JSONResponse({"events": [event.to_dict() for event in events]})

    async def _job(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise ApiError("no such job", status=404, code="not_found")
        return job

    async def _wait_terminal(self, job_id: str, timeout: float) -> Job:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        job = await self._job(job_id)
        while not job.terminal and not self.hub.stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            job = await self._until_terminal(job_id, remaining)
        return job

    async def _until_terminal(self, job_id: str, timeout: float) -> Job:
        """The job once a terminal event arrives, or the timeout passes, or the hub lets go
        of the subscription (dropped or stopping; the caller decides whether to go on)."""
        subscriber = self.hub.subscribe([f"job:{job_id}"])
        try:
            job = await self._job(job_id)  # read after subscribing: no change falls between
            if job.terminal:
                return job
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while (frame := await subscriber.mailbox.get()) is not None:
                        if frame.terminal:
                            break
            return await self._job(job_id)
        finally:
            self.hub.unsubscribe(subscriber)


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError(f"{name}: expected true or false", code="invalid_request",
                   details={"field": name})


def _timeout(value: str | None) -> float:
    if value is None:
        return DEFAULT_WAIT
    try:
        timeout = float(value)
    except ValueError:
        timeout = math.nan
    if not 0 <= timeout <= MAX_WAIT:
        raise ApiError(f"timeout: expected seconds from 0 to {MAX_WAIT:g}",
                       code="invalid_request", details={"field": "timeout"})
    return timeout


def _int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise ApiError(f"{name}: expected a whole number from {low} to {high}",
                       code="invalid_request", details={"field": name})
    return int(value)
