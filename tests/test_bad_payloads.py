"""Bad provider payloads. relay is strict only where it must be:
a body that is no object, or has no job id or no status, answers 422 `invalid_payload` naming
the field and stores nothing. Any other odd field is left out, clamped or cut: the update is
accepted (202) with the rest kept, and the field is counted. Called directly, the adapters
raise only PayloadError, and only for those fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from relay.errors import PayloadError
from relay.http.errors import HANDLERS, invalid_payload
from relay.ingest.recorder import new_job
from relay.models import Schema, isoformat
from relay.normalise import fields, merge, read_update, story
from relay.normalise.words import state_of
from tests.support import make_settings, running_relay

PAYLOADS = Path(__file__).parent / "payloads"
START = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
NOW = isoformat(START)  # when the relay received each payload
NEAR_1MB = "x" * 1_000_000  # the body stays under the 1 MiB cap, so the field is what is odd


def good(schema: str, name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / schema / f"{name}.json").read_text())["payload"]


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"more": [value]}
    return value


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


GEN = good("generation", "processing_with_progress")
STORY = good("story", "processing_with_scenes")
JOBS = good("jobstatus", "in_progress")
SCHEMAS = {"gen": Schema.GENERATION, "stories": Schema.STORY, "jobs": Schema.JOBSTATUS}
ID_FIELD = {Schema.GENERATION: "id", Schema.STORY: "job_id", Schema.JOBSTATUS: "id"}

BAD = {  # provider in make_settings(): [(case id, body, the field the answer names)]
    "gen": [
        ("no id", without(GEN, "id"), "id"),
        ("no status", without(GEN, "status"), "status"),
        ("null status", {**GEN, "status": None}, "status"),
        ("blank status", {**GEN, "status": "   "}, "status"),
        ("id is a list", {**GEN, "id": ["a"]}, "id"),
        ("id is a boolean", {**GEN, "id": True}, "id"),
        ("id is a float", {**GEN, "id": 1.5}, "id"),
        ("id longer than any id", {**GEN, "id": "i" * 300}, "id"),
        ("status is a number", {**GEN, "status": 3}, "status"),
    ],
    "stories": [
        ("no job id", without(STORY, "job_id"), "job_id"),
        ("no status", without(STORY, "status"), "status"),
    ],
    "jobs": [
        ("no id", without(JOBS, "id"), "id"),
        ("no status", without(JOBS, "status"), "status"),
    ],
}
NOT_OBJECTS = [("a list", [GEN]), ("an empty list", []), ("a number", 42), ("null", None),
               ("a string", "PROCESSING"), ("a boolean", True)]
for cases in BAD.values():  # a body that is JSON but no object names the payload as a whole
    cases += [(f"the body is {name}", body, "payload") for name, body in NOT_OBJECTS]

# Until issue 13 each of these was a 422 naming the field, and the whole update was lost. Now
# the field is left out (or clamped, or cut), named in the update's `ignored` and counted.
ODD = {  # provider: [(case id, body, the field ignored)]
    "gen": [
        ("progress is text", {**GEN, "progress_percent": "50"}, "progress_percent"),
        ("progress above 100", {**GEN, "progress_percent": 100.5}, "progress_percent"),
        ("progress below 0", {**GEN, "progress_percent": -1}, "progress_percent"),
        ("progress is a boolean", {**GEN, "progress_percent": True}, "progress_percent"),
        ("duration is negative", {**GEN, "outputDuration": -3}, "outputDuration"),
        ("segments is text", {**GEN, "segments": "0-6.2"}, "segments"),
        ("error is an object", {**GEN, "error": {"message": "x"}}, "error"),
        ("errorCode is a number", {**GEN, "errorCode": 42}, "errorCode"),
        ("createdAt is not a date", {**GEN, "createdAt": "yesterday"}, "createdAt"),
        ("a 1 MB string", {**GEN, "status": "FAILED", "error": NEAR_1MB}, "error"),
        ("a 1 MB url", {**GEN, "outputUrl": NEAR_1MB}, "outputUrl"),
        ("nested junk", {**GEN, "segments": [nested(40)]}, "segments[0]"),
        ("too many segments", {**GEN, "segments": [{}] * 5000}, "segments"),
        ("a model over 256 characters", {**GEN, "model": "m" * 300}, "model"),
        ("a status longer than any word", {**GEN, "status": "PROCESSING" * 10}, "status"),
    ],
    "stories": [
        ("scenes_total 0", {**STORY, "scenes_total": 0}, "scenes_total"),
        ("scenes_total negative", {**STORY, "scenes_total": -4}, "scenes_total"),
        ("scenes_completed negative", {**STORY, "scenes_completed": -1}, "scenes_completed"),
        ("more scenes done than total", {**STORY, "scenes_completed": 5}, "scenes_completed"),
        ("scenes as text", {**STORY, "scenes_completed": "2"}, "scenes_completed"),
        ("scenes as a float", {**STORY, "scenes_total": 4.5}, "scenes_total"),
        ("error is text", {**STORY, "status": "failed", "error": "oops"}, "error"),
        ("error code is a number", {**STORY, "error": {"code": 5}}, "error.code"),
        ("error message is a 1 MB string", {**STORY, "error": {"message": NEAR_1MB}},
         "error.message"),
        ("started_at is not a date", {**STORY, "started_at": "soon"}, "started_at"),
        ("nested junk result", {**STORY, "status": "completed", "result": nested(12)},
         "result"),
    ],
    "jobs": [
        ("progress above 100", {**JOBS, "progress": 150}, "progress"),
        ("percent_complete below 0", {**JOBS, "percent_complete": -5}, "percent_complete"),
        ("progress with a percent sign", {**JOBS, "progress": "75%"}, "progress"),
        ("error_message is a number", {**JOBS, "error_message": 12}, "error_message"),
        ("title is a 1 MB string", {**JOBS, "title": NEAR_1MB}, "title"),
        ("progress_stage is an object", {**JOBS, "progress_stage": {"a": 1}}, "progress_stage"),
        ("is_byok is text", {**JOBS, "is_byok": "no"}, "is_byok"),
        ("updated_at is not a date", {**JOBS, "updated_at": "now"}, "updated_at"),
    ],
}


async def tracked_hook(relay, provider: str, external: str = "someone-else") -> str | None:
    """Where to post for `provider`: None for `gen` (signed), else the webhook_url's path of
    the tracked job `external`."""
    if provider == "gen":
        return None
    url = (await relay.track(provider, external))["webhook_url"]
    return httpx.URL(url).path  # built on public_url; the test relay listens elsewhere


async def deliver(relay, provider: str, hook: str | None, body: Any) -> httpx.Response:
    if hook is None:
        return await relay.webhook(body, provider=provider)
    return await relay.client.post(hook, content=json.dumps(body).encode(),
                                   headers={"content-type": "application/json"})


def external_id(body: Any) -> str | None:
    if isinstance(body, dict):
        return body.get("id") or body.get("job_id")
    return None


def ignored_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    return {(sample.labels["provider"], sample.labels["field"]): sample.value
            for family in text_string_to_metric_families(metrics_text)
            for sample in family.samples
            if sample.name == "relay_payload_fields_ignored_total"}


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("provider", list(BAD))
async def test_no_id_no_status_and_non_objects_answer_422_naming_the_field_and_store_nothing(
        provider):
    async with running_relay() as relay:
        hook = await tracked_hook(relay, provider)
        before = await relay.store.last_cursor()
        for case, body, field in BAD[provider]:
            response = await deliver(relay, provider, hook, body)

            assert response.status_code == 422, (case, response.text[:200])
            answer = response.json()
            assert answer["error"] == "invalid_payload", case
            assert answer["message"].startswith(f"{field}: "), (case, answer["message"])
            assert answer["details"] == {"field": field}, case
            assert len(answer["message"]) < 300, case  # the long value is not echoed back
            ext = external_id(body)
            if isinstance(ext, str):
                assert await relay.store.find(provider, ext) is None, case
        assert await relay.store.last_cursor() == before


@pytest.mark.parametrize("provider", list(ODD))
async def test_an_odd_optional_field_is_ignored_the_rest_is_kept_and_the_field_counted(provider):
    schema = SCHEMAS[provider]
    async with running_relay() as relay:
        for number, (case, body, field) in enumerate(ODD[provider]):
            body = {**body, ID_FIELD[schema]: f"odd-{number}"}
            hook = await tracked_hook(relay, provider, f"odd-{number}")

            response = await deliver(relay, provider, hook, body)

            assert response.status_code == 202, (case, response.text[:200])
            job = (await relay.client.get(f"/v1/jobs/{response.json()['job_id']}")).json()
            assert job["external_id"] == f"odd-{number}", case
            assert job["state"] == (state_of(body["status"]) or "queued"), case
            assert job["provider_status"] == body["status"][:fields.MAX_WORD], case
            assert job["created_at"] is not None, case
            assert field in read_update(schema, body, NOW).ignored, case
        counts = ignored_counts((await relay.client.get("/metrics")).text)

    for case, _, field in ODD[provider]:
        label = field.replace("[0]", "[]")
        assert counts.get((provider, label), 0) >= 1, (case, label)


async def test_a_3_mb_message_under_a_raised_body_cap_is_cut_not_stored_whole():
    async with running_relay(make_settings(max_body=4 * 1024 * 1024)) as relay:
        body = {**GEN, "status": "FAILED", "error": "x" * 3_000_000}

        response = await relay.webhook(body)

        assert response.status_code == 202, response.text[:200]
        job = (await relay.client.get(f"/v1/jobs/{response.json()['job_id']}")).json()
        assert job["state"] == "failed"
        assert job["error"]["message"] == "x" * fields.MAX_TEXT


async def test_a_status_json_allows_but_a_job_cannot_serve_is_refused():
    # A lone surrogate parses as JSON, but a job holding it could never be served again.
    async with running_relay() as relay:
        response = await relay.webhook(json.loads(b'{"id":"s","status":"PROCESSING\\ud800"}'))

        assert response.status_code == 422
        assert response.json()["details"] == {"field": "status"}
        assert await relay.store.last_cursor() is None


async def test_optional_values_json_allows_but_a_job_cannot_serve_are_left_out():
    # NaN, infinities and lone surrogates parse as JSON, but a job holding them could never be
    # served again: such a field is left out and the update kept.
    cases = [(b'{"id":"n","status":"COMPLETED","segments":[NaN]}', "segments[0]"),
             (b'{"id":"i","status":"COMPLETED","outputDuration":Infinity}', "outputDuration"),
             (b'{"id":"s","status":"FAILED","error":"bad \\udc00 text"}', "error"),
             (b'{"id":"p","status":"PROCESSING","progress_percent":1' + b"0" * 400 + b"}",
              "progress_percent")]
    async with running_relay() as relay:
        for raw, field in cases:
            body = json.loads(raw)
            response = await relay.webhook(body)

            assert response.status_code == 202, raw
            served = await relay.client.get(f"/v1/jobs/{response.json()['job_id']}")
            assert served.status_code == 200, raw
            assert served.json()["state"] == state_of(body["status"]), raw
            assert field in read_update(Schema.GENERATION, body, NOW).ignored, raw
        assert (await relay.client.get("/metrics")).status_code == 200


# -- the adapters refuse only what has no id or no status ---------------------------------------

# Text includes lone surrogates and floats include NaN and infinities: json.loads yields all.
TEXT = st.text(st.characters() | st.sampled_from(["\ud800", "\udfff"]), max_size=20)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12)

FIELDS = {
    Schema.GENERATION: ["id", "status", "progress_percent", "error", "errorCode", "error_code",
                        "outputUrl", "outputDuration", "outputFileName", "segments",
                        "segmentOutputUrl", "synthesizedAudioUrl", "createdAt", "projectId",
                        "model"],
    Schema.STORY: ["job_id", "status", "scenes_completed", "scenes_total", "error", "result",
                   "created_at", "started_at", "completed_at"],
    Schema.JOBSTATUS: ["id", "status", "progress", "percent_complete", "progress_stage",
                       "error_message", "title", "user_id", "project_id", "created_at",
                       "updated_at", "is_byok", "is_starred", "reasoning_model",
                       "writing_model", "function_model"],
}
WORDS = st.sampled_from(["PENDING", "processing", "COMPLETED", "failed", "REJECTED",
                         "cancelled", "cancelling", "mystery"])
SEGMENT = st.fixed_dictionaries({}, optional={"startTime": JSON, "segmentOutputUrl": JSON,
                                              "audioInput": JSON})


def shaped(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the schema's own fields, each either a plausible or an arbitrary value."""
    plausible = {"status": WORDS, "id": st.text(min_size=1, max_size=8),
                 "job_id": st.text(min_size=1, max_size=8),
                 "scenes_total": st.integers(-2, 6), "scenes_completed": st.integers(-2, 6),
                 "progress": st.floats(-10, 110), "progress_percent": st.floats(-10, 110),
                 "error": st.fixed_dictionaries({}, optional={"code": JSON, "message": JSON}),
                 "segments": st.lists(SEGMENT | JSON, max_size=3)}
    return st.fixed_dictionaries({}, optional={
        name: plausible.get(name, JSON) | JSON for name in FIELDS[schema]})


