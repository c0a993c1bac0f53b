"""Server-sent event streams (CONTRACT section 5) and the subscribe tokens that open them.

A stream subscribes to the hub first, then sends what came before (the current state of each
job, or exactly the events after `Last-Event-ID`), then the hub's live frames. Subscribing
first means nothing falls between the two. An event can arrive both ways only while the
backlog and the queue overlap: the stream remembers the version of each job its backlog sent
and skips live frames at or below it (a job's versions only go up; the hub sends each event
once, in order).

The first page of the backlog is read before the response starts, so a finished job's stream
is a 204, not a stream that breaks after its headers.

When the events after `Last-Event-ID` cannot all be sent (the store no longer keeps them, never
gave that cursor, or there are more than MAX_REPLAY), the stream says so with an
`event: relay.reset` whose data is `{"reason": ...}`, then sends the current state of each
job, as a new connection gets it. A client keeps what it has and applies what follows; one
that does not listen for `relay.reset` still receives the current state as ordinary
`job.updated` events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.auth import DEFAULT_TTL, MAX_GRANTS, MAX_TTL, Access, Grant, Tokens
from relay.errors import ApiError, CursorExpired, InvalidCursor
from relay.fanout.hub import HEARTBEAT, Frame, Hub, Subscriber, encode
from relay.fanout.stream import EventStream
from relay.models import Event, Job
from relay.store import Store
from relay.web import json_object, read_json

RETRY_MS = 3000
PAGE = 500
MAX_REPLAY = 10_000
SNAPSHOT_LIMIT = 100
MAX_TOPIC = 256

RETRY = f"retry: {RETRY_MS}\n\n".encode()
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

CURSOR_EXPIRED = "cursor_expired"
TOO_FAR_BEHIND = "too_far_behind"
UNKNOWN_CURSOR = "unknown_cursor"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reset:
    """The events after the client's cursor are not all sent; the current state follows."""

    reason: str

    @property
    def data(self) -> bytes:
        body = json.dumps({"reason": self.reason}, separators=(",", ":"))
        return f"event: relay.reset\ndata: {body}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a stream sends before live frames: `first`, read before the response starts,
    then (when resuming and the first page was full) the rest of the log after it. With
    `reset`, `first` is the current state, announced by a `relay.reset` of that reason."""

    topics: Sequence[str]
    last_id: str | None
    first: list[Event]
    reset: str | None = None


class Streams:
    def __init__(self, store: Store, hub: Hub, access: Access, tokens: Tokens) -> None:
        self.store = store
        self.hub = hub
        self.access = access
        self.tokens = tokens

    async def job_events(self, request: Request) -> Response:
        """`GET /v1/jobs/{id}/events`: one job, closed after its terminal event."""
        grant = self._grant(request)
        job = await self._visible_job(grant, request.path_params["id"])
        return await self._open([f"job:{job.id}"], _last_event_id(request), job)

    async def events(self, request: Request) -> Response:
        """`GET /v1/events?topic=…&job=…`: many jobs at once."""
        grant = self._grant(request)
        topics = _topics(request)
        for topic in topics:
            await self._check_topic(grant, topic)
        return await self._open(topics, _last_event_id(request), None)

    async def create_token(self, request: Request) -> Response:
        """`POST /v1/tokens {"jobs", "topics", "ttl"}`: a token a browser can subscribe with."""
        self.access.require_key(request.headers.get("authorization"))
        body = json_object(await read_json(request))
        jobs = _strings(body, "jobs")
        topics = _strings(body, "topics")
        ttl = body.get("ttl", DEFAULT_TTL)
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
                    ) -> Response:
        """A stream of `topics`; `job` is the one job of a single-job stream."""
        subscriber = self.hub.subscribe(topics)
        try:
            backlog = await self._first_page(topics, last_id)
        except BaseException:
            self.hub.unsubscribe(subscriber)
            raise
        if job is not None and job.terminal and last_id is not None and not backlog.first:
            self.hub.unsubscribe(subscriber)
            return Response(status_code=204)  # tells the browser to stop reconnecting
        chunks = self._chunks(subscriber, backlog, job is not None)
        return EventStream(chunks, subscriber, self.hub, headers=_HEADERS)

    async def _first_page(self, topics: Sequence[str], last_id: str | None) -> Backlog:
        if last_id is None:
            # The newest jobs, sent oldest cursor first: the last id seen is a resume point.
            return Backlog(topics, None, await self.store.latest(topics, SNAPSHOT_LIMIT))
        try:
            events = await self.store.read_since(last_id, topics=topics, limit=PAGE)
        except (CursorExpired, InvalidCursor) as exc:
            # A browser's EventSource resends its Last-Event-ID forever: an error here would
            # strand it, so a cursor the store cannot place (older than it keeps, or from a
            # store since reset) gets the current state instead.
            reason = CURSOR_EXPIRED if isinstance(exc, CursorExpired) else UNKNOWN_CURSOR
            logger.info("a subscriber resumed from a cursor the store cannot place (%s); "
                        "it gets relay.reset and the current state", reason)
            return Backlog(topics, None, await self.store.latest(topics, SNAPSHOT_LIMIT),
                           reset=reason)
        return Backlog(topics, last_id, events)

    async def _chunks(self, subscriber: Subscriber, backlog: Backlog, single_job: bool
                      ) -> AsyncGenerator[bytes, None]:
        sent: dict[str, int] = {}
        yield RETRY
        replayed = self._replayed(backlog, sent)
        del backlog  # what was sent first is not kept for the life of the stream
        async for data, terminal in replayed:
            yield data
            if single_job and terminal:
                return
        data = b""  # nor its last frame
        async for chunk in self._live(subscriber, sent, single_job):
            yield chunk

    async def _replayed(self, backlog: Backlog, sent: dict[str, int]
                        ) -> AsyncIterator[tuple[bytes, bool]]:
        async for item in self._backlog(backlog):
            if isinstance(item, Reset):
                yield item.data, False
                continue
            frame = encode(item)
            if sent.get(frame.job_id, 0) < frame.version:
                sent[frame.job_id] = frame.version
                yield frame.data, frame.terminal

    async def _backlog(self, backlog: Backlog) -> AsyncIterator[Event | Reset]:
        if backlog.reset is not None:
            yield Reset(backlog.reset)
        for event in backlog.first:
            yield event
        if backlog.last_id is not None and len(backlog.first) == PAGE:
            async for item in self._replay(backlog.topics, backlog.first[-1].cursor):
                yield item

    async def _replay(self, topics: Sequence[str], cursor: str
                      ) -> AsyncIterator[Event | Reset]:
        # Capped: a client more than MAX_REPLAY events behind gets the current state of the
        # newest jobs instead of the rest of the log; so does one whose cursor the store
        # trimmed away while it was catching up.
        reason = TOO_FAR_BEHIND
        try:
            for _ in range(MAX_REPLAY // PAGE - 1):
                events = await self.store.read_since(cursor, topics=topics, limit=PAGE)
                for event in events:
                    yield event
                if len(events) < PAGE:
                    return
                cursor = events[-1].cursor
        except CursorExpired:
            reason = CURSOR_EXPIRED
        except InvalidCursor:  # the store was reset while the client caught up
            reason = UNKNOWN_CURSOR
        yield Reset(reason)
        for event in await self.store.latest(topics, SNAPSHOT_LIMIT):
            yield event

    async def _live(self, subscriber: Subscriber, sent: dict[str, int], single_job: bool
                    ) -> AsyncIterator[bytes]:
        # A stream that fell behind sends everything waiting in one chunk: one write, not
        # one per frame, exactly when writes are what it cannot keep up with.
        mailbox = subscriber.mailbox
        while True:
            frames = [await mailbox.get(), *mailbox.get_waiting()]
            chunk, done = _batch(frames, sent, single_job)
            if chunk:
                yield chunk
            if done:
                return


def _batch(frames: list[Frame | None], sent: dict[str, int], single_job: bool
           ) -> tuple[bytes, bool]:
    """The bytes to send for `frames`, and whether the stream ends after them."""
    parts: list[bytes] = []
    for frame in frames:
        if frame is None:
            return b"".join(parts), True
        if frame is HEARTBEAT or _unseen(frame, sent):
            parts.append(frame.data)
            if single_job and frame.terminal:
                return b"".join(parts), True
    return b"".join(parts), False


def _unseen(frame: Frame, sent: dict[str, int]) -> bool:
    """Whether a live frame is new to this stream. Only jobs the backlog sent can repeat, and
    once a newer frame of one arrives, none can again: its entry is forgotten, so `sent`
    never outgrows the backlog."""
    seen = sent.get(frame.job_id)
    if seen is None:
        return True
    if frame.version <= seen:
        return False
    del sent[frame.job_id]
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
