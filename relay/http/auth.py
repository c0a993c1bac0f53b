"""Who is calling: an API key (everything), a subscribe token (its grant), or nobody.

With no keys configured the API is open, which the settings allow on loopback only.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.requests import Request

from relay.errors import ApiError
from relay.tokens import FULL_ACCESS, Grant, Tokens


def api_key_valid(header: str | None, keys: Collection[str]) -> bool:
    """Whether an `Authorization: Bearer <key>` header names one of `keys` (constant time)."""
    if not header or not header.lower().startswith("bearer "):
        return False
    given = header[7:].strip().encode()
    return any(hmac.compare_digest(given, key.encode()) for key in keys)


class Access:
    def __init__(self, keys: Collection[str], tokens: Tokens) -> None:
        self.keys = tuple(keys)
        self.tokens = tokens

    @property
    def open(self) -> bool:
        """Whether the API needs no key (loopback with no keys configured)."""
        return not self.keys

    def require_key(self, request: Request) -> None:
        if self.keys and not api_key_valid(request.headers.get("authorization"), self.keys):
            raise ApiError("a valid API key is required (Authorization: Bearer <key>)",
                           status=401, code="unauthorized")

    def grant(self, request: Request) -> Grant:
        """What the caller may see: its `?token=`'s grant, else everything with an API key."""
        token = request.query_params.get("token")
        if token:
            return self.tokens.read_subscribe_token(token)
        self.require_key(request)
        return FULL_ACCESS
