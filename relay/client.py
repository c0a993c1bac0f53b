"""A Python client for relay: the jobs API, event streams that resume
across disconnects, and `verify_delivery` for consumers of relay's outbound webhooks.

    async with RelayClient("https://relay.example.com", api_key="…") as relay:
        tracked = await relay.track("lipsync", "gen-123", topics=["user:42"])
        async for job in relay.follow(tracked["job"]["id"]):
            print(job["state"], job["progress"])  # ends after the job's terminal state

Every error the relay answers, and every failure to reach it, is raised as `RelayApiError`,
carrying the contract's envelope (`error`, `message`, `details`, `request_id`) and the status.
`follow` instead reconnects through passing trouble (a dropped connection, a restart, `429`,
`5xx`), sending the last cursor it saw as `Last-Event-ID`, so no event is missed or repeated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from relay.signing import verify

Job = dict[str, Any]
Query = dict[str, str | list[str]]  # a stream's query; named here, as RelayClient.list hides list

STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)  # heartbeats come every 15 s by default
DELIVERY_TOLERANCE = 300.0  # seconds a delivery's webhook-timestamp may differ from now
_STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

logger = logging.getLogger(__name__)


class RelayApiError(Exception):
    """An error answer of the relay (`status` is its HTTP status), or no answer at all
    (`status` None, `error` "unreachable"). The fields are the contract's error envelope."""

    def __init__(self, status: int | None, error: str, message: str,
                 details: Mapping[str, Any] | None = None, request_id: str | None = None
                 ) -> None:
        super().__init__(f"{status or 'no answer'} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.details = details
        self.request_id = request_id

    @property
    def envelope(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, "details": self.details,
                "request_id": self.request_id}

    @property
    def passing(self) -> bool:
        """Whether trying again later may succeed: no answer, `429` or a `5xx`."""
        return self.status is None or self.status == 429 or self.status >= 500

    @classmethod
    def from_response(cls, response: httpx.Response) -> RelayApiError:
        """The envelope of an error answer; one that is not an envelope (a proxy's page)
        becomes `http_<status>` with the start of its text."""
        try:
            body = response.json()
        except ValueError:
            body = None
        request_id = response.headers.get("x-request-id")
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            return cls(response.status_code, f"http_{response.status_code}",
                       response.text[:200], None, request_id)
        details = body.get("details")
        return cls(response.status_code, body["error"], str(body.get("message", "")),
                   details if isinstance(details, dict) else None,
                   body.get("request_id") or request_id)

    @classmethod
    def unreachable(cls, exc: httpx.HTTPError) -> RelayApiError:
        return cls(None, "unreachable", f"{type(exc).__name__}: {exc}")


class InvalidDelivery(Exception):
    """A webhook delivery that does not prove it came from relay; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid delivery: {reason}")
        self.reason = reason


class RelayClient:
    """An async client of one relay. `api_key` is sent as `Authorization: Bearer`; event
    streams may use a subscribe `token` instead. Use it as `async with`, or call `aclose`."""

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout: float = 10.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                       timeout=timeout)

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the jobs API ---------------------------------------------------------------------

    async def track(self, provider: str, external_id: str, *, topics: Sequence[str] = (),
                    metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start tracking a provider's job: `{"job", "webhook_url", "subscribe_token",
        "events_url"}`. Tracking the same job again answers the same job."""
        body = {"provider": provider, "external_id": external_id, "topics": list(topics),
                "metadata": dict(metadata or {})}
        return await self._call("POST", "/v1/jobs", json=body)  # type: ignore[no-any-return]

    async def get(self, job_id: str) -> Job:
        return await self._call("GET", f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    async def list(self, **filters: str | int) -> dict[str, Any]:
        """A page of jobs, newest first: `{"jobs", "total", "limit", "offset"}`. Filters are
        the query parameters: provider, state, topic, external_id, limit, offset."""
        return await self._call("GET", "/v1/jobs", params=filters)  # type: ignore[no-any-return]

    async def wait(self, job_id: str, timeout: float = 30.0) -> Job:
        """The job once it is terminal, or as it is after `timeout` seconds (at most 55)."""
        params = {"wait": "true", "timeout": f"{timeout:g}"}
        answer = await self._call("GET", f"/v1/jobs/{job_id}", params=params,
                                  timeout=timeout + 10)
        return answer  # type: ignore[no-any-return]

    async def cancel(self, job_id: str) -> Job:
        """Cancel at the provider (`jobstatus` jobs); `409 cancel_not_supported` otherwise."""
        return await self._call("POST", f"/v1/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    async def token(self, *, jobs: Sequence[str] = (), topics: Sequence[str] = (),
                    ttl: int = 3600) -> dict[str, Any]:
        """A subscribe token for a browser or `follow`: `{"token", "expires_at"}`."""
        body = {"jobs": list(jobs), "topics": list(topics), "ttl": ttl}
        return await self._call("POST", "/v1/tokens", json=body)  # type: ignore[no-any-return]

    async def _call(self, method: str, path: str, *, json: Any = None,
                    params: Mapping[str, str | int] | None = None,
                    timeout: float | None = None) -> Any:
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = await self._http.request(method, path, json=json, params=params,
                                                 **extra)
        except httpx.HTTPError as exc:
            raise RelayApiError.unreachable(exc) from exc
        if not response.is_success:
            raise RelayApiError.from_response(response)
        return response.json()

    # -- event streams --------------------------------------------------------------------

    async def follow(self, job_id: str | None = None, topics: Sequence[str] | None = None, *,
                     token: str | None = None, last_event_id: str | None = None,
                     on_reset: Callable[[str], None] | None = None,
                     reconnect_delay: float | None = None) -> AsyncIterator[Job]:
        """Jobs as they change, over SSE: one job (ends after its terminal state, or at once
        when it was over before `last_event_id`) or every job of `topics` (never ends).

        A new stream starts with the current state of each job; `last_event_id` resumes
        after that cursor instead. Across disconnects it resumes from the last cursor seen.
        When the relay cannot place a cursor it says `relay.reset`: `on_reset(reason)` is
        called and the current state of each job follows. Between attempts it waits
        `reconnect_delay` seconds, or what the relay's `retry:` asks."""
        path, params = _stream_target(job_id, topics, token)
        position = _Position(last_event_id, single_job=job_id is not None)
        while True:
            try:
                async for job in self._stream_once(path, params, position, on_reset):
                    yield job
            except RelayApiError as exc:
                if not exc.passing:
                    raise
                logger.info("relay answered %s %s; reconnecting", exc.status, exc.error)
            except httpx.TransportError as exc:
                logger.info("event stream interrupted (%s); resuming", type(exc).__name__)
            if position.done:
                return
            await asyncio.sleep(position.retry if reconnect_delay is None else reconnect_delay)

    async def _stream_once(self, path: str, params: Query,
                           position: _Position, on_reset: Callable[[str], None] | None
                           ) -> AsyncIterator[Job]:
        headers = {"last-event-id": position.last_event_id} if position.last_event_id else {}
        async with aconnect_sse(self._http, "GET", path, params=params, headers=headers,
                                timeout=STREAM_TIMEOUT) as source:
            if source.response.status_code == 204:  # the job ended before our cursor
                position.done = True
                return
            if not source.response.is_success:
                await source.response.aread()
                raise RelayApiError.from_response(source.response)
            async for event in source.aiter_sse():
                job = position.apply(event, on_reset)
                if job is not None:
                    yield job
                if position.done:
                    return


@dataclass
class _Position:
    """Where a followed stream is: the last cursor seen, whether it is over for good, and
    the reconnect delay (seconds) the relay asked for with `retry:`."""

    last_event_id: str | None
    single_job: bool
    done: bool = False
    retry: float = 3.0

    def apply(self, event: ServerSentEvent, on_reset: Callable[[str], None] | None
              ) -> Job | None:
        """The job an event carries, if any, after noting its cursor and retry delay."""
        if event.retry is not None:
            self.retry = event.retry / 1000
        if event.id:
            self.last_event_id = event.id
        if event.event == "relay.reset":
            reason = str(event.json().get("reason", "")) if event.data else ""
            logger.info("relay.reset (%s): the current state of each job follows", reason)
            if on_reset is not None:
                on_reset(reason)
            return None
        if event.event != "job.updated":  # heartbeats, retry, relay:ops events
            return None
        job: Job = event.json()
        self.done = self.single_job and job.get("terminal") is True
        return job


def _stream_target(job_id: str | None, topics: Sequence[str] | None, token: str | None
                   ) -> tuple[str, Query]:
    if (job_id is None) == (not topics):
        raise ValueError("follow one job_id, or a non-empty list of topics")
    params: Query = {"token": token} if token else {}
    if job_id is not None:
        return f"/v1/jobs/{job_id}/events", params
    return "/v1/events", {**params, "topic": list(topics or ())}


# -- outbound webhooks ----------------------------------------------------------------------

def verify_delivery(headers: Mapping[str, str], body: bytes, secret: str | Sequence[str], *,
                    tolerance: float = DELIVERY_TOLERANCE, now: float | None = None
                    ) -> dict[str, Any]:
    """The payload (`{"type", "timestamp", "data"}`) of a delivery relay signed the Standard
    Webhooks way with `secret` (`whsec_…`; several during a rotation), checked over the raw
    `body` before it is parsed. Raises InvalidDelivery, whose `reason` says why, otherwise."""
    lowered = {name.lower(): value for name, value in headers.items()}
    standard = {name: lowered[name] for name in _STANDARD_HEADERS if name in lowered}
    if len(standard) < len(_STANDARD_HEADERS):
        raise InvalidDelivery("missing_signature")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    problem = verify(standard, body, secrets, now=time.time() if now is None else now,
                     tolerance=tolerance)
    if problem is not None:
        raise InvalidDelivery(problem)
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidDelivery("invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidDelivery("invalid_json")
    return payload
