"""API key checks, constant-time."""

from __future__ import annotations

import hmac

from starlette.requests import Request


def header_matches(request: Request, header: str, expected: str) -> bool:
    given = request.headers.get(header, "")
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_matches(request: Request, api_key: str) -> bool:
    return header_matches(request, "authorization", f"Bearer {api_key}")
