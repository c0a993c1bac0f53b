"""Proving a webhook delivery genuine (CONTRACT section 3).

`verify()` answers None for a genuine delivery, else the reason it is not. The reason is
logged and counted by the caller, never told to the sender. Every comparison is constant-time
and every configured secret is tried, so secrets can be rotated without dropping deliveries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence

SYNC = "sync-signature"
PRIMARY = "x-signature-primary"
STANDARD = "webhook-signature"
MAX_SIGNATURES = 10


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *,
           now: float, tolerance: float) -> str | None:
    """None when one of the signature headers proves `body` with one of `secrets`."""
    if SYNC in headers:
        return _verify_sync(headers[SYNC], body, secrets, now, tolerance)
    if STANDARD in headers:
        return _verify_standard(headers, body, secrets, now, tolerance)
    if PRIMARY in headers:
        return _verify_primary(headers[PRIMARY], body, secrets)
    return "missing_signature"


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _any_match(expected: Sequence[str], given: Sequence[str]) -> bool:
    # Every pair is compared, so the time taken says nothing about which one matched.
    matched = False
    for mine in expected:
        for theirs in given:
            matched |= hmac.compare_digest(mine.encode(), theirs.encode())
    return matched


def _stale(timestamp: str, now: float, tolerance: float) -> str | None:
    if not timestamp.isdigit() or len(timestamp) > 12:
        return "malformed_timestamp"
    return "stale_timestamp" if abs(now - int(timestamp)) > tolerance else None


# -- Sync-Signature: t=<unix>,v1=<hex> over "<t>." + body ------------------------------------

def _verify_sync(header: str, body: bytes, secrets: Sequence[str], now: float,
                 tolerance: float) -> str | None:
    parts = [part.strip().partition("=") for part in header.split(",")[:MAX_SIGNATURES + 1]]
    stamps = [value for key, _, value in parts if key == "t"]
    given = [value.lower() for key, _, value in parts if key == "v1"]
    if len(stamps) != 1 or not given:
        return "malformed_signature"
    problem = _stale(stamps[0], now, tolerance)
    if problem:
        return problem
    prefix = stamps[0].encode() + b"."
    for candidate in _sync_bodies(body):
        expected = [_hmac_hex(secret.encode(), prefix + candidate) for secret in secrets]
        if _any_match(expected, given):
            return None
    return "signature_mismatch"


def _sync_bodies(body: bytes) -> list[bytes]:
    """The raw body first, then the body re-serialised as compact JSON (senders that sign
    their serialisation rather than the bytes they send)."""
    bodies = [body]
    try:
        parsed = json.loads(body)
    except ValueError:
        return bodies
    for ascii_only in (True, False):
        compact = json.dumps(parsed, separators=(",", ":"), ensure_ascii=ascii_only).encode()
        if compact not in bodies:
            bodies.append(compact)
    return bodies


# -- X-Signature-Primary: <hex> over the raw body --------------------------------------------

def _verify_primary(header: str, body: bytes, secrets: Sequence[str]) -> str | None:
    expected = [_hmac_hex(secret.encode(), body) for secret in secrets]
    return None if _any_match(expected, [header.strip().lower()]) else "signature_mismatch"


# -- Standard Webhooks: v1,<base64> over "<id>.<timestamp>." + body ---------------------------

def _verify_standard(headers: Mapping[str, str], body: bytes, secrets: Sequence[str],
                     now: float, tolerance: float) -> str | None:
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp:
        return "malformed_signature"
    problem = _stale(timestamp, now, tolerance)
    if problem:
        return problem
    given = [sig for version, _, sig in (entry.partition(",") for entry in
             headers[STANDARD].split()[:MAX_SIGNATURES]) if version == "v1"]
    message = f"{msg_id}.{timestamp}.".encode() + body
    expected = [standard_signature(key, message) for key in _standard_keys(secrets)]
    return None if _any_match(expected, given) else "signature_mismatch"


def standard_signature(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def _standard_keys(secrets: Sequence[str]) -> list[bytes]:
    keys = []
    for secret in secrets:
        try:
            keys.append(base64.b64decode(secret.removeprefix("whsec_"), validate=True))
        except (binascii.Error, ValueError):
            keys.append(secret.encode())  # a plain secret: its bytes are the key
    return keys


# -- signing, for the relay's own deliveries and the simulators -------------------------------

def sync_signature_header(secret: str, body: bytes, timestamp: int) -> str:
    return f"t={timestamp},v1={_hmac_hex(secret.encode(), f'{timestamp}.'.encode() + body)}"

