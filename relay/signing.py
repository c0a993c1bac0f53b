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
import functools
import hmac
import json
import math
import re
import secrets as random_bytes
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery's signature headers, read before its body: the scheme, the signatures it
    gives, and what each scheme signs before the body (`"<t>."`, `"<id>.<t>."`, nothing).
    `problem` is why they can prove nothing whatever the body (None: the body decides)."""

    scheme: str
    signatures: list[bytes] = field(default_factory=list)
    signed_prefix: bytes = b""
    problem: str | None = None


def claim(headers: Mapping[str, str], *, now: float, tolerance: float) -> Claim:
    """What a request's signature headers claim, checked before its body is read: none at
    all, malformed ones, or a timestamp out of the tolerance prove nothing, whatever the
    body, so the body need not be read."""
    if SYNC in headers:
        return _sync_claim(headers[SYNC], now, tolerance)
    if STANDARD in headers:
        return _standard_claim(headers, now, tolerance)
    if PRIMARY in headers:
        given = _unhex(headers[PRIMARY].strip())
        return Claim(PRIMARY, [given]) if given else Claim(PRIMARY,
                                                           problem="malformed_signature")
    return Claim("", problem="missing_signature")


def prove(claimed: Claim, body: bytes, secrets: tuple[str, ...]) -> Proof:
    """Whether the claim's signatures prove `body` with one of `secrets`, checked over the
    raw bytes; the body is never parsed unless the raw check fails (see `_sync_bodies`)."""
    if claimed.problem is not None:
        return Proof(claimed.problem)
    keys = _standard_keys(secrets) if claimed.scheme == STANDARD else _utf8_keys(secrets)
    bodies = _sync_bodies(body) if claimed.scheme == SYNC else iter((body,))
    for candidate in bodies:
        message = claimed.signed_prefix + candidate
        proof = _match([_hmac(key, message) for key in keys], claimed.signatures)
        if proof.problem is None:
            return proof
    return Proof("signature_mismatch")


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *,
           now: float, tolerance: float) -> str | None:
    """None when one of the signature headers proves `body`, else the reason it does not."""
    claimed = claim(headers, now=now, tolerance=tolerance)
    return prove(claimed, body, tuple(secrets)).problem


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


@functools.lru_cache(maxsize=64)
def _utf8_keys(secrets: tuple[str, ...]) -> list[bytes]:
    return [secret.encode() for secret in secrets]


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

def _sync_claim(header: str, now: float, tolerance: float) -> Claim:
    stamp, given = _sync_parts(header)
    if stamp is None or not given:
        return Claim(SYNC, problem="malformed_signature")
    return Claim(SYNC, given, stamp.encode() + b".", _stale(stamp, now, tolerance))


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


# -- Standard Webhooks: v1,<base64> over "<id>.<timestamp>." + body ---------------------------

def _standard_claim(headers: Mapping[str, str], now: float, tolerance: float) -> Claim:
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp:
        return Claim(STANDARD, problem="malformed_signature")
    given = _standard_signatures(headers[STANDARD])
    if not given:
        return Claim(STANDARD, problem="malformed_signature")
    return Claim(STANDARD, given, f"{msg_id}.{timestamp}.".encode(),
                 _stale(timestamp, now, tolerance))


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


@functools.lru_cache(maxsize=64)
def _standard_keys(secrets: tuple[str, ...]) -> list[bytes]:
    return standard_keys(secrets)


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

