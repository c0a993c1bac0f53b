"""Fuzzing the webhook routes: whatever a sender puts in the headers, the path and the body,
the relay answers with a status below 500 in the error envelope, and stores nothing from a
request it refused.

Hypothesis drives `/hooks/{provider}` and `/hooks/{provider}/{token}` for each provider of
`make_settings()` (and one that does not exist), against the real app in this process through
`httpx.ASGITransport`, its lifespan run once per module on an anyio blocking portal. One test
sends anything at all (mostly unproven); the other sends genuine deliveries, correctly signed
or tokened, of arbitrary payloads, so the parsing, normalising and storing code is reached.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.app import create_app
from relay.signing import standard_keys, standard_signature, sync_signature_header
from relay.store import Store
from tests.senders import WEBHOOK_SECRET
from tests.support import make_settings

PROVIDERS = ("gen", "stories", "jobs")
MAX_BODY = 4096  # small, so that bodies over the cap are cheap to generate
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Target:
    portal: BlockingPortal
    client: httpx.AsyncClient
    store: Store
    tokens: dict[str, str]  # provider -> its webhook token

    def post(self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
             ) -> tuple[httpx.Response, str | None, str | None]:
        """The response, and the store's last cursor before and after the request."""
        before = self.portal.call(self.store.last_cursor)
        response = self.portal.call(self._post, path, body, headers)
        return response, before, self.portal.call(self.store.last_cursor)

    async def _post(self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
                    ) -> httpx.Response:
        return await self.client.post(path, content=body, headers=headers)


async def webhook_token(client: httpx.AsyncClient, provider: str) -> str:
    answer = await client.post("/v1/jobs", json={"provider": provider, "external_id": "seed"})
    return str(answer.json()["webhook_url"]).rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    app = create_app(make_settings(max_body=MAX_BODY))
    with start_blocking_portal("asyncio") as portal, \
            portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://relay")
        try:
            tokens = {p: portal.call(webhook_token, client, p) for p in PROVIDERS}
            yield Target(portal, client, app.state.store, tokens)
        finally:
            portal.call(client.aclose)


def check(response: httpx.Response, before: str | None, after: str | None) -> None:
    event(f"answered {response.status_code}")  # see --hypothesis-show-statistics
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert after == before, f"a refused request ({response.status_code}) stored an event"
        body = response.json()
        assert set(body) == {"error", "message", "details", "request_id"}
        assert body["request_id"] == response.headers["x-request-id"]
    elif response.status_code == 202:
        assert after != before and response.json()["cursor"] == after
    else:
        assert response.status_code == 200 and response.json()["duplicate"] is True
        assert after == before


# -- what senders send -------------------------------------------------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
json_values = st.recursive(
    _json_leaf, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
STATUS_WORDS = ["PENDING", "PROCESSING", "COMPLETED", "FAILED", "REJECTED", "CANCELED",
                "pending", "processing", "completed", "failed", "queued", "in_progress",
                "cancelled", "Succeeded", "unheard-of", ""]
FIELDS = ["progress_percent", "progress", "percent_complete", "scenes_total",
          "scenes_completed", "error", "errorCode", "error_code", "error_message", "outputUrl",
          "outputDuration", "segments", "result", "createdAt", "created_at", "started_at",
          "finished_at", "progress_stage", "title", "user_id", "project_id", "model"]
ID_FIELD = {"gen": "id", "stories": "job_id", "jobs": "id"}
ids = st.one_of(st.sampled_from(["job-1", "job-2", "job-3"]), st.text(min_size=1, max_size=20))
field_values = st.one_of(st.integers(0, 100), st.floats(0, 100), st.text(max_size=30),
                         json_values)


@st.composite
def payloads(draw: st.DrawFn, id_field: str) -> Any:
    """Mostly well-formed status objects with a few optional fields, some of them broken."""
    payload: dict[str, Any] = {id_field: draw(ids), "status": draw(st.sampled_from(STATUS_WORDS))}
    payload.update(draw(st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=3)))
    mutation = draw(st.sampled_from(["none", "none", "none", "drop", "replace", "anything"]))
    key = draw(st.sampled_from(sorted(payload)))
    if mutation == "drop":
        del payload[key]
    elif mutation == "replace":
        payload[key] = draw(json_values)
    elif mutation == "anything":
        return draw(json_values)
    return payload


@st.composite
def bodies(draw: st.DrawFn, id_field: str | None = None) -> bytes:
    kind = draw(st.sampled_from(["payload", "payload", "payload", "json", "bytes", "large",
                                 "deep"]))
    if kind == "payload":
        field = id_field or draw(st.sampled_from(["id", "job_id"]))
        indent = draw(st.sampled_from([None, 2]))
        return json.dumps(draw(payloads(field)), indent=indent,
                          ensure_ascii=draw(st.booleans())).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "large":
        return b'{"id": "big", "status": "PENDING", "pad": "' + b"x" * MAX_BODY + b'"}'
    if kind == "deep":
        return b"[" * draw(st.integers(900, 5000))
    return draw(st.binary(max_size=600))


