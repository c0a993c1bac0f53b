"""HTTP plumbing every route shares: the error envelope, request ids, capped JSON bodies.

Errors leave as `{"error", "message", "details", "request_id"}` (CONTRACT section 7) and
every response carries `X-Request-ID`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.errors import ApiError

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "invalid_payload", 429: "rate_limited",
          500: "internal_error", 502: "bad_gateway", 503: "unavailable"}


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


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    return error_response(request, exc.status_code, code, str(exc.detail),
                          headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal_error", "the relay failed on this request")


class RequestIdMiddleware:
    """Gives every request an id (the caller's `X-Request-ID` when sane) and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never held whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; an ApiError rather than an "unhandled error" in the log.
        raise ApiError("the client went away before sending the whole body",
                       code="client_disconnected") from None
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(f"the body is larger than {limit} bytes", status=413,
                    code="payload_too_large", details={"limit": limit})


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ApiError(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError("the body is not valid JSON: nested too deeply",
                       code="invalid_json") from None


async def read_json(request: Request, limit: int = 65536) -> Any:
    """A JSON request body for the API (not webhooks, which verify the raw bytes first)."""
    return parse_json(await read_body(request, limit))


def json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError("the body must be a JSON object", code="invalid_request")
    return value
