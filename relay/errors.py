"""The relay's own exceptions. Foreign ones (sqlite3, redis, httpx) are translated at the
module that meets them and never travel further.

    RelayError
    ├── ConfigError          bad configuration; fails startup with one line
    ├── StoreError           the store could not read or write
    ├── ProviderError        a provider's API failed (pollers, cancel)
    ├── TargetError          an outbound webhook target refused (private address) or unresolved
    └── ApiError             answered to an HTTP client in the envelope of CONTRACT section 7
        ├── PayloadError     a provider payload that does not fit its schema (422)
        ├── InvalidCursor    a Last-Event-ID or cursor the store never gave (400)
        └── CursorExpired    a cursor older than the events the store still keeps (400)

This module imports nothing from relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is unusable. The message is one line that names the key."""


class StoreError(RelayError):
    """The store failed; the request that needed it could not be answered."""


class ProviderError(RelayError):
    """A provider's API answered with an error or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TargetError(RelayError):
    """An outbound webhook URL the relay will not post to (`address` is the refused one),
    or whose host does not resolve (`address` None)."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class ApiError(RelayError):
    """An error answered to an HTTP client as `{"error", "message", "details", "request_id"}`."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.details = details


class PayloadError(ApiError):
    """A provider payload that does not fit its schema. The message names the field."""

    status = 422
    code = "invalid_payload"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", details={"field": field})
        self.field = field


class InvalidCursor(ApiError):
    """A cursor the store did not give out."""

    status = 400
    code = "invalid_cursor"

    def __init__(self, cursor: str) -> None:
        super().__init__(f"unknown cursor {cursor[:64]!r}", details={"cursor": cursor[:64]})


class CursorExpired(ApiError):
    """A cursor from before the store's retention: the events after it are partly gone."""

    status = 400
    code = "cursor_expired"

    def __init__(self, cursor: str) -> None:
        super().__init__(f"cursor {cursor[:64]!r} is older than the events still kept",
                         details={"cursor": cursor[:64]})
