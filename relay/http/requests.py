"""Reading what a client sends, within the limits of relay.limits: capped bodies, JSON, and
query parameters. Anything wrong is an `ApiError` that names the field."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from starlette.requests import ClientDisconnect, Request

from relay import codec
from relay.errors import ApiError
from relay.limits import API_BODY_BYTES, TEXT_LENGTH, topics_problem


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
        return codec.loads(body)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ApiError(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError("the body is not valid JSON: nested too deeply",
                       code="invalid_json") from None


async def read_object(request: Request) -> dict[str, Any]:
    """The JSON object an API request carries (webhooks verify their raw bytes first)."""
    value = parse_json(await read_body(request, API_BODY_BYTES))
    if not isinstance(value, dict):
        raise ApiError("the body must be a JSON object", code="invalid_request")
    return value


def invalid(field: str, problem: str, status: int = 422) -> ApiError:
    return ApiError(f"{field}: {problem}", status=status, code="invalid_request",
                    details={"field": field})


def text_field(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip() or len(value) > TEXT_LENGTH:
        raise invalid(field, f"required, a string of 1 to {TEXT_LENGTH} characters")
    return value


def topics_field(body: dict[str, Any], field: str, most: int, *, least: int = 0,
                 default: Sequence[str] = (), status: int = 422) -> list[str]:
    """A list of topics (or job ids) in a request body, checked by `relay.limits`."""
    value = body.get(field, list(default))
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise invalid(field, "expected a list of strings", status)
    problem = topics_problem(value, most, least=least)
    if problem is not None:
        raise invalid(field, problem, status)
    return list(dict.fromkeys(value))


def flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise invalid(name, "expected true or false", 400)


def seconds(value: str | None, name: str, default: float, most: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= most:
        raise invalid(name, f"expected seconds from 0 to {most:g}", 400)
    return number


def whole_number(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise invalid(name, f"expected a whole number from {low} to {high}", 400)
    return int(value)
