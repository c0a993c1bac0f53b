"""The relay's own exceptions. Foreign ones (sqlite3, redis, httpx) are translated at the
module that meets them and never travel further. None of these knows HTTP: `relay.http.errors`
decides how each is answered.

    RelayError
    ├── ConfigError          bad configuration; fails startup with one line
    ├── StoreError           the store could not read or write                   (503)
    ├── CursorError          a cursor the store cannot place
    │   ├── UnknownCursor    one it never gave, or gave before it was reset
    │   └── CursorExpired    older than the events it still keeps
    ├── ProviderError        a provider's API failed (pollers, cancel)
    ├── TargetError          an outbound webhook target refused or unresolved
    ├── PayloadError         a provider payload that does not fit its schema     (422)
    ├── TokenError           a subscribe token that is altered or expired        (401)
    ├── Refused              a command the services will not carry out           (404/409/502)
    ├── Unverified           a webhook delivery that proves nothing              (401)
    └── ApiError             a request the HTTP layer refuses, in the error envelope

This module imports nothing from relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is unusable. The message is one line that names the key."""


class StoreError(RelayError):
    """The store failed; the request that needed it could not be answered."""


class CursorError(RelayError):
    """A cursor the store cannot place in its log."""

    def __init__(self, cursor: str, message: str) -> None:
        super().__init__(message)
        self.cursor = cursor[:64]


class UnknownCursor(CursorError):
    """A cursor the store did not give out (or gave before it was reset)."""

    def __init__(self, cursor: str) -> None:
        super().__init__(cursor, f"unknown cursor {cursor[:64]!r}")


class CursorExpired(CursorError):
    """A cursor from before the store's retention: the events after it are partly gone."""

    def __init__(self, cursor: str) -> None:
        super().__init__(cursor, f"cursor {cursor[:64]!r} is older than the events still kept")


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


class PayloadError(RelayError):
    """A provider payload that does not fit its schema. The message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.message = f"{field}: {problem}"
        self.field = field


class TokenError(RelayError):
    """A subscribe token that is not the relay's (`code` invalid_token) or has expired
    (`code` token_expired)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Refusal(StrEnum):
    """Why a command is refused, in terms the HTTP layer turns into a status."""

    MISSING = "missing"  # what it names does not exist
    CONFLICT = "conflict"  # the state of things does not allow it
    UPSTREAM = "upstream"  # a provider it needed failed


class Refused(RelayError):
    """A command a service will not carry out: `code` is the stable word the client sees,
    `refusal` the kind of reason, `details` what helps the client."""

    def __init__(self, refusal: Refusal, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.code = code
        self.message = message
        self.details = details


class Unverified(RelayError):
    """A webhook delivery that proved nothing. The sender learns only `invalid_signature`;
    `reason` is for the operator's log and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__("the delivery could not be verified")
        self.reason = reason


class ApiError(RelayError):
    """A request the HTTP layer refuses: answered as `{"error", "message", "details",
    "request_id"}` with `status`."""

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
