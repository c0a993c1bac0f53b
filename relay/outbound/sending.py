"""One outbound webhook attempt: the payload, its Standard Webhooks signature, and the POST,
through a `Lanes` client (which keeps no cookies), to the address the SSRF guard checked.
`Sender.send` reports what came of it as a `Sent`; httpx's exceptions end in this module.
"""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from relay import codec
from relay.errors import TargetError
from relay.models import Event, isoformat, utcnow
from relay.outbound.targets import Guard
from relay.signing import retry_after, signing_key, standard_signature
from relay.store.outbox import Attempt, Delivery, Subscription

TIMEOUT = httpx.Timeout(15.0, connect=5.0)
MAX_ANSWER = 65536
USER_AGENT = "relay-webhooks/1"

Lane = httpx.AsyncClient
"""An HTTP client of one connection, from `Lanes`."""


def payload(event: Event) -> bytes:
    return codec.dumps_bytes({"type": "job.updated", "timestamp": event.received_at,
                        "data": event.job.to_dict()})


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    signature = standard_signature(key, f"{webhook_id}.{timestamp}.".encode() + body)
    return {"content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": f"v1,{signature}"}


@dataclass(frozen=True, slots=True)
class Sent:
    """How one attempt went; `result` is its `relay_outbound_attempts` label."""

    attempt: Attempt
    result: str
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.attempt.status is not None and 200 <= self.attempt.status < 300


def result_label(status: int) -> str:
    if 200 <= status < 300:
        return "success"
    if status == 410:
        return "gone"
    return "server_error" if status >= 500 else "client_error"


class Sender:
    """Posts one subscription's deliveries. `send` never raises for what the consumer or the
    network did: httpx's exceptions end here, as the attempt's error."""

    def __init__(self, subscription: Subscription, guard: Guard) -> None:
        self.subscription = subscription
        self.guard = guard
        self.key = signing_key(subscription.secret) or b""

    async def send(self, delivery: Delivery, client: Lane) -> Sent:
        event = delivery.event
        return await self.post(event.cursor, payload(event), client)

    async def post(self, webhook_id: str, body: bytes, client: Lane) -> Sent:
        """One signed POST of `body`."""
        at, started = isoformat(utcnow()), time.monotonic()
        try:
            status, wait = await self._post(webhook_id, body, client)
        except TargetError as exc:  # refused before any request was made
            return _failed(at, started, str(exc), "refused")
        except httpx.TimeoutException:
            return _failed(at, started, f"no answer within {TIMEOUT.read:g} s", "timeout")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return _failed(at, started, f"{type(exc).__name__}: {exc}"[:300], "unreachable")
        error = None if 200 <= status < 300 else f"answered {status}"
        attempt = Attempt(at, _since(started), status, error)
        return Sent(attempt, result_label(status), wait)

    async def _post(self, webhook_id: str, body: bytes, client: Lane
                    ) -> tuple[int, float | None]:
        target = await self.guard.target(self.subscription.url)
        headers = {**target.headers,
                   **signed_headers(self.key, webhook_id, int(time.time()), body)}
        request = client.build_request("POST", target.url, content=body, headers=headers,
                                       extensions=target.extensions)
        response = await client.send(request, stream=True)
        try:
            await _skim(response)
        finally:
            await response.aclose()
        return response.status_code, retry_after(response.headers.get("retry-after"))


async def _skim(response: httpx.Response) -> None:
    """Read (and drop) an answer of up to MAX_ANSWER bytes: a connection is only kept alive
    for the next delivery once its answer was read whole; a longer one closes it."""
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_ANSWER:
            return


def _failed(at: str, started: float, error: str, result: str) -> Sent:
    return Sent(Attempt(at, _since(started), None, error), result)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 4)


class Lanes:
    """Up to `size` HTTP clients of one connection each: one per request in flight, kept
    alive between deliveries. httpx's pool does work per request for every connection it
    holds, so one pool of 16 connections costs about twice the CPU per delivery of 16 pools
    of one (measured with tests/benchmarks/bench_outbound.py)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[Lane] = []
        self._made: list[Lane] = []

    @property
    def available(self) -> int:
        return len(self._free) + self.size - len(self._made)

    def take(self) -> Lane:
        if self._free:
            return self._free.pop()  # the most recently used: its connection is still open
        client = httpx.AsyncClient(timeout=TIMEOUT, limits=_ONE, verify=_tls(),
                                   follow_redirects=False, cookies=_no_cookies())
        self._made.append(client)
        return client

    def give(self, client: Lane) -> None:
        self._free.append(client)

    async def aclose(self) -> None:
        for client in self._made:
            await client.aclose()


_ONE = httpx.Limits(max_connections=1, max_keepalive_connections=1)


def _no_cookies() -> CookieJar:
    """A jar that keeps nothing: a lane is shared by every delivery of its subscription, and
    httpx would otherwise send a consumer's Set-Cookie back with the next one (a session that
    no delivery asked for, and a channel between deliveries)."""
    return CookieJar(DefaultCookiePolicy(allowed_domains=[]))


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every lane: making one costs milliseconds."""
    return httpx.create_ssl_context()