def assert_servable(schema: Schema, update: Any) -> None:
    """The update, merged into a fresh job, serves as JSON the way Starlette encodes it."""
    served = [update.external_id, update.provider_status, update.progress, update.stage,
              update.error, update.output, update.provider_data, update.created_at,
              update.started_at, update.finished_at, update.updated_at, list(update.ignored)]
    json.dumps(served, allow_nan=False, ensure_ascii=False).encode()
    assert update.progress is None or 0.0 <= update.progress <= 1.0
    assert all(isinstance(path, str) and path for path in update.ignored)
    provider = make_settings().providers[{Schema.GENERATION: "gen", Schema.STORY: "stories",
                                          Schema.JOBSTATUS: "jobs"}[schema]]
    job = merge(new_job(provider, update.external_id, now=NOW), update)
    assert job is not None
    json.dumps(job.to_dict(), allow_nan=False, ensure_ascii=False).encode()


def read_or_refuse(schema: Schema, value: Any) -> None:
    try:
        update = read_update(schema, value, NOW)
    except PayloadError as exc:
        # The HTTP layer answers every PayloadError 422 invalid_payload (relay.http.errors).
        assert HANDLERS[PayloadError] is invalid_payload
        assert exc.field and exc.message.startswith(exc.field)
        assert exc.field in ("payload", ID_FIELD[schema], "status"), exc.message
        return
    assert_servable(schema, update)


