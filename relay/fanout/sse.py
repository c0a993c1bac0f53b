"""Server-sent event streams (CONTRACT section 5) and the subscribe tokens that open them.

A stream subscribes to the hub first, then sends what came before (the current state of each
job, or exactly the events after `Last-Event-ID`), then the hub's live frames. Subscribing
first means nothing falls between the two; an event that arrives both ways is sent once,
because a job's versions only go up and each stream remembers the last version it sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from relay.auth import MAX_GRANTS, MAX_TTL, Access, Grant, Tokens
from relay.errors import ApiError
from relay.fanout.hub import Frame, Hub, Subscriber, encode
from relay.models import Event
from relay.store import Store
from relay.web import json_object, read_json

RETRY_MS = 3000
MAX_REPLAY = 10_000
SNAPSHOT_LIMIT = 100
MAX_TOPIC = 256

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Streams:
    def __init__(self, store: Store, hub: Hub, access: Access, tokens: Tokens,
                 heartbeat: float) -> None:
        self.store = store
        self.hub = hub
        self.access = access
        self.tokens = tokens
        self.heartbeat = heartbeat

    async def job_events(self, request: Request) -> Response:
        """`GET /v1/jobs/{id}/events`: one job, closed after its terminal event."""
        grant = self._grant(request)
        job = await self.store.get(request.path_params["id"])
        if job is None:
            raise ApiError("no such job", status=404, code="not_found")
        if not grant.allows_job(job.id, job.topics):
            raise ApiError("the token does not grant this job", status=403, code="forbidden")
        topics = [f"job:{job.id}"]
        last_id = _last_event_id(request)
        if last_id is not None and job.terminal:
            if not await self.store.read_since(last_id, topics=topics, limit=1):
                return Response(status_code=204)  # tells the browser to stop reconnecting
        return self._stream(topics, last_id, single_job=True)

    async def events(self, request: Request) -> Response:
        """`GET /v1/events?topic=…&job=…`: many jobs at once."""
        grant = self._grant(request)
        topics = _topics(request)
        for topic in topics:
            if not grant.allows_topic(topic) and not _grants_job_topic(grant, topic):
                raise ApiError(f"the token does not grant {topic!r}", status=403,
                               code="forbidden")
        return self._stream(topics, _last_event_id(request), single_job=False)

    async def create_token(self, request: Request) -> Response:
        """`POST /v1/tokens {"jobs", "topics", "ttl"}`: a token a browser can subscribe with."""
        self.access.require_key(request.headers.get("authorization"))
        body = json_object(await read_json(request))
        jobs = _strings(body, "jobs")
        topics = _strings(body, "topics")
        ttl = body.get("ttl", 3600)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
            raise ApiError(f"ttl: expected whole seconds from 1 to {MAX_TTL}",
                           code="invalid_request", details={"field": "ttl"})
        if not jobs and not topics:
            raise ApiError("name at least one job or topic", code="invalid_request")
        token, expires = self.tokens.subscribe_token(jobs, topics, ttl)
        return JSONResponse({"token": token, "expires_at": expires}, status_code=201)

    def _grant(self, request: Request) -> Grant:
        return self.access.grant(request.headers.get("authorization"),
                                 request.query_params.get("token"))

    def _stream(self, topics: Sequence[str], last_id: str | None, single_job: bool
                ) -> Response:
        body = self._frames(topics, last_id, single_job)
        return StreamingResponse(body, media_type="text/event-stream", headers=_HEADERS)

    async def _frames(self, topics: Sequence[str], last_id: str | None, single_job: bool
                      ) -> AsyncIterator[bytes]:
        sent: dict[str, int] = {}
        subscriber = self.hub.subscribe(topics)
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            async for frame in self._backlog(topics, last_id):
                if _fresh(frame, sent):
                    yield frame.data
                    if single_job and frame.terminal:
                        return
            async for chunk in self._live(subscriber, sent, single_job):
                yield chunk
        finally:
            self.hub.unsubscribe(subscriber)

    async def _backlog(self, topics: Sequence[str], last_id: str | None
                       ) -> AsyncIterator[Frame]:
        if last_id is None:
            for event in await self.store.latest(topics, SNAPSHOT_LIMIT):
                yield encode(event)
            return
        async for event in self._replay(topics, last_id):
            yield encode(event)

    async def _replay(self, topics: Sequence[str], cursor: str) -> AsyncIterator[Event]:
        # Bounded: past MAX_REPLAY events the stream goes live; a client far behind will
        # see the newest state of each job from the live events.
        replayed = 0
        while replayed < MAX_REPLAY:
            events = await self.store.read_since(cursor, topics=topics, limit=500)
            for event in events:
                yield event
            replayed += len(events)
            if len(events) < 500:
                return
            cursor = events[-1].cursor

    async def _live(self, subscriber: Subscriber, sent: dict[str, int], single_job: bool
                    ) -> AsyncIterator[bytes]:
        while True:
            try:
                frame = await asyncio.wait_for(subscriber.queue.get(), self.heartbeat)
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            if frame is None:
                return
            if _fresh(frame, sent):
                yield frame.data
                if single_job and frame.terminal:
                    return


def _fresh(frame: Frame, sent: dict[str, int]) -> bool:
    if sent.get(frame.job_id, 0) >= frame.version:
        return False
    sent[frame.job_id] = frame.version
    return True


def _last_event_id(request: Request) -> str | None:
    value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return value.strip() or None if value else None


def _topics(request: Request) -> list[str]:
    params = request.query_params
    topics = [*params.getlist("topic"), *(f"job:{j}" for j in params.getlist("job"))]
    topics = list(dict.fromkeys(t for t in topics if t))
    if not topics:
        raise ApiError("name at least one topic= or job=", code="invalid_request")
    if len(topics) > MAX_GRANTS or any(len(t) > MAX_TOPIC for t in topics):
        raise ApiError(f"at most {MAX_GRANTS} topics of {MAX_TOPIC} characters",
                       code="invalid_request")
    return topics


def _grants_job_topic(grant: Grant, topic: str) -> bool:
    return topic.startswith("job:") and topic[4:] in grant.jobs


def _strings(body: dict[str, object], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(
            isinstance(v, str) and 0 < len(v) <= MAX_TOPIC for v in value):
        raise ApiError(f"{name}: expected a list of strings", code="invalid_request",
                       details={"field": name})
    if len(value) > MAX_GRANTS:
        raise ApiError(f"{name}: at most {MAX_GRANTS}", code="invalid_request",
                       details={"field": name})
    return list(value)
