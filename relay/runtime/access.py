"""Access lines: one per HTTP request relay serves, written when its response has ended, with
the request id (the `X-Request-ID` the response carries), method, path, status and duration.

Requests through Starlette's router are wrapped (`logged`, from relay.http.RelayApp); the
webhook and stream handlers, which bypass the router, write their own (`write`): a wrapper
is one more coroutine frame that every open stream would hold. Tokens never reach a log:
the value of a `token` query parameter and the token segment of `/hooks/{provider}/{token}`
are replaced. With `relay.access` above info nothing of this runs (a webhook's cost is
measured in microseconds: tests/benchmarks/bench_ingest.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote_plus

logger = logging.getLogger("relay.access")

HIDDEN = "REDACTED"
MAX_PATH = 512
"""Characters of a path an access line keeps."""
_HOOKS = "/hooks/"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
               Awaitable[None]]


def enabled() -> bool:
    return logger.isEnabledFor(logging.INFO)


async def logged(app: App, scope: Scope, receive: Callable[[], Awaitable[Message]],
                 send: Callable[[Message], Awaitable[None]]) -> None:
    """Serve the request with `app`, then write its access line."""
    started = time.perf_counter()
    answered: list[Any] = [0, ""]  # status (0: no response began), request id

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            answered[0] = message["status"]
            answered[1] = _request_id(message.get("headers", ()))
        await send(message)

    try:
        await app(scope, receive, sending)
    finally:
        write(scope, answered[0], answered[1], started)


def write(scope: Scope, status: int, request_id: str, started: float) -> None:
    """The access line of a request begun at `started` (`time.perf_counter()`) and answered
    `status` (0: no response began)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    path = shown_path(scope)
    logger.info("%s %s %d", scope["method"], path, status, extra={
        "request_id": request_id, "method": scope["method"], "path": path, "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2)})


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"x-request-id":
            return value.decode("latin-1")
    return ""


def shown_path(scope: Scope) -> str:
    """The path and query as a log may show them: tokens replaced, printable, capped."""
    path: str = scope["path"]
    if path.startswith(_HOOKS):
        provider, token, _ = path[len(_HOOKS):].partition("/")
        path = _HOOKS + provider + ("/" + HIDDEN if token else "")
    query: bytes = scope.get("query_string", b"")
    if query:
        path += "?" + _redact_query(query.decode("latin-1"))
    if not path.isprintable():
        path = path.encode("unicode_escape").decode("ascii")
    return path[:MAX_PATH]


def _redact_query(query: str) -> str:
    parts = query.split("&")
    for i, part in enumerate(parts):
        name = part.split("=", 1)[0]
        if unquote_plus(name).strip().lower() == "token":
            parts[i] = f"{name}={HIDDEN}"
    return "&".join(parts)
