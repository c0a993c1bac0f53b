"""Webhook signatures, both ways, and `Retry-After`: pure functions over bytes and headers.

`verify()` proves a provider's delivery genuine: None for a genuine one, else the reason it is
not. The reason is logged and counted by the caller, never told to the sender. Every
comparison is constant-time and every configured secret is tried, so secrets can be rotated
without dropping deliveries. The relay signs its own outbound deliveries the Standard Webhooks
way (`signing_key`, `standard_signature`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hmac
import json
import math
import re
import secrets as random_bytes
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

SYNC = "sync-signature"
PRIMARY = "x-signature-primary"
STANDARD = "webhook-signature"
MAX_SIGNATURES = 10
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
COMPACT_MAX = 65536
"""Bytes of a body at most for the compact-JSON fallback of Sync-Signature: providers'
status objects are a few kilobytes; re-serialising a megabyte would cost 100 ms of CPU."""
MAX_RETRY_AFTER = 900.0
SECRET_BYTES = 24


@dataclass(frozen=True, slots=True)
class Proof:
    """What a delivery's signature headers prove: `problem` is why they prove nothing (None:
    genuine); `signature` is the signature that matched, which a replay would carry again."""

    problem: str | None
    signature: bytes = b""


def precheck(headers: Mapping[str, str], *, now: float, tolerance: float) -> str | None:
    """What is wrong with a request's signature headers alone (None: nothing yet), checked
    before its body is read: none at all, or a timestamp that is malformed or out of the
    tolerance, proves nothing whatever the body, so the body need not be read."""
    if SYNC in headers:
        stamp, given = _sync_parts(headers[SYNC])
        if stamp is None or not given:
            return "malformed_signature"
        return _stale(stamp, now, tolerance)
    if STANDARD in headers:
        timestamp = headers.get("webhook-timestamp", "")
        if not headers.get("webhook-id") or not timestamp:
            return "malformed_signature"
        return _stale(timestamp, now, tolerance)
    return None if PRIMARY in headers else "missing_signature"


def prove(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *,
          now: float, tolerance: float) -> Proof:
    """Whether one of the signature headers proves `body` with one of `secrets`, checked over
    the raw bytes; the body is never parsed unless the raw check fails (see `_sync_bodies`)."""
    if SYNC in headers:
        return _verify_sync(headers[SYNC], body, secrets, now, tolerance)
    if STANDARD in headers:
        return _verify_standard(headers, body, secrets, now, tolerance)
    if PRIMARY in headers:
        return _verify_primary(headers[PRIMARY], body, secrets)
    return Proof("missing_signature")


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *,
           now: float, tolerance: float) -> str | None:
    """None when one of the signature headers proves `body`, else the reason it does not."""
    return prove(headers, body, secrets, now=now, tolerance=tolerance).problem


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _match(expected: Sequence[bytes], given: Sequence[bytes]) -> Proof:
    # Every pair is compared, so the time taken says nothing about which one matched.
    matched = b""
    for mine in expected:
        for theirs in given:
            if hmac.compare_digest(mine, theirs):
                matched = theirs
    return Proof(None, matched) if matched else Proof("signature_mismatch")


def _stale(timestamp: str, now: float, tolerance: float) -> str | None:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not _TIMESTAMP.fullmatch(timestamp):
        return "malformed_timestamp"
    return "stale_timestamp" if abs(now - int(timestamp)) > tolerance else None


# -- Sync-Signature: t=<unix>,v1=<hex> over "<t>." + body ------------------------------------

def _verify_sync(header: str, body: bytes, secrets: Sequence[str], now: float,
                 tolerance: float) -> Proof:
    stamp, given = _sync_parts(header)
    if stamp is None or not given:
        return Proof("malformed_signature")
    problem = _stale(stamp, now, tolerance)
    if problem:
        return Proof(problem)
    prefix = stamp.encode() + b"."
    keys = [secret.encode() for secret in secrets]
    for candidate in _sync_bodies(body):
        proof = _match([_hmac(key, prefix + candidate) for key in keys], given)
        if proof.problem is None:
            return proof
    return Proof("signature_mismatch")


def _sync_parts(header: str) -> tuple[str | None, list[bytes]]:
    """The one `t=` of a Sync-Signature header (None unless exactly one) and its `v1=`
    signatures, decoded (a sender rotating its secret may send several)."""
    stamps, given = [], []
    for part in header.split(",")[:MAX_SIGNATURES + 1]:
        key, _, value = part.strip().partition("=")
        if key == "t":
            stamps.append(value)
        elif key == "v1":
            given.append(_unhex(value))
    return (stamps[0] if len(stamps) == 1 else None), [g for g in given if g]


def _unhex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b""


def _sync_bodies(body: bytes) -> Iterator[bytes]:
    """The raw body first, then the body re-serialised as compact JSON (senders that sign
    their serialisation rather than the bytes they send). Lazy: a genuine sender that signs
    its bytes costs no JSON round trip. The fallback costs a parse and two serialisations,
    so it is tried only for a body that could be a JSON object of a webhook's usual size:
    a large body with a false signature must not cost the relay much (see COMPACT_MAX)."""
    yield body
    if len(body) > COMPACT_MAX or not body.lstrip().startswith(b"{"):
        return
    try:
        parsed = json.loads(body)
        compact = [json.dumps(parsed, separators=(",", ":"), ensure_ascii=ascii_only).encode()
                   for ascii_only in (True, False)]
    except (ValueError, RecursionError):  # not JSON, or nested too deep to re-serialise
        return
    yield from dict.fromkeys(c for c in compact if c != body)


# -- X-Signature-Primary: <hex> over the raw body --------------------------------------------

def _verify_primary(header: str, body: bytes, secrets: Sequence[str]) -> Proof:
    given = _unhex(header.strip())
    if not given:
        return Proof("malformed_signature")
    return _match([_hmac(secret.encode(), body) for secret in secrets], [given])


# -- Standard Webhooks: v1,<base64> over "<id>.<timestamp>." + body ---------------------------

def _verify_standard(headers: Mapping[str, str], body: bytes, secrets: Sequence[str],
                     now: float, tolerance: float) -> Proof:
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp:
        return Proof("malformed_signature")
    problem = _stale(timestamp, now, tolerance)
    if problem:
        return Proof(problem)
    given = _standard_signatures(headers[STANDARD])
    if not given:
        return Proof("malformed_signature")
    message = f"{msg_id}.{timestamp}.".encode() + body
    return _match([_hmac(key, message) for key in standard_keys(secrets)], given)


def _standard_signatures(header: str) -> list[bytes]:
    """The decoded `v1` signatures of a `webhook-signature` header (space-separated, so a
    sender rotating its secret can sign with both); other versions are skipped."""
    decoded = []
    for entry in header.split()[:MAX_SIGNATURES]:
        version, _, signature = entry.partition(",")
        if version == "v1":
            try:
                decoded.append(base64.b64decode(signature, validate=True))
            except (binascii.Error, ValueError):
                continue
    return decoded


def standard_keys(secrets: Sequence[str]) -> list[bytes]:
    """The HMAC keys of `secrets` for Standard Webhooks. `whsec_<base64>` is decoded the way
    the standardwebhooks libraries do (padding optional); a secret without the prefix is
    tried both decoded and as its own UTF-8 bytes, since providers hand out either."""
    keys: list[bytes] = []
    for secret in secrets:
        encoded = secret.removeprefix("whsec_")
        with contextlib.suppress(binascii.Error, ValueError):
            keys.append(base64.b64decode(encoded + "=="))
        if encoded == secret:
            keys.append(secret.encode())
    return [key for key in dict.fromkeys(keys) if key]


def standard_signature(key: bytes, message: bytes) -> str:
    return base64.b64encode(_hmac(key, message)).decode()


# -- signing, for the relay's own deliveries and the simulators -------------------------------

def sync_signature_header(secret: str, body: bytes, timestamp: int) -> str:
    return f"t={timestamp},v1={_hmac(secret.encode(), f'{timestamp}.'.encode() + body).hex()}"


def new_secret() -> str:
    """A fresh `whsec_` secret for an outbound subscription."""
    return "whsec_" + base64.b64encode(random_bytes.token_bytes(SECRET_BYTES)).decode()


def signing_key(secret: str) -> bytes | None:
    """The HMAC key of a `whsec_<base64>` secret (the prefix optional, as the standardwebhooks
    libraries read it), or None unless it is the base64 of 24 to 64 bytes."""
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if 24 <= len(key) <= 64 else None


# -- Retry-After ------------------------------------------------------------------------------

def retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _seconds_until(date: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return (when - datetime.now(UTC)).total_seconds()