@given(st.sampled_from(list(Schema)), JSON)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_adapters_refuse_only_a_missing_id_or_status_for_any_json_value(schema, value):
    read_or_refuse(schema, value)


@given(st.data())
@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
def test_adapters_refuse_only_a_missing_id_or_status_for_objects_with_their_own_fields(data):
    schema = data.draw(st.sampled_from(list(Schema)))
    read_or_refuse(schema, data.draw(shaped(schema)))


# A usable id or status: a string with something in it besides spaces, that is valid Unicode
# (no lone surrogate); an id within the id cap. A status of any length is read (and cut).
USABLE = st.characters(exclude_categories=["Cs"])
IDS = st.text(USABLE, min_size=1, max_size=fields.MAX_ID).filter(str.strip)
STATUSES = WORDS | st.text(USABLE, min_size=1, max_size=200).filter(str.strip)


@given(st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_any_object_with_a_non_empty_string_id_and_status_normalises_for_every_schema(data):
    schema = data.draw(st.sampled_from(list(Schema)))
    body = data.draw(shaped(schema) | st.dictionaries(TEXT, JSON, max_size=6))
    body = {**body, ID_FIELD[schema]: data.draw(IDS), "status": data.draw(STATUSES)}

    update = read_update(schema, body, NOW)

    assert update.external_id == body[ID_FIELD[schema]]
    assert_servable(schema, update)


@given(st.fixed_dictionaries({}, optional={"generations": JSON | st.lists(shaped(Schema.STORY)
                                                                          | JSON, max_size=4),
                                           "total": JSON}))
@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
def test_the_story_list_reader_refuses_only_a_page_that_is_no_list(value):
    try:
        page = story.read_list(value, NOW)
    except PayloadError as exc:
        assert exc.field in ("payload", "generations")
        return
    entries = value.get("generations") or []
    assert len(page.updates) + len(page.unreadable) == len(entries)
    assert all(update.external_id for update in page.updates)
    for entry in page.unreadable:
        assert entry.problem.startswith(f"generations[{entry.index}]")
        if entry.external_id is not None:  # the id the entry gave, so it can be read alone
            assert entry.external_id == fields.required_id(entries[entry.index], "job_id")
