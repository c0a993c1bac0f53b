"""The HTTP side of subscribing: the jobs API (long-poll, list, history), API keys, CORS,
metrics and the OpenAPI document, against a real uvicorn relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

import relay.limits
from relay.app import create_app
from relay.http.openapi import document
from relay.runtime.server import serving
from tests.support import make_settings, running_relay, sse

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def served(**server) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    app = create_app(make_settings(**server))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield app, client


def route_operations(app: Starlette) -> set[tuple[str, str]]:
    """(method, path) of every HTTP route of the app; a mount counts as `GET <path>/{path}`."""
    operations = set()
    for route in app.routes:
        if isinstance(route, Route):
            operations |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
        elif isinstance(route, Mount):
            operations.add(("GET", f"{route.path}/{{path}}"))
        else:
            raise AssertionError(f"a route of a kind this test does not know: {route!r}")
    return operations


# -- wait=true ------------------------------------------------------------------------------

async def test_wait_returns_as_soon_as_the_job_becomes_terminal():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "w"))["job"]["id"]
        started = time.monotonic()
        waiting = asyncio.create_task(
            relay.client.get(f"/v1/jobs/{job_id}?wait=true&timeout=30", timeout=40))
        await relay.webhook({"id": "w", "status": "PROCESSING"})
        await relay.webhook({"id": "w", "status": "COMPLETED", "outputUrl": "https://o/w"})
        answer = await waiting
        assert answer.status_code == 200
        assert (answer.json()["state"], answer.json()["version"]) == ("succeeded", 3)
        assert time.monotonic() - started < 10  # far from the 30 s timeout


async def test_wait_answers_the_job_as_it_is_when_the_timeout_passes():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "w"))["job"]["id"]
        await relay.webhook({"id": "w", "status": "PROCESSING"})
        started = time.monotonic()
        answer = await relay.client.get(f"/v1/jobs/{job_id}?wait=true&timeout=0.5")
        elapsed = time.monotonic() - started
        assert (answer.status_code, answer.json()["state"]) == (200, "running")
        assert 0.5 <= elapsed < 10


async def test_wait_on_a_terminal_job_answers_at_once():
    async with running_relay() as relay:
        done = await relay.webhook({"id": "d", "status": "FAILED", "error": "boom"})
        started = time.monotonic()
        answer = await relay.client.get(f"/v1/jobs/{done.json()['job_id']}?wait=true")
        assert (answer.status_code, answer.json()["state"]) == (200, "failed")
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("query", ["wait=true&timeout=56", "wait=true&timeout=-1",
                                   "wait=true&timeout=soon", "wait=maybe"])
async def test_a_wait_parameter_out_of_range_is_a_400(query):
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "w"))["job"]["id"]
        answer = await relay.client.get(f"/v1/jobs/{job_id}?{query}")
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")


async def test_wait_on_an_unknown_job_is_a_404():
    async with running_relay() as relay:
        answer = await relay.client.get("/v1/jobs/nope?wait=true&timeout=1")
        assert answer.status_code == 404


# -- list and history -----------------------------------------------------------------------

async def test_the_job_list_filters_and_pages_newest_first():
    async with running_relay() as relay:
        ids = [(await relay.track("gen", f"g{i}", topics=["t:even" if i % 2 else "t:odd"]))
               ["job"]["id"] for i in range(5)]
        await relay.track("stories", "s0")
        await relay.webhook({"id": "g0", "status": "COMPLETED", "outputUrl": "https://o/0"})

        page = (await relay.client.get("/v1/jobs?provider=gen&limit=2&offset=1")).json()
        assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
        assert [job["id"] for job in page["jobs"]] == [ids[3], ids[2]]
        by_topic = (await relay.client.get("/v1/jobs?topic=t:even")).json()
        assert [job["id"] for job in by_topic["jobs"]] == [ids[3], ids[1]]
        done = (await relay.client.get("/v1/jobs?state=succeeded")).json()
        assert [job["external_id"] for job in done["jobs"]] == ["g0"]
        one = (await relay.client.get("/v1/jobs?external_id=s0")).json()
        assert [job["provider"] for job in one["jobs"]] == ["stories"]
        for bad in ["state=done", "limit=0", "limit=201", "offset=-1", "limit=x"]:
            assert (await relay.client.get(f"/v1/jobs?{bad}")).status_code == 400, bad


async def test_history_lists_every_change_oldest_first_with_its_source():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "h"))["job"]["id"]
        running = await relay.webhook({"id": "h", "status": "PROCESSING"})
        await relay.webhook({"id": "h", "status": "PROCESSING"})  # a duplicate: no event
        history = (await relay.client.get(f"/v1/jobs/{job_id}/history")).json()["events"]
        assert [(e["source"], e["job"]["state"], e["job"]["version"]) for e in history] == [
            ("api", "queued", 1), ("webhook", "running", 2)]
        assert history[1]["cursor"] == running.json()["cursor"]
        assert (await relay.client.get("/v1/jobs/nope/history")).status_code == 404


# -- API keys, CORS, metrics, OpenAPI ---------------------------------------------------------

async def test_the_api_key_guards_every_v1_route():
    async with served(api_keys=["k"]) as (app, client):
        v1 = sorted(op for op in route_operations(app) if op[1].startswith("/v1/"))
        assert len(v1) >= 7
        for method, path in v1:
            url = re.sub(r"\{[^}]+\}", "x", path) + ("?topic=t" if path == "/v1/events" else "")
            for headers in [{}, {"authorization": "Bearer wrong"}, {"authorization": "k"}]:
                answer = await client.request(method, url, json={}, headers=headers)
                assert answer.status_code == 401, (method, url, headers)
                assert answer.json()["error"] == "unauthorized"
        keyed = await client.get("/v1/jobs", headers={"authorization": "Bearer k"})
        assert keyed.status_code == 200
        for open_path in ["/healthz", "/metrics", "/openapi.json"]:
            assert (await client.get(open_path)).status_code == 200, open_path


async def test_a_token_opens_streams_but_not_the_rest_of_the_api():
    async with served(api_keys=["k"]) as (_, client):
        key = {"authorization": "Bearer k"}
        tracked = (await client.post("/v1/jobs", json={"provider": "gen", "external_id": "t"},
                                     headers=key)).json()
        job_id, token = tracked["job"]["id"], tracked["subscribe_token"]
        assert (await client.get(f"/v1/jobs/{job_id}?token={token}")).status_code == 401
        async with sse(client, f"/v1/jobs/{job_id}/events?token={token}") as stream:
            assert (await stream.next()).data["id"] == job_id


async def test_cors_allows_the_configured_origins_only():
    async with served(cors_origins=["https://app.example"]) as (_, client):
        preflight = {"access-control-request-method": "GET",
                     "access-control-request-headers": "last-event-id"}
        allowed = await client.options("/v1/events?topic=t",
                                       headers={"origin": "https://app.example", **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused = await client.options("/v1/events?topic=t",
                                       headers={"origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in refused.headers
        simple = await client.get("/v1/jobs", headers={"origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


async def test_a_cors_preflight_to_a_webhook_or_a_stream_gets_one_access_line(caplog):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    async with served(cors_origins=["https://app.example"]) as (_, client):
        with caplog.at_level(logging.INFO, logger="relay.access"):
            for path in ("/hooks/gen", "/v1/events?topic=t"):
                assert (await client.options(path, headers=preflight)).status_code == 200
            posted = await client.post("/hooks/gen", headers={"origin": "https://app.example"})
    lines = [record.getMessage() for record in caplog.records if record.name == "relay.access"]
    assert lines == ["OPTIONS /hooks/gen 200", "OPTIONS /v1/events?topic=t 200",
                     f"POST /hooks/gen {posted.status_code}"]


async def test_metrics_count_webhooks_events_subscribers_and_delivery_lag():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "m"))["job"]["id"]
        async with sse(relay.client, f"/v1/jobs/{job_id}/events") as stream:
            await stream.next()
            await relay.webhook({"id": "m", "status": "PROCESSING"})
            await stream.next()
            await relay.webhook({"id": "m", "status": "PROCESSING"})
            text = (await relay.client.get("/metrics")).text
        assert 'relay_webhooks_total{outcome="accepted",provider="gen"} 1.0' in text
        assert 'relay_webhooks_total{outcome="duplicate",provider="gen"} 1.0' in text
        assert 'relay_events_total{source="webhook"} 1.0' in text
        assert "relay_subscribers 1.0" in text
        assert "relay_delivery_lag_seconds_count 1.0" in text
        assert "# TYPE relay_polls_total counter" in text
        names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert all(name.startswith("relay_") for name in names)


async def test_openapi_describes_every_route_of_the_app():
    async with served() as (app, client):
        answer = await client.get("/openapi.json")
        assert answer.status_code == 200
        document = answer.json()
    assert document["openapi"].startswith("3.1")
    described = {(method.upper(), path) for path, item in document["paths"].items()
                 for method in item}
    missing = route_operations(app) - described
    assert not missing, f"routes missing from relay/http/openapi.py: {sorted(missing)}"
    for path, item in document["paths"].items():
        for operation in item.values():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"\{([^}]+)\}", path)), path
            assert operation["responses"], path
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', answer.text))
    assert refs <= set(document["components"]["schemas"])


def stated(document: Any) -> tuple[set[float], str]:
    """Every number in a document's values, and all of its text."""
    numbers: set[float] = set()
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, bool):
            return
        elif isinstance(value, int | float):
            numbers.add(value)
        elif isinstance(value, str):
            texts.append(value)

    walk(document)
    return numbers, " ".join(texts)


def test_openapi_states_every_request_limit():
    numbers, text = stated(document())
    limits = {name: value for name, value in vars(relay.limits).items()
              if name.isupper() and isinstance(value, int | float)}
    unstated = [name for name, value in limits.items()
                if value not in numbers and f"{value:g}" not in text]
    assert not unstated, f"limits of relay/limits.py not in relay/http/openapi.py: {unstated}"
    assert all(prefix in text for prefix in relay.limits.RESERVED_TOPICS)


async def test_a_method_a_path_does_not_take_is_405_naming_every_method_it_does():
    async with served() as (_, client):
        for method, path, allowed in [("DELETE", "/v1/jobs", {"GET", "HEAD", "POST"}),
                                      ("PUT", "/v1/subscriptions/x", {"GET", "HEAD", "DELETE"}),
                                      ("POST", "/healthz", {"GET", "HEAD"})]:
            answer = await client.request(method, path)
            assert (answer.status_code, answer.json()["error"]) == (405, "method_not_allowed")
            assert {m.strip() for m in answer.headers["allow"].split(",")} == allowed
