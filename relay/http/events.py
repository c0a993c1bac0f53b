"""Server-sent events for browsers, and the subscribe tokens that open them.

    GET  /v1/jobs/{id}/events         one job: its current state, then live; ends after terminal
    GET  /v1/events?topic=…&job=…     many jobs at once
    POST /v1/tokens                    a token granting only the jobs and topics it names
    POST /v1/sessions                  an API key (or a session) exchanged for a session token

A stream is authorised by `?token=` (what a browser's EventSource can send) or an API key. The
first page of its backlog is read before the response starts (relay.fanout.resume), so a
finished job's stream is a 204, which tells a browser to stop, not a stream that breaks after
its headers.

The streams are a plain ASGI app, reached before Starlette's router and its request-id
middleware (relay.http.RelayApp): thousands of browsers connect at once, and a stream's
response task lives as long as it does. It sets the request id, answers errors in the
envelope and writes its access line itself; CORS stays Starlette's.
"""

from __future__ import annotations

import re
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import ApiError
from relay.fanout.stream import Receive, Send, Stream, Streams
from relay.http.auth import Access
from relay.http.errors import error_for, valid_request_id
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
from relay.runtime import access
from relay.runtime.ids import request_id
from relay.store import Store
from relay.tokens import Grant, Tokens

STREAM_PATH = re.compile(r"/v1/(?:jobs/([^/]+)/)?events")


class Events:
    def __init__(self, store: Store, streams: Streams, access: Access, tokens: Tokens) -> None:
        self.store = store
        self.streams = streams
        self.access = access
        self.tokens = tokens

    def routes(self) -> list[Route]:
        # Described like any route (and served this way if reached through the router); the
        # application sends the streams here before its router (see relay.http.RelayApp).
        return [Route("/v1/jobs/{id}/events", self, methods=["GET"]),
                Route("/v1/events", self, methods=["GET"]),
                Route("/v1/tokens", self.create_token, methods=["POST"]),
                Route("/v1/sessions", self.create_session, methods=["POST"])]

    def serves(self, scope: MutableMapping[str, Any]) -> bool:
        return scope["method"] == "GET" and STREAM_PATH.fullmatch(scope["path"]) is not None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send
                       ) -> None:
        """`GET /v1/jobs/{id}/events` (one job, closed after its terminal event) and
        `GET /v1/events?topic=…&job=…` (many jobs at once)."""
        started = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = valid_request_id(given.decode("latin-1")) or request_id()
        answer = await self._answer(scope, receive, rid)
        status = answer.status_code if isinstance(answer, Response) else 200
        try:
            if isinstance(answer, Response):
                await answer(scope, receive, send)
            elif await answer.start(receive, send):
                # The hub writes to the connection: what remains of the stream is this one
                # wait, in this one frame, per open stream.
                while (await receive())["type"] != "http.disconnect":
                    pass
        finally:
            if isinstance(answer, Stream):
                answer.release()
            access.write(scope, status, rid, started)

    async def _answer(self, scope: MutableMapping[str, Any], receive: Receive, rid: str
                      ) -> Stream | Response:
        request = Request(scope)
        try:
            stream = await self._open(request, receive, [(b"x-request-id", rid.encode())])
        except Exception as exc:  # every error becomes an answer in the envelope
            scope.setdefault("state", {})["request_id"] = rid  # (kept only when needed)
            return await error_for(request, exc)
        if stream is None:  # tells the browser to stop reconnecting
            return Response(status_code=204, headers={"x-request-id": rid})
        return stream

    async def create_token(self, request: Request) -> Response:
        """`POST /v1/tokens {"jobs", "topics", "ttl"}`: a token a browser can subscribe with."""
        self.access.require_key(request)
        body = await read_object(request)
        jobs = topics_field(body, "jobs", TOPICS_PER_TOKEN, status=400)
        topics = topics_field(body, "topics", TOPICS_PER_TOKEN, status=400)
        ttl = body.get("ttl", TOKEN_TTL)
        if isinstance(ttl, float) and ttl.is_integer():  # 60.0 is a JSON integer too
            ttl = int(ttl)
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

    async def _open(self, request: Request, receive: Receive,
                    headers: list[tuple[bytes, bytes]]) -> Stream | None:
        match = STREAM_PATH.fullmatch(request.scope["path"])
        if request.method != "GET" or match is None:
            raise ApiError("only GET is allowed here", status=405, code="method_not_allowed")
        # Parsed here, once, rather than through Starlette's QueryParams: a crowd of browsers
        # connecting at once pays for every microsecond of each.
        query = parse_qs(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)
        grant = self.access.grant_for(_last(query, "token"), request.headers.get("authorization"))
        last_id = _last_event_id(request, query)
        if match[1] is not None:
            job = await self._visible_job(grant, match[1])
            return await self.streams.open(request.scope, receive, [f"job:{job.id}"], last_id,
                                           job.terminal, headers)
        topics = _topics(query)
        for topic in topics:
            await self._check_topic(grant, topic)
        return await self.streams.open(request.scope, receive, topics, last_id, None, headers)

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


def _last(query: dict[str, list[str]], name: str) -> str | None:
    """The value of `name` in the query; the last, when it is given more than once (as
    Starlette's `query_params.get`)."""
    values = query.get(name)
    return values[-1] if values else None


def _last_event_id(request: Request, query: dict[str, list[str]]) -> str | None:
    value = request.headers.get("last-event-id") or _last(query, "last_event_id")
    return value.strip() or None if value else None


def _topics(query: dict[str, list[str]]) -> list[str]:
    """The topics of `?topic=…&job=…`: each list as long as a token's may be, so a stream
    can follow everything a token grants."""
    topics, jobs = query.get("topic", []), query.get("job", [])
    if not topics and not jobs:
        raise ApiError("name at least one topic= or job=", code="invalid_request")
    for name, values in (("topic", topics), ("job", jobs)):
        problem = topics_problem(values, TOPICS_PER_TOKEN)
        if problem is not None:
            raise invalid(name, f"{problem} (each up to {TEXT_LENGTH} characters)", 400)
    return list(dict.fromkeys([*topics, *(f"job:{job}" for job in jobs)]))
