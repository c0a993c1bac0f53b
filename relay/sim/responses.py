"""Error envelopes and query parsing shared by the simulated providers.

Every error answers `{"error", "message", "details", "request_id"}`, the envelope the seed
documents list, with the same id in `X-Request-ID`.
"""

from __future__ import annotations

import math
import uuid

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse, PlainTextResponse, Response

CODES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    422: "unprocessable_entity",
    425: "too_early",
    429: "rate_limited",
    451: "unavailable_for_legal_reasons",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}

TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no", ""})


class SimError(Exception):
    """An error a simulated provider answers in the seeds' envelope (as plain text without
    `envelope`, the way a proxy in front of a provider might)."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 retry_after: float | None = None, envelope: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or CODES.get(status, "error")
        self.retry_after = retry_after
        self.envelope = envelope


def format_retry_after(seconds: float) -> str:
    """Whole seconds as an integer (`2`); fractions kept (`0.5`) so tests can stay fast."""
    return f"{seconds:g}"


def error_response(error: SimError) -> Response:
    request_id = f"req_{uuid.uuid4().hex[:20]}"
    headers = {"X-Request-ID": request_id}
    if error.retry_after is not None:
        headers["Retry-After"] = format_retry_after(error.retry_after)
    if not error.envelope:
        return PlainTextResponse(error.message, status_code=error.status, headers=headers)
    body = {"error": error.code, "message": error.message, "details": None,
            "request_id": request_id}
    return JSONResponse(body, status_code=error.status, headers=headers)


def invalid(name: str, problem: str) -> SimError:
    return SimError(400, f"{name} {problem}", code="invalid_parameter")


def int_param(params: QueryParams, name: str, default: int, *, minimum: int = 0) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, "must be an integer") from None
    if value < minimum:
        raise invalid(name, f"must be at least {minimum}")
    return value


def float_param(params: QueryParams, name: str, default: float, *, maximum: float) -> float:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid(name, "must be a number") from None
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise invalid(name, f"must be between 0 and {maximum:g}")
    return value


def bool_param(params: QueryParams, name: str) -> bool:
    raw = params.get(name)
    if raw is None:
        return False
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise invalid(name, "must be true or false")
