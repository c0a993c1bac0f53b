"""Webhooks signed the way each scheme's senders sign them: Sync-Signature and
X-Signature-Primary by hand, Standard Webhooks by the `standardwebhooks` package itself, not
only by relay's own signer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from relay.signing import sync_signature_header

WEBHOOK_SECRET = "test-webhook-secret"
WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PAYLOAD = {"id": "job-1", "status": "PROCESSING", "progress_percent": 40}


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def sync_headers(body: bytes, secret: str = WEBHOOK_SECRET, stamp: int | None = None
                 ) -> dict[str, str]:
    """Sync-Signature, signed now or at Unix time `stamp`."""
    stamp = int(time.time()) if stamp is None else stamp
    return {"content-type": "application/json",
            "sync-signature": sync_signature_header(secret, body, stamp)}


def primary_headers(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-signature-primary": digest}


def standard_headers(body: bytes, secret: str = WHSEC, msg_id: str = "msg_1",
                     stamp: int | None = None) -> dict[str, str]:
    """Signed by the standardwebhooks package, as a Standard Webhooks sender would."""
    moment = datetime.fromtimestamp(int(time.time()) if stamp is None else stamp, UTC)
    signature = Webhook(secret).sign(msg_id, moment, body.decode())
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(moment.timestamp())), "webhook-signature": signature}


def signed(payload: Mapping[str, Any], secret: str = WEBHOOK_SECRET, stamp: int | None = None
           ) -> tuple[bytes, dict[str, str]]:
    """A webhook's JSON body and its Sync-Signature headers."""
    body = encode(payload)
    return body, sync_headers(body, secret, stamp)


def post_update(base_url: str, external_id: str, status: str, percent: int | None = None
                ) -> None:
    """Posts a signed update of job `external_id` to provider `gen` of the relay at `base_url`."""
    payload: dict[str, Any] = {"id": external_id, "status": status}
    if percent is not None:
        payload["progress_percent"] = percent
    body, headers = signed(payload)
    answer = httpx.post(f"{base_url}/hooks/gen", content=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
