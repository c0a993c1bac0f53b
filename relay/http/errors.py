"""How every error leaves the relay: `{"error", "message", "details", "request_id"}` with the
status it deserves, and an `X-Request-ID` on every response.

The services below raise the relay's own errors (relay.errors), which know nothing of HTTP;
`HANDLERS` is the one place that decides each one's status and code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.errors import (
    ApiError,
    CursorError,
    PayloadError,
    Refusal,
    Refused,
    StoreError,
    TokenError,
    Unverified,
)
from relay.runtime.ids import request_id as new_request_id

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "invalid_payload", 429: "rate_limited",
          500: "internal_error", 502: "bad_gateway", 503: "unavailable"}
REFUSAL_STATUS = {Refusal.MISSING: 404, Refusal.CONFLICT: 409, Refusal.UPSTREAM: 502}


def valid_request_id(given: str) -> str | None:
    """The caller's `X-Request-ID` when it is sane enough to echo and log."""
    return given if _REQUEST_ID.match(given) else None


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(request: Request, status: int, code: str, message: str,
                   details: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    rid = request_id(request)
    body = {"error": code, "message": message, "details": details, "request_id": rid}
    return JSONResponse(body, status, headers={"X-Request-ID": rid, **(headers or {})})


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.code, exc.message, exc.details)


async def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return error_response(request, REFUSAL_STATUS[exc.refusal], exc.code, exc.message,
                          exc.details)


async def unverified(request: Request, exc: Exception) -> Response:
    return error_response(request, 401, "invalid_signature", "the delivery could not be verified")


async def invalid_payload(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PayloadError)
    return error_response(request, 422, "invalid_payload", exc.message, {"field": exc.field})


async def token_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TokenError)
    return error_response(request, 401, exc.code, str(exc))


async def bad_cursor(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CursorError)
    return error_response(request, 400, "invalid_cursor", str(exc), {"cursor": exc.cursor})


async def store_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(request, 503, "unavailable", "the store is unavailable; retry",
                          headers={"Retry-After": "1"})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    return error_response(request, exc.status_code, code, str(exc.detail),
                          headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal_error", "the relay failed on this request")


Handler = Callable[[Request, Exception], Awaitable[Response]]

HANDLERS: Mapping[Any, Handler] = {
    ApiError: api_error,
    Refused: refused,
    Unverified: unverified,
    PayloadError: invalid_payload,
    TokenError: token_refused,
    CursorError: bad_cursor,
    StoreError: store_unavailable,
    HTTPException: http_error,
    Exception: server_error,
}
"""Starlette's exception handlers: each error of the relay, answered in the envelope."""


async def error_for(request: Request, exc: Exception) -> Response:
    """The answer to `exc`, for a plain ASGI app that Starlette's handlers do not wrap."""
    handler = next(HANDLERS[cls] for cls in type(exc).__mro__ if cls in HANDLERS)
    return await handler(request, exc)


class RequestIdMiddleware:
    """Gives every request an id (the caller's `X-Request-ID` when sane) and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = valid_request_id(given) or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