header_values = st.binary(max_size=120).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))
now = int(time.time())
stamps = st.one_of(st.just(str(now)), st.integers(now - 1000, now + 1000).map(str),
                   st.text(max_size=14))
plausible = {
    "content-type": st.sampled_from([b"application/json", b"application/json; charset=utf-8",
                                     b"text/plain", b"application/cloudevents+json", b"",
                                     b"multipart/form-data; boundary=x"]),
    "sync-signature": st.builds(lambda t, v: f"t={t},v1={v}".encode("utf-8", "replace"),
                                stamps, st.text(max_size=70)),
    "webhook-signature": st.builds(lambda s: f"v1,{s}".encode("utf-8", "replace"),
                                   st.text(max_size=50)),
    "webhook-timestamp": stamps.map(lambda t: t.encode("utf-8", "replace")),
}
header_names = st.sampled_from(["content-type", "sync-signature", "x-signature-primary",
                                "webhook-id", "webhook-timestamp", "webhook-signature",
                                "content-length", "x-request-id", "last-event-id", "x-other"])


@st.composite
def headers(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    chosen = []
    for name in draw(st.lists(header_names, max_size=6, unique=True)):
        values = plausible.get(name, header_values)
        chosen.append((name.encode(), draw(st.one_of(values, header_values))))
    return chosen


@st.composite
def paths(draw: st.DrawFn, tokens: dict[str, str]) -> str:
    provider = draw(st.sampled_from([*PROVIDERS, "nobody"]))
    token = draw(st.one_of(
        st.none(), st.sampled_from(list(tokens.values())),
        st.sampled_from(list(tokens.values())).map(lambda t: t[:-2] + "AA"),
        st.text(min_size=1, max_size=60).map(lambda text: quote(text, safe=""))))
    return f"/hooks/{provider}" if token is None else f"/hooks/{provider}/{token}"


# -- anything at all ---------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_no_request_to_an_ingest_route_fails_or_stores_when_refused(target, data):
    path = data.draw(paths(target.tokens))
    check(*target.post(path, data.draw(bodies()), data.draw(headers())))


# -- genuine deliveries of arbitrary payloads ---------------------------------------------------

def proof(mode: str, body: bytes, msg_id: str) -> list[tuple[bytes, bytes]]:
    stamp = int(time.time())
    if mode == "sync":
        return [(b"sync-signature", sync_signature_header(WEBHOOK_SECRET, body, stamp).encode())]
    if mode == "primary":
        signature = hmac.new(WEBHOOK_SECRET.encode(), body, "sha256").hexdigest()
        return [(b"x-signature-primary", signature.encode())]
    key = standard_keys([WEBHOOK_SECRET])[0]
    signature = standard_signature(key, f"{msg_id}.{stamp}.".encode() + body)
    return [(b"webhook-id", msg_id.encode()), (b"webhook-timestamp", str(stamp).encode()),
            (b"webhook-signature", f"v1,{signature}".encode())]


@FUZZ
@given(data=st.data())
def test_genuine_deliveries_of_arbitrary_payloads_never_fail_or_store_when_refused(
        target, data):
    provider = data.draw(st.sampled_from(PROVIDERS))
    body = data.draw(bodies(ID_FIELD[provider]))
    content_type = data.draw(st.sampled_from([b"application/json", b"text/json", b""]))
    sent: list[tuple[bytes, bytes]] = [(b"content-type", content_type)]
    token = None
    if provider == "gen":
        mode = data.draw(st.sampled_from(["sync", "primary", "standard"]))
        msg_id = data.draw(st.sampled_from(["msg_1", "msg_2", "msg_3"]))
        path = "/hooks/gen"
        sent += proof(mode, body, msg_id)
    else:  # through the webhook URL handed out for the job the body names
        token = target.portal.call(job_token, target.client, provider, named(provider, body))
        path = f"/hooks/{provider}/{token or target.tokens[provider]}"
    response, before, after = target.post(path, body, sent)
    check(response, before, after)
    if provider == "gen" or token is not None:  # a job relay cannot track has no token
        assert response.status_code != 401, "a genuine delivery was refused as unverified"


def named(provider: str, body: bytes) -> str | None:
    with contextlib.suppress(ValueError, RecursionError):
        payload = json.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get(ID_FIELD[provider]), str):
            return str(payload[ID_FIELD[provider]])
    return None


async def job_token(client: httpx.AsyncClient, provider: str, external_id: str | None
                    ) -> str | None:
    """The token of the webhook URL relay hands out for the job (None: it cannot track it)."""
    if external_id is None:
        return None
    answer = await client.post("/v1/jobs", json={"provider": provider,
                                                 "external_id": external_id})
    if answer.status_code not in (200, 201):
        return None
    return str(answer.json()["webhook_url"]).rsplit("/", 1)[1]
