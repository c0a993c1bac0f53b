"""Bad provider payloads: through the real webhook route they answer 422 `invalid_payload`
naming the field and store nothing; called directly, the adapters raise only PayloadError."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.errors import PayloadError
from relay.models import Schema
from relay.normalise import read_update, story
from tests.support import make_settings, running_relay

PAYLOADS = Path(__file__).parent / "payloads"
NOW = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
NEAR_1MB = "x" * 1_000_000  # the body stays under the 1 MiB cap, so the field is what fails


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

BAD = {  # provider in make_settings(): [(case id, body, the field the answer names)]
    "gen": [
        ("no id", without(GEN, "id"), "id"),
        ("no status", without(GEN, "status"), "status"),
        ("null status", {**GEN, "status": None}, "status"),
        ("blank status", {**GEN, "status": "   "}, "status"),
        ("id is a list", {**GEN, "id": ["a"]}, "id"),
        ("id is a boolean", {**GEN, "id": True}, "id"),
        ("id is a float", {**GEN, "id": 1.5}, "id"),
        ("status is a number", {**GEN, "status": 3}, "status"),
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
        ("nested junk", {**GEN, "segments": [nested(40)]}, "segments"),
        ("too many segments", {**GEN, "segments": [{}] * 5000}, "segments"),
    ],
    "stories": [
        ("no job id", without(STORY, "job_id"), "job_id"),
        ("no status", without(STORY, "status"), "status"),
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
        ("no id", without(JOBS, "id"), "id"),
        ("no status", without(JOBS, "status"), "status"),
        ("progress above 100", {**JOBS, "progress": 150}, "progress"),
        ("percent_complete below 0", {**JOBS, "percent_complete": -5}, "percent_complete"),
        ("progress with a percent sign", {**JOBS, "progress": "75%"}, "progress"),
        ("error_message is a number", {**JOBS, "error_message": 12}, "error_message"),
        ("title is a 1 MB string", {**JOBS, "title": NEAR_1MB}, "title"),
        ("progress_stage is an object", {**JOBS, "progress_stage": {"a": 1}}, "progress_stage"),
    ],
}
NOT_OBJECTS = [("a list", [GEN]), ("an empty list", []), ("a number", 42), ("null", None),
               ("a string", "PROCESSING"), ("a boolean", True)]
for cases in BAD.values():  # a body that is JSON but no object names the payload as a whole
    cases += [(f"the body is {name}", body, "payload") for name, body in NOT_OBJECTS]


async def tracked_hook(relay, provider: str) -> str | None:
    """Where to post for `provider`: None for `gen` (signed), else the webhook_url's path."""
    if provider == "gen":
        return None
    url = (await relay.track(provider, "someone-else"))["webhook_url"]
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


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("provider", list(BAD))
async def test_bad_payloads_and_non_objects_answer_422_naming_the_field_and_store_nothing(provider):
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
            assert len(answer["message"]) < 300, case  # the 1 MB value is not echoed back
            ext = external_id(body)
            if isinstance(ext, str):
                assert await relay.store.find(provider, ext) is None, case
        assert await relay.store.last_cursor() == before


async def test_nothing_bad_is_stored_even_under_a_raised_body_cap():
    async with running_relay(make_settings(max_body=4 * 1024 * 1024)) as relay:
        body = {**GEN, "status": "FAILED", "error": "x" * 3_000_000}
        response = await relay.webhook(body)
        assert (response.status_code, response.json()["details"]) == (422, {"field": "error"})
        assert await relay.store.last_cursor() is None


async def test_values_json_allows_but_a_job_cannot_serve_are_refused():
    # NaN and lone surrogates parse as JSON, but a job holding them could never be served again.
    async with running_relay() as relay:
        cases = [(b'{"id":"n","status":"COMPLETED","segments":[NaN]}', "segments"),
                 (b'{"id":"n","status":"COMPLETED","outputDuration":Infinity}', "outputDuration"),
                 (b'{"id":"s","status":"PROCESSING\\ud800"}', "status"),
                 (b'{"id":"s","status":"FAILED","error":"bad \\udc00 text"}', "error"),
                 (b'{"id":"p","status":"PROCESSING","progress_percent":1' + b"0" * 400 + b"}",
                  "progress_percent")]
        for raw, field in cases:
            response = await relay.webhook(json.loads(raw))
            assert response.status_code == 422, raw
            assert response.json()["details"] == {"field": field}, raw
        assert await relay.store.last_cursor() is None
        assert (await relay.client.get("/metrics")).status_code == 200


# -- the adapters raise PayloadError and nothing else ------------------------------------------

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
                       "error_message", "title", "user_id", "project_id", "created_at"],
}
WORDS = st.sampled_from(["PENDING", "processing", "COMPLETED", "failed", "REJECTED",
                         "cancelled", "mystery"])


def shaped(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the schema's own fields, each either a plausible or an arbitrary value."""
    plausible = {"status": WORDS, "id": st.text(min_size=1, max_size=8),
                 "job_id": st.text(min_size=1, max_size=8),
                 "scenes_total": st.integers(-2, 6), "scenes_completed": st.integers(-2, 6),
                 "progress": st.floats(-10, 110), "progress_percent": st.floats(-10, 110),
                 "error": st.fixed_dictionaries({}, optional={"code": JSON, "message": JSON})}
    return st.fixed_dictionaries({}, optional={
        name: plausible.get(name, JSON) | JSON for name in FIELDS[schema]})


def read_or_refuse(schema: Schema, value: Any) -> None:
    try:
        update = read_update(schema, value, NOW)
    except PayloadError as exc:
        assert exc.status == 422 and exc.field and exc.message.startswith(exc.field)
        return
    served = [update.external_id, update.provider_status, update.progress, update.stage,
              update.error, update.output, update.provider_data, update.created_at]
    json.dumps(served, allow_nan=False, ensure_ascii=False).encode()  # as Starlette would
    assert update.progress is None or 0.0 <= update.progress <= 1.0


@given(st.sampled_from(list(Schema)), JSON)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_adapters_raise_only_payload_errors_for_any_json_value(schema, value):
    read_or_refuse(schema, value)


@given(st.data())
@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
def test_adapters_raise_only_payload_errors_for_objects_with_their_own_fields(data):
    schema = data.draw(st.sampled_from(list(Schema)))
    read_or_refuse(schema, data.draw(shaped(schema)))


@given(st.fixed_dictionaries({}, optional={"generations": JSON | st.lists(shaped(Schema.STORY),
                                                                          max_size=3),
                                           "total": JSON}))
@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
def test_the_story_list_reader_raises_only_payload_errors(value):
    try:
        updates = story.read_list(value, NOW)
    except PayloadError as exc:
        assert exc.field.startswith(("payload", "generations"))
        return
    assert all(update.external_id for update in updates)
