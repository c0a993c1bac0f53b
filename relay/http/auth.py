"""Who is calling: an API key (everything), a session token standing in for one, a subscribe
token (its grant), or nobody.

With no keys configured the API is open, which the settings allow on loopback only. A session
token (`POST /v1/sessions`) works only while the key it was made from is still configured.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.requests import Request

from relay.errors import ApiError
from relay.tokens import FULL_ACCESS, Grant, Tokens, key_fingerprint


def _bearer(header: str | None) -> str:
    if not header or not header.lower().startswith("bearer "):
        return ""
    return header[7:].strip()


def _named_key(given: str, keys: Collection[str]) -> str | None:
    found = None
    for key in keys:  # every key is compared, so the time does not tell which one matched
        if hmac.compare_digest(given.encode(), key.encode()):
            found = key
    return found if given else None


class Access:
    def __init__(self, keys: Collection[str], tokens: Tokens) -> None:
        self.keys = tuple(keys)
        self.tokens = tokens
        self._fingerprints = {key: key_fingerprint(key) for key in self.keys}

    @property
    def open(self) -> bool:
        """Whether the API needs no key (loopback with no keys configured)."""
        return not self.keys

    def require_key(self, request: Request) -> None:
        if self.keys:
            self.key_id(request)

    def key_id(self, request: Request) -> str:
        """The fingerprint of the API key the caller holds, directly or through a session
        token; 401 when it holds none that is configured."""
        return self._key_id(request.headers.get("authorization"))

    def _key_id(self, authorization: str | None) -> str:
        given = _bearer(authorization)
        key = _named_key(given, self.keys)
        if key is not None:
            return self._fingerprints[key]
        through = self.tokens.session_key(given) if given else None
        if through is not None and through in self._fingerprints.values():
            return through
        raise ApiError("a valid API key is required (Authorization: Bearer <key>)",
                       status=401, code="unauthorized")

    def grant(self, request: Request) -> Grant:
        """What the caller may see: its `?token=`'s grant, else everything with an API key."""
        return self.grant_for(request.query_params.get("token"),
                              request.headers.get("authorization"))

    def grant_for(self, token: str | None, authorization: str | None) -> Grant:
        """`grant`, given the request's `?token=` and `Authorization` header."""
        if token:
            return self.tokens.read_subscribe_token(token)
        if self.keys:
            self._key_id(authorization)
        return FULL_ACCESS
