"""The simulated providers, exercised over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.runtime.server import serving, serving_in_thread
from relay.sim import (
    Fault,
    GenerationProvider,
    JobStatusProvider,
    SimulatedProvider,
    Step,
    StoryProvider,
    generation_timeline,
    jobstatus_timeline,
    story_timeline,
    sync_signature,
)

KEY = "test-key"
SECRET = "whsec-test"
BEARER = {"Authorization": f"Bearer {KEY}"}
X_API_KEY = {"x-api-key": KEY}
ENVELOPE_KEYS = {"error", "message", "details", "request_id"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    sim: SimulatedProvider
    clock: FakeClock
    url: str


@pytest.fixture(scope="module")
def served_providers():
    """One running provider of each schema for the module (a server costs ~0.3 s to stop);
    tests make their own jobs, and `served` clears faults and counters between them."""
    clock = FakeClock()
    sims = {"story": StoryProvider(api_key=KEY, clock=clock),
            "generation": GenerationProvider(api_key=KEY, clock=clock),
            "jobstatus": JobStatusProvider(api_key=KEY, clock=clock)}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(serving_in_thread(sim.app)) for name, sim in sims.items()}
        yield {name: Served(sim, clock, urls[name]) for name, sim in sims.items()}


def _fresh(served: Served) -> Served:
    served.sim.faults.clear()
    served.sim.requests.clear()
    return served


@pytest.fixture
def story(served_providers) -> Served:
    return _fresh(served_providers["story"])


@pytest.fixture
def generation(served_providers) -> Served:
    return _fresh(served_providers["generation"])


@pytest.fixture
def jobstatus(served_providers) -> Served:
    return _fresh(served_providers["jobstatus"])


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status
    body = response.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["details"] is None and body["request_id"]
    if code is not None:
        assert body["error"] == code
    return body


class Receiver:
    """A tiny webhook target that records what arrives."""

    def __init__(self, status: int = 200) -> None:
        self.deliveries: list[tuple[httpx.Headers, bytes]] = []
        self.status = status
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        self.deliveries.append((httpx.Headers(request.headers), await request.body()))
        return JSONResponse({"ok": True}, status_code=self.status)

    def statuses(self) -> list[str]:
        return [json.loads(body)["status"] for _, body in self.deliveries]


def verify_sync_signature(header: str, body: bytes, secret: str) -> bool:
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(int(parts["t"]) - time.time()) < 60


# -- auth and errors -----------------------------------------------------------------------------

AUTH_CASES = [
    ("story", "/v1/jobs", "Authorization", f"Bearer {KEY}"),
    ("generation", "/v2/generate/{id}", "x-api-key", KEY),
    ("jobstatus", "/getJobStatus?jobId={id}", "Authorization", f"Bearer {KEY}"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("schema", "path", "header", "good"), AUTH_CASES)
async def test_wrong_or_missing_key_is_401_envelope(served_providers, schema, path, header, good):
    served = _fresh(served_providers[schema])
    url = path.format(id=served.sim.create_job())
    async with httpx.AsyncClient(base_url=served.url) as client:
        missing = await client.get(url)
        wrong = await client.get(url, headers={header: good.replace(KEY, "nope")})
        right = await client.get(url, headers={header: good})
    assert_envelope(missing, 401, "unauthorized")
    assert_envelope(wrong, 401, "unauthorized")
    assert right.status_code == 200
    assert sum(served.sim.requests.values()) == 3


@pytest.mark.anyio
async def test_unknown_job_is_404_envelope(story):
    async with httpx.AsyncClient(base_url=story.url, headers=BEARER) as c:
        response = await c.get("/v1/jobs/00000000-0000-4000-8000-000000000000")
    assert_envelope(response, 404, "not_found")
    assert response.headers["X-Request-ID"] == response.json()["request_id"]


# -- story -------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_story_job_progresses_scene_by_scene(story):
    job_id = story.sim.create_job(story_timeline(scenes=3, step=1.0))
    seen = []
    async with httpx.AsyncClient(base_url=story.url, headers=BEARER) as c:
        for _ in range(5):
            seen.append((await c.get(f"/v1/generate/story/{job_id}")).json())
            story.clock.now += 1
        same = (await c.get(f"/v1/jobs/{job_id}")).json()
    assert [(s["status"], s["scenes_completed"]) for s in seen] == [
        ("pending", 0), ("processing", 0), ("processing", 1), ("processing", 2), ("completed", 3)]
    assert all(s["scenes_total"] == 3 for s in seen)
    assert "started_at" not in seen[0] and "completed_at" not in seen[0]
    assert "started_at" in seen[1] and "completed_at" not in seen[3]
    assert seen[4]["completed_at"].endswith("Z") and seen[4]["created_at"].endswith("Z")
    assert len(seen[4]["result"]["scenes"]) == 3 and "error" not in seen[4]
    assert same == seen[4]
    assert story.sim.requests["get"] == 6


def test_failed_story_carries_error_and_no_result():
    sim = StoryProvider(api_key=KEY, clock=FakeClock())
    job_id = sim.create_job(story_timeline(scenes=4, fail=True))
    while not sim.is_terminal(job_id):
        sim.advance(job_id)
    body = sim.snapshot(job_id)
    assert body["status"] == "failed" and body["scenes_completed"] == 2
    assert set(body["error"]) == {"code", "message"} and "result" not in body
    assert "started_at" in body and "completed_at" in body


@pytest.mark.anyio
async def test_story_list_paginates_newest_first():
    sim = StoryProvider(api_key=KEY)
    ids = [sim.create_job() for _ in range(5)]
    async with serving(sim.app) as base, httpx.AsyncClient(base_url=base, headers=BEARER) as c:
        first = (await c.get("/v1/jobs", params={"limit": 2})).json()
        last = (await c.get("/v1/jobs", params={"limit": 2, "offset": 4})).json()
        default = (await c.get("/v1/jobs")).json()
        capped = (await c.get("/v1/jobs", params={"limit": 500})).json()
        bad = await c.get("/v1/jobs", params={"limit": "many"})
    assert [g["job_id"] for g in first["generations"]] == [ids[4], ids[3]]
    assert (first["total"], first["limit"], first["offset"]) == (5, 2, 0)
    assert [g["job_id"] for g in last["generations"]] == [ids[0]]
    assert default["limit"] == 20 and len(default["generations"]) == 5
    assert capped["limit"] == 100
    assert_envelope(bad, 400)
    assert sim.requests["list"] == 5


# -- generation --------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_generation_wait_returns_when_the_job_turns_terminal(generation):
    job_id = generation.sim.create_job(generation_timeline(step=1.0))
    async with httpx.AsyncClient(base_url=generation.url, headers=X_API_KEY) as c:
        pending = asyncio.create_task(
            c.get(f"/v2/generate/{job_id}", params={"wait": "true", "timeout": 10}))
        await eventually(lambda: generation.sim.requests["get"] == 1)
        assert not pending.done()
        generation.clock.now += 60
        response = await asyncio.wait_for(pending, 5)
    body = response.json()
    assert body["status"] == "COMPLETED" and body["outputUrl"]
    assert body["errorCode"] is None and "progress_percent" not in body


@pytest.mark.anyio
async def test_generation_wait_times_out_with_the_current_state(generation):
    job_id = generation.sim.create_job()
    async with httpx.AsyncClient(base_url=generation.url, headers=X_API_KEY) as c:
        started = time.monotonic()
        response = await c.get(f"/v2/generate/{job_id}", params={"wait": "1", "timeout": 0.2})
        elapsed = time.monotonic() - started
    assert response.json()["status"] == "PENDING"
    assert 0.2 <= elapsed < 3


BAD_GENERATION_QUERIES = [
    {"wait": "true", "include": "progress"},
    {"timeout": "56"},
    {"timeout": "soon"},
    {"wait": "maybe"},
]


@pytest.mark.anyio
async def test_generation_query_include_progress_and_bad_values(generation):
    job_id = generation.sim.create_job(generation_timeline(progress_steps=4))
    generation.sim.advance(job_id)
    generation.sim.advance(job_id)
    async with httpx.AsyncClient(base_url=generation.url, headers=X_API_KEY) as c:
        progress = (await c.get(f"/v2/generate/{job_id}", params={"include": "progress"})).json()
        bad = [await c.get(f"/v2/generate/{job_id}", params=q) for q in BAD_GENERATION_QUERIES]
    assert progress["status"] == "PROCESSING" and progress["progress_percent"] == 25.0
    for response in bad:
        assert_envelope(response, 400, "invalid_parameter")


@pytest.mark.anyio
async def test_generation_webhooks_arrive_signed_without_polling():
    receiver = Receiver()
    sim = GenerationProvider(api_key=KEY, webhook_secret=SECRET)
    async with serving(receiver.app) as hooks, serving(sim.app):
        url = f"{hooks}/hook"
        done = sim.create_job(generation_timeline(step=0.02), webhook_url=url)
        rejected = sim.create_job(generation_timeline(step=0.01, reject=True), webhook_url=url)
        await eventually(lambda: sim.is_terminal(done) and sim.webhooks["sent"] == 3)
    for headers, body in receiver.deliveries:
        assert verify_sync_signature(headers["Sync-Signature"], body, SECRET)
    by_job: dict[str, list[dict]] = {}
    for _, body in receiver.deliveries:
        payload = json.loads(body)
        by_job.setdefault(payload["id"], []).append(payload)
    assert [p["status"] for p in by_job[done]] == ["PROCESSING", "COMPLETED"]
    assert [p["status"] for p in by_job[rejected]] == ["REJECTED"]
    assert by_job[rejected][0]["error_code"] and "errorCode" not in by_job[rejected][0]
    assert by_job[done][-1]["webhookUrl"] == url and by_job[done][-1]["outputUrl"]
    assert sim.requests["get"] == 0


@pytest.mark.anyio
async def test_dropped_and_failed_webhooks_are_counted_not_raised():
    receiver = Receiver(status=500)
    sim = GenerationProvider(api_key=KEY, webhook_secret=SECRET)
    sim.faults.push(Fault(drop_webhooks=1))
    async with serving(receiver.app) as hooks, serving(sim.app) as base:
        job_id = sim.create_job(generation_timeline(step=0.02), webhook_url=f"{hooks}/hook")
        await eventually(lambda: sim.webhooks["dropped"] + sim.webhooks["failed"] == 2)
        async with httpx.AsyncClient(base_url=base, headers=X_API_KEY) as c:
            still_up = await c.get(f"/v2/generate/{job_id}")
    assert sim.webhooks == {"dropped": 1, "failed": 1}
    assert receiver.statuses() == ["COMPLETED"]
    assert still_up.status_code == 200


def test_sync_signature_matches_the_contract():
    header = sync_signature("s", b'{"a":1}', timestamp=1700000000)
    digest = hmac.new(b"s", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={digest}"


# -- jobstatus ---------------------------------------------------------------------------------

def test_jobstatus_cancel_makes_the_job_cancelled_once(jobstatus):
    job_id = jobstatus.sim.create_job(jobstatus_timeline(step=1.0))
    jobstatus.sim.advance(job_id)
    with httpx.Client(base_url=jobstatus.url, headers=BEARER) as c:
        before = c.get("/getJobStatus", params={"jobId": job_id}).json()
        cancelled = c.post("/cancelJob", json={"jobId": job_id})
        after = c.get("/getJobStatus", params={"jobId": job_id}).json()
        again = c.post("/cancelJob", json={"jobId": job_id})
        unknown = c.post("/cancelJob", json={"jobId": "00000000-0000-4000-8000-000000000000"})
        garbled = c.post("/cancelJob", content=b"{not json")
    assert before["status"] == "in_progress" and before["progress_stage"] == "researching"
    assert cancelled.status_code == 200
    assert cancelled.json() == {"message": "Job cancelled successfully"}
    assert after["status"] == "cancelled"
    assert_envelope(again, 409, "already_terminal")
    assert_envelope(unknown, 404)
    assert_envelope(garbled, 400, "invalid_json")
    assert jobstatus.sim.requests == {"get": 2, "cancel": 4}


def test_jobstatus_object_has_the_seed_fields():
    sim = JobStatusProvider(api_key=KEY, clock=FakeClock())
    job_id = sim.create_job(jobstatus_timeline(step=1.0))
    while not sim.is_terminal(job_id):
        sim.advance(job_id)
    body = sim.snapshot(job_id)
    assert set(body) == {
        "id", "user_id", "project_id", "status", "progress", "percent_complete", "progress_stage",
        "title", "is_byok", "reasoning_model", "writing_model", "function_model",
        "error_message", "is_starred", "created_at", "updated_at"}
    assert body["status"] == "completed" and body["progress"] == 100.0


# -- faults ------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_faults_answer_in_order_with_retry_after_then_recover(story):
    job_id = story.sim.create_job()
    story.sim.faults.push(Fault(status=429, retry_after=2, count=2),
                          Fault(status=503, retry_after=0.5))
    async with httpx.AsyncClient(base_url=story.url, headers=BEARER) as c:
        answers = [await c.get(f"/v1/jobs/{job_id}") for _ in range(4)]
    for faulted, status, code, retry in [(answers[0], 429, "rate_limited", "2"),
                                         (answers[1], 429, "rate_limited", "2"),
                                         (answers[2], 503, "service_unavailable", "0.5")]:
        assert_envelope(faulted, status, code)
        assert faulted.headers["Retry-After"] == retry
    assert answers[3].status_code == 200
    assert story.sim.requests["get"] == 4 and len(story.sim.faults) == 0


@pytest.mark.anyio
async def test_fault_for_one_route_leaves_the_others_alone(story):
    job_id = story.sim.create_job()
    story.sim.faults.push(Fault(status=500, route="list"))
    async with httpx.AsyncClient(base_url=story.url, headers=BEARER) as c:
        got = await c.get(f"/v1/jobs/{job_id}")
        listed = await c.get("/v1/jobs")
    assert got.status_code == 200
    assert_envelope(listed, 500, "internal_error")
    assert "Retry-After" not in listed.headers


@pytest.mark.anyio
async def test_delay_fault_answers_late_but_normally(jobstatus):
    job_id = jobstatus.sim.create_job()
    jobstatus.sim.faults.push(Fault(delay=0.3))
    async with httpx.AsyncClient(base_url=jobstatus.url, headers=BEARER) as c:
        started = time.monotonic()
        slow = await c.get("/getJobStatus", params={"jobId": job_id})
        slow_elapsed = time.monotonic() - started
        started = time.monotonic()
        await c.get("/getJobStatus", params={"jobId": job_id})
        fast_elapsed = time.monotonic() - started
    assert slow.status_code == 200
    assert slow_elapsed >= 0.3 > fast_elapsed


@pytest.mark.anyio
async def test_hang_fault_times_the_client_out_and_does_not_hold_shutdown():
    sim = GenerationProvider(api_key=KEY)
    job_id = sim.create_job()
    sim.faults.push(Fault(hang=True))
    async with serving(sim.app) as base:
        async with httpx.AsyncClient(base_url=base, headers=X_API_KEY, timeout=0.2) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.get(f"/v2/generate/{job_id}")
        stopping_from = time.monotonic()
    assert time.monotonic() - stopping_from < 2


def test_faults_are_validated():
    with pytest.raises(ValueError):
        Fault()
    with pytest.raises(ValueError):
        Fault(status=429, count=0)
    with pytest.raises(ValueError):
        Fault(drop_webhooks=1.5)


# -- timelines ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("timeline", "final"), [
    (story_timeline(), "completed"),
    (story_timeline(fail=True), "failed"),
    (generation_timeline(), "COMPLETED"),
    (generation_timeline(fail=True), "FAILED"),
    (generation_timeline(reject=True), "REJECTED"),
    (jobstatus_timeline(), "completed"),
    (jobstatus_timeline(fail=True), "failed"),
])
def test_timelines_end_in_their_outcome_and_move_forward(timeline, final):
    assert timeline[-1].status == final
    assert [step.after for step in timeline] == sorted(step.after for step in timeline)
    assert timeline[0].after == 0.0


def test_advance_keeps_the_spacing_of_later_steps():
    clock = FakeClock()
    sim = JobStatusProvider(api_key=KEY, clock=clock)
    job_id = sim.create_job([Step(0, "queued"), Step(10, "in_progress", progress=50.0),
                             Step(11, "completed", progress=100.0)])
    assert sim.advance(job_id) == "in_progress"
    clock.now += 0.5
    assert sim.snapshot(job_id)["status"] == "in_progress"
    clock.now += 0.5
    assert sim.snapshot(job_id)["status"] == "completed"


# -- what real providers also do ---------------------------------------------------------------

@pytest.mark.anyio
async def test_generation_serves_its_error_catalog_without_an_api_key(generation):
    default = generation.sim.catalog
    async with httpx.AsyncClient(base_url=generation.url) as c:
        answer = await c.get("/v2/errors")
        generation.sim.catalog = [{"code": "x", "message": "y", "fix": "z"}]
        changed = await c.get("/v2/errors")
    generation.sim.catalog = default
    codes = {entry["code"] for entry in answer.json()["errors"]}
    assert {"generation_input_video_inaccessible", "generation_content_rejected"} <= codes
    assert all(entry["suggestedFix"] for entry in answer.json()["errors"])
    assert changed.json() == [{"code": "x", "message": "y", "fix": "z"}]
    assert generation.sim.requests["errors"] == 2


@pytest.mark.anyio
async def test_generation_reports_progress_to_reads_that_ask_and_in_its_webhooks():
    receiver = Receiver()
    sim = GenerationProvider(api_key=KEY, webhook_secret=SECRET)
    async with serving(receiver.app) as hooks, serving(sim.app) as base:
        job_id = sim.create_job(generation_timeline(step=0.3, progress_steps=3),
                                webhook_url=f"{hooks}/hook")
        await eventually(lambda: sim.snapshot(job_id)["status"] == "PROCESSING")
        sim.advance(job_id)
        async with httpx.AsyncClient(base_url=base, headers=X_API_KEY) as c:
            asked = (await c.get(f"/v2/generate/{job_id}", params={"include": "progress"})).json()
            plain = (await c.get(f"/v2/generate/{job_id}")).json()
        await eventually(lambda: sim.is_terminal(job_id) and sim.webhooks["sent"] == 2)
    assert asked["progress_percent"] == 33.3 and "progress_percent" not in plain
    assert sim.reads == {"progress": 1, "plain": 1}
    pushed = [json.loads(body) for _, body in receiver.deliveries]
    assert [(p["status"], p["progress_percent"]) for p in pushed] == [
        ("PROCESSING", 0.0), ("COMPLETED", 100.0)]


@pytest.mark.anyio
async def test_a_refused_job_answers_its_status_with_the_envelope_or_plain_text(story):
    listed = story.sim.create_job(story_timeline(step=60))
    legal = story.sim.create_job(story_timeline(step=60))
    gone = story.sim.create_job(story_timeline(step=60))
    story.sim.refuse(legal, 451, code="content_blocked", message="Blocked in your region.")
    story.sim.refuse(gone, 410, envelope=False, message="gone for good")
    async with httpx.AsyncClient(base_url=story.url, headers=BEARER) as c:
        blocked = await c.get(f"/v1/generate/story/{legal}")
        plain = await c.get(f"/v1/jobs/{gone}")
        page = (await c.get("/v1/jobs", params={"limit": 100})).json()
    assert assert_envelope(blocked, 451, "content_blocked")["message"] == "Blocked in your region."
    assert (plain.status_code, plain.text) == (410, "gone for good")
    ids = {entry["job_id"] for entry in page["generations"]}
    assert listed in ids and not {legal, gone} & ids
    assert story.sim.snapshot(legal)["status"] == "pending"  # its timeline goes on


@pytest.mark.anyio
async def test_story_lists_can_hold_garbled_and_junk_entries():
    sim = StoryProvider(api_key=KEY)
    good, odd = (sim.create_job(story_timeline(step=60)) for _ in range(2))
    sim.garble(odd, {"job_id": odd, "status": 7})
    sim.junk = [42, {"status": "processing"}]
    async with serving(sim.app) as base, httpx.AsyncClient(base_url=base, headers=BEARER) as c:
        page = (await c.get("/v1/jobs")).json()
        second = (await c.get("/v1/jobs", params={"limit": 2, "offset": 2})).json()
        alone = (await c.get(f"/v1/jobs/{odd}")).json()
    assert page["generations"][:3] == [42, {"status": "processing"}, {"job_id": odd, "status": 7}]
    assert page["generations"][3]["job_id"] == good and page["total"] == 4
    assert [e["job_id"] for e in second["generations"]] == [odd, good]
    assert alone["status"] == "pending"


@pytest.mark.anyio
async def test_body_faults_answer_unreadable_or_oversized_bodies(jobstatus):
    job_id = jobstatus.sim.create_job()
    jobstatus.sim.faults.push(Fault(body=b"[" * 10_000), Fault(oversize=3 * 2**20))
    async with httpx.AsyncClient(base_url=jobstatus.url, headers=BEARER) as c:
        nested = await c.get("/getJobStatus", params={"jobId": job_id})
        before = jobstatus.sim.streamed
        large = await c.get("/getJobStatus", params={"jobId": job_id})
    assert (nested.status_code, nested.content) == (200, b"[" * 10_000)
    assert large.status_code == 200 and "content-length" not in large.headers
    assert len(large.content) == 3 * 2**20 and large.content.startswith(b'{"pad": "')
    assert jobstatus.sim.streamed - before >= 3 * 2**20 - 16


def test_body_faults_are_validated():
    with pytest.raises(ValueError):
        Fault(status=500, body=b"{}")
    with pytest.raises(ValueError):
        Fault(oversize=-1)


def test_a_jobstatus_cancel_that_came_too_late_is_cancelling_then_completed():
    sim = JobStatusProvider(api_key=KEY, clock=FakeClock())
    job_id = sim.create_job(jobstatus_timeline(step=1.0, cancelling=True))
    seen = [sim.snapshot(job_id)["status"]]
    while not sim.is_terminal(job_id):
        seen.append(sim.advance(job_id))
    assert seen[-2:] == ["cancelling", "completed"]
    assert sim.snapshot(job_id)["progress_stage"] == "completed"
    with pytest.raises(ValueError):
        jobstatus_timeline(fail=True, cancelling=True)
