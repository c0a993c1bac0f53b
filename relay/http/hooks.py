"""`POST /hooks/{provider}` and `POST /hooks/{provider}/{token}`: the webhookUrl target.

The hottest route of the relay, so it is a plain ASGI app, reached before Starlette's router
and middlewares (relay.http.RelayApp), that does their part itself: the request id, the error
envelope, the access line, counting each outcome. The order matters: find the provider, check
the content type and the declared length, check what the headers can prove before reading
the body (relay.ingest.webhooks.admit), read the body under its cap, prove it over the raw
bytes, then parse, normalise and store. Only a committed update is answered 202; a repeat is a 200.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

from starlette.routing import Route

from relay import codec
from relay.config import ProviderConfig
from relay.errors import ApiError, PayloadError, Refused, StoreError, Unverified
from relay.http.errors import REFUSAL_STATUS, valid_request_id
from relay.http.requests import parse_json
from relay.ingest.webhooks import WebhookIngest
from relay.runtime import access
from relay.runtime.ids import request_id

logger = logging.getLogger(__name__)

PREFIX = "/hooks/"
_JSON_TYPES = ("application/json", "text/json")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Hooks:
    def __init__(self, ingest: WebhookIngest, max_body: int) -> None:
        self.ingest = ingest
        self.max_body = max_body

    def routes(self) -> list[Route]:
        # Described like any route (and served this way if reached through the router); the
        # application sends `/hooks/` here before its router (see relay.http.RelayApp).
        return [Route("/hooks/{provider}", self, methods=["POST"]),
                Route("/hooks/{provider}/{token}", self, methods=["POST"])]

    def serves(self, scope: Scope) -> bool:
        return bool(scope["path"].startswith(PREFIX))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = _headers(scope)
        rid = valid_request_id(headers.get("x-request-id", "")) or request_id()
        try:
            status, answer = await self._receive(scope, receive, headers)
        except Exception as exc:  # every error becomes an answer in the envelope
            status, answer, extra = _error(exc, rid)
        else:
            extra = []
        body = codec.dumps_bytes(answer)
        try:
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                (b"x-request-id", rid.encode()), *extra]})
            await send({"type": "http.response.body", "body": body})
        finally:
            access.write(scope, status, rid, started)

    async def _receive(self, scope: Scope, receive: Receive, headers: Mapping[str, str]
                       ) -> tuple[int, dict[str, Any]]:
        if scope["method"] != "POST":
            raise ApiError("only POST is allowed here", status=405, code="method_not_allowed")
        name, token = _path(scope["path"])
        provider = self.ingest.provider(name)
        try:
            return await self._deliver(provider, token, headers, receive)
        except (ApiError, PayloadError, Unverified, StoreError) as exc:
            self.ingest.count(provider, _outcome(exc))
            raise

    async def _deliver(self, provider: ProviderConfig, token: str | None,
                       headers: Mapping[str, str], receive: Receive
                       ) -> tuple[int, dict[str, Any]]:
        _check_content_type(headers.get("content-type", ""))
        self._check_length(headers.get("content-length", ""))
        admitted = self.ingest.admit(provider, token, headers)
        body = await self._read(receive)
        replay_key = self.ingest.authenticate(provider, admitted, body)
        applied = await self.ingest.accept(provider, parse_json(body), headers,
                                           job=admitted.job, replay_key=replay_key)
        job_id = applied.job.id if applied.job is not None else None
        if applied.event is None:
            return 200, {"accepted": True, "duplicate": True, "job_id": job_id}
        return 202, {"accepted": True, "job_id": job_id, "cursor": applied.event.cursor}

    def _check_length(self, declared: str) -> None:
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body:
            raise _too_large(self.max_body)

    async def _read(self, receive: Receive) -> bytes:
        """The body, refused with 413 as soon as it passes the cap (never held whole)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError("the client went away before sending the whole body",
                               code="client_disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _too_large(self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _headers(scope: Scope) -> dict[str, str]:
    # A repeated header counts once, its first value (as Starlette's `headers.get`).
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


def _path(path: str) -> tuple[str, str | None]:
    parts = path[len(PREFIX):].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 2 and parts[0]:
        return parts[0], unquote(parts[1])
    raise ApiError("no such webhook URL", status=404, code="not_found")


def _check_content_type(header: str) -> None:
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type and media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        raise ApiError(f"expected application/json, got {media_type[:64]!r}", status=415,
                       code="unsupported_media_type")


def _too_large(limit: int) -> ApiError:
    return ApiError(f"the body is larger than {limit} bytes", status=413,
                    code="payload_too_large", details={"limit": limit})


def _outcome(exc: Exception) -> str:
    """The `relay_webhooks_total` outcome of a refusal: the reason, never told the sender."""
    if isinstance(exc, Unverified):
        return exc.reason
    if isinstance(exc, PayloadError):
        return "invalid_payload"
    if isinstance(exc, StoreError):
        return "store_unavailable"
    return exc.code if isinstance(exc, ApiError) else "error"


def _error(exc: Exception, rid: str) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    status, code, message, details, extra = _describe(exc)
    return status, {"error": code, "message": message, "details": details,
                    "request_id": rid}, extra


def _describe(exc: Exception
              ) -> tuple[int, str, str, Mapping[str, Any] | None, list[tuple[bytes, bytes]]]:
    if isinstance(exc, ApiError):
        allow = [(b"allow", b"POST")] if exc.status == 405 else []
        return exc.status, exc.code, exc.message, exc.details, allow
    if isinstance(exc, Unverified):
        return 401, "invalid_signature", "the delivery could not be verified", None, []
    if isinstance(exc, PayloadError):
        return 422, "invalid_payload", exc.message, {"field": exc.field}, []
    if isinstance(exc, Refused):
        return REFUSAL_STATUS[exc.refusal], exc.code, exc.message, exc.details, []
    if isinstance(exc, StoreError):
        return 503, "unavailable", "the store is unavailable; retry", None, [
            (b"retry-after", b"1")]
    logger.error("unhandled error on a webhook", exc_info=exc)
    return 500, "internal_error", "the relay failed on this request", None, []
