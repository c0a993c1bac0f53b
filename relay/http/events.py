"""Server-sent events for browsers, and the subscribe tokens that open them.

    GET  /v1/jobs/{id}/events         one job: its current state, then live; ends after terminal
    GET  /v1/events?topic=…&job=…     many jobs at once
    POST /v1/tokens                    a token granting only the jobs and topics it names
    POST /v1/sessions                  an API key (or a session) exchanged for a session token

A stream is authorised by `?token=` (what a browser's EventSource can send) or an API key. The
first page of its backlog is read before the response starts (relay.fanout.resume), so a
finished job's stream is a 204, which tells a browser to stop, not a stream that breaks after
its headers.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import ApiError
from relay.fanout import resume
from relay.fanout.hub import Hub
from relay.fanout.stream import EventStream
from relay.http.auth import Access
from relay.http.requests import invalid, read_object, topics_field
from relay.limits import (
    SESSION_TTL,
    TEXT_LENGTH,
    TOKEN_TTL,
    TOKEN_TTL_MAX,
    TOPICS_PER_TOKEN,
    topics_problem,
)
from relay.models import Job
from relay.store import Store
from relay.tokens import Grant, Tokens


class Events:
    def __init__(self, store: Store, hub: Hub, access: Access, tokens: Tokens) -> None:
        self.store = store
        self.hub = hub
        self.access = access
        self.tokens = tokens

    def routes(self) -> list[Route]:
        return [Route("/v1/jobs/{id}/events", self.job_events, methods=["GET"]),
                Route("/v1/events", self.events, methods=["GET"]),
                Route("/v1/tokens", self.create_token, methods=["POST"]),
                Route("/v1/sessions", self.create_session, methods=["POST"])]

    async def job_events(self, request: Request) -> Response | EventStream:
        """`GET /v1/jobs/{id}/events`: one job, closed after its terminal event."""
        grant = self.access.grant(request)
        job = await self._visible_job(grant, request.path_params["id"])
        return await self._open([f"job:{job.id}"], _last_event_id(request), job)

    async def events(self, request: Request) -> Response | EventStream:
        """`GET /v1/events?topic=…&job=…`: many jobs at once."""
        grant = self.access.grant(request)
        topics = _topics(request)
        for topic in topics:
            await self._check_topic(grant, topic)
        return await self._open(topics, _last_event_id(request), None)

    async def create_token(self, request: Request) -> Response:
        """`POST /v1/tokens {"jobs", "topics", "ttl"}`: a token a browser can subscribe with."""
        self.access.require_key(request)
        body = await read_object(request)
        jobs = topics_field(body, "jobs", TOPICS_PER_TOKEN, status=400)
        topics = topics_field(body, "topics", TOPICS_PER_TOKEN, status=400)
        ttl = body.get("ttl", TOKEN_TTL)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= TOKEN_TTL_MAX:
            raise invalid("ttl", f"expected whole seconds from 1 to {TOKEN_TTL_MAX}", 400)
        if not jobs and not topics:
            raise ApiError("name at least one job or topic", code="invalid_request")
        token, expires = self.tokens.subscribe_token(jobs, topics, ttl)
        return JSONResponse({"token": token, "expires_at": expires}, status_code=201)

    async def create_session(self, request: Request) -> Response:
        """`POST /v1/sessions`: a token that stands in for the caller's API key for a short
        while, renewed by calling again with it; the console keeps it instead of the key."""
        if self.access.open:
            raise ApiError("no API keys are configured: calls need no session", status=409,
                           code="no_api_keys")
        token, expires = self.tokens.session_token(self.access.key_id(request), SESSION_TTL)
        return JSONResponse({"token": token, "expires_at": expires}, status_code=201)

    async def _visible_job(self, grant: Grant, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is not None and grant.allows_job(job.id, job.topics):
            return job
        if job is None and grant.allows_job(job_id, ()):
            raise ApiError("no such job", status=404, code="not_found")
        raise ApiError("the token does not grant this job", status=403, code="forbidden")

    async def _check_topic(self, grant: Grant, topic: str) -> None:
        if grant.allows_topic(topic):
            return
        if topic.startswith("job:"):
            job = await self.store.get(topic[4:])
            if grant.allows_job(topic[4:], job.topics if job is not None else ()):
                return
        raise ApiError(f"the token does not grant {topic[:64]!r}", status=403, code="forbidden")

    async def _open(self, topics: Sequence[str], last_id: str | None, job: Job | None
                    ) -> Response | EventStream:
        """A stream of `topics`; `job` is the one job of a single-job stream."""
        subscriber = self.hub.subscribe(topics)
        try:
            backlog = await resume.first_page(self.store, topics, last_id)
        except BaseException:
            self.hub.unsubscribe(subscriber)
            raise
        if job is not None and job.terminal and last_id is not None and not backlog.first:
            self.hub.unsubscribe(subscriber)
            return Response(status_code=204)  # tells the browser to stop reconnecting
        chunks = resume.chunks(self.store, subscriber, backlog, job is not None)
        return EventStream(chunks, subscriber, self.hub)


def _last_event_id(request: Request) -> str | None:
    value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return value.strip() or None if value else None


def _topics(request: Request) -> list[str]:
    params = request.query_params
    topics = [*params.getlist("topic"), *(f"job:{j}" for j in params.getlist("job"))]
    topics = list(dict.fromkeys(t for t in topics if t))
    if not topics:
        raise ApiError("name at least one topic= or job=", code="invalid_request")
    problem = topics_problem(topics, TOPICS_PER_TOKEN)
    if problem is not None:
        raise ApiError(f"topic: {problem} (each up to {TEXT_LENGTH} characters)",
                       code="invalid_request")
    return topics
