"""How relay reads a provider's answers: streamed and capped at 8 MiB,
never read whole; JSON too deep to parse is unreadable, not a traceback; the error envelope's
code and message are kept; the generation error catalog is read without an API key. Over real
HTTP, against the simulated providers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from relay.config import ProviderConfig
from relay.errors import PayloadError
from relay.ingest.catalogs import Catalogs
from relay.ingest.providers import (
    MAX_ANSWER,
    AnswerError,
    GenerationClient,
    JobStatusClient,
    UnreadableAnswer,
    envelope,
)
from relay.models import Schema
from relay.runtime.metrics import Metrics
from relay.runtime.server import serving
from relay.sim import Fault, GenerationProvider, JobStatusProvider, generation_timeline
from tests.support import eventually

pytestmark = pytest.mark.anyio

KEY = "sim-api-key"


@contextlib.asynccontextmanager
async def jobstatus() -> AsyncIterator[tuple[JobStatusProvider, JobStatusClient]]:
    sim = JobStatusProvider(KEY)
    async with serving(sim.app) as url, httpx.AsyncClient(timeout=10) as http:
        yield sim, JobStatusClient(ProviderConfig("jobs", Schema.JOBSTATUS, base_url=url,
                                                  api_key=KEY), http)


@contextlib.asynccontextmanager
async def generation(catalogs: Catalogs | None = None
                     ) -> AsyncIterator[tuple[GenerationProvider, GenerationClient]]:
    sim = GenerationProvider(KEY)
    async with serving(sim.app) as url, httpx.AsyncClient(timeout=10) as http:
        yield sim, GenerationClient(ProviderConfig("gen", Schema.GENERATION, base_url=url,
                                                   api_key=KEY), http, catalogs)


async def test_an_answer_past_8_mib_is_unreadable_and_not_read_whole():
    async with jobstatus() as (sim, client):
        job = sim.create_job()
        sim.faults.push(Fault(oversize=64 * 2**20))
        with pytest.raises(UnreadableAnswer) as caught:
            await client.status(job)
        assert caught.value.status == 200
        assert "more than 8388608 bytes" in str(caught.value)
        # The provider could push only what the sockets held past the cap before relay hung up.
        assert sim.streamed < MAX_ANSWER + 16 * 2**20
        assert (await client.status(job)).external_id == job  # the next answer is read


async def test_an_answer_just_under_the_cap_is_read():
    async with jobstatus() as (sim, client):
        job = sim.create_job()
        sim.faults.push(Fault(oversize=MAX_ANSWER - 1024))
        with pytest.raises(PayloadError, match="status: required"):
            await client.status(job)  # read whole: then it lacks what a status object needs


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"a":' * 100_000, b"not json", b"\xff"])
async def test_an_answer_too_deep_or_not_json_is_unreadable_not_a_traceback(body):
    async with jobstatus() as (sim, client):
        sim.faults.push(Fault(body=body))
        with pytest.raises(UnreadableAnswer):
            await client.status(sim.create_job())


async def test_an_error_answer_keeps_the_envelope_code_and_message():
    async with jobstatus() as (sim, client):
        job = sim.create_job()
        sim.refuse(job, 451, code="content_blocked", message="Blocked in your region.")
        with pytest.raises(AnswerError) as caught:
            await client.status(job)
        sim.faults.push(Fault(status=429, retry_after=3))
        with pytest.raises(AnswerError) as throttled:
            await client.status(sim.create_job())
    assert (caught.value.status, caught.value.code, caught.value.detail) == (
        451, "content_blocked", "Blocked in your region.")
    assert (throttled.value.retry_after, throttled.value.code) == (3.0, "rate_limited")


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"error": "not_found", "message": "No such job.", "details": null}',
     ("not_found", "No such job.")),
    (b'{"error": {"code": "quota", "message": "Over quota."}}', ("quota", "Over quota.")),
    (b'{"code": "bad_id", "detail": "The id is malformed."}', ("bad_id", "The id is malformed.")),
    (b"<html>Bad gateway</html>", (None, None)),
    (b'["a", "list"]', (None, None)),
    (b"[" * 100_000, (None, None)),
])
def test_envelopes_are_read_in_the_shapes_providers_send(raw, expected):
    assert envelope(raw) == expected


async def test_relay_asks_for_answers_uncompressed_so_the_cap_counts_what_it_holds():
    seen: list[httpx.Request] = []
    async with jobstatus() as (sim, client):
        client.http.event_hooks["request"].append(lambda r: _note(seen, r))
        await client.status(sim.create_job())
    assert seen[0].headers["accept-encoding"] == "identity"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


async def _note(seen: list[httpx.Request], request: httpx.Request) -> None:
    seen.append(request)


async def test_the_error_catalog_is_read_without_a_key_and_explains_polled_errors():
    catalogs = Catalogs(Metrics())
    async with generation(catalogs) as (sim, client):
        seen: list[httpx.Request] = []
        client.http.event_hooks["request"].append(lambda r: _note(seen, r))
        await catalogs.refresh([client])
        job = sim.create_job(generation_timeline(step=0.01, fail=True))
        while not sim.is_terminal(job):
            sim.advance(job)
        update = await client.status(job)
    assert "x-api-key" not in seen[0].headers and seen[0].url.path == "/v2/errors"
    catalog = catalogs.get("gen")
    assert catalog is not None and "insufficient_credits" in catalog
    assert update.error is not None
    assert update.error["code"] == "generation_input_video_inaccessible"
    assert update.error["fix"].startswith("Make the video URL publicly readable")
    assert update.error["retryable"] is False


async def test_a_catalog_that_cannot_be_read_is_logged_once_and_the_last_one_kept(caplog):
    catalogs = Catalogs(Metrics())
    async with generation(catalogs) as (sim, client):
        await catalogs.refresh([client])
        first = catalogs.get("gen")
        sim.faults.push(Fault(status=500, route="errors", count=3))
        caplog.set_level(logging.DEBUG, logger="relay.ingest.catalogs")
        for _ in range(3):
            await catalogs.refresh([client])
        failing = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert catalogs.get("gen") is first
        await catalogs.refresh([client])
    assert len(failing) == 1 and "cannot read the error catalog of gen" in failing[0].message
    assert any("read again" in r.message for r in caplog.records)
    assert sim.requests["errors"] == 5


async def test_a_provider_without_a_catalog_leaves_errors_unexplained_and_nothing_breaks():
    catalogs = Catalogs(Metrics())
    async with generation(catalogs) as (sim, client):
        sim.catalog = "no catalog here"
        await catalogs.refresh([client])
        assert catalogs.get("gen") is None
        job = sim.create_job(generation_timeline(step=0.01, fail=True))
        while not sim.is_terminal(job):
            sim.advance(job)
        update = await client.status(job)
    assert update.error is not None and update.error["fix"] is None


async def test_catalogs_are_read_at_start_and_again_every_period():
    catalogs = Catalogs(Metrics(), every=0.05)
    async with generation(catalogs) as (sim, client):
        sim.faults.push(Fault(status=503, route="errors"))  # the first read fails
        catalogs.start([client])
        try:
            await eventually(lambda: catalogs.get("gen") is not None)
            sim.catalog = [{"code": "later", "message": "A later catalog.", "fix": "Wait."}]
            await eventually(lambda: "later" in (catalogs.get("gen") or {}))
        finally:
            await catalogs.stop()
    assert sim.requests["errors"] >= 3
