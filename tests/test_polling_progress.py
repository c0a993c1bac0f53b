"""Generation progress and callbacks, story lists, and what polls carry: the real relay on
uvicorn against simulated providers over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from relay.sim import Fault, generation_timeline, jobstatus_timeline, story_timeline
from tests.simulated import counter, final, history, relay_for, settings_for, simulators
from tests.support import eventually

pytestmark = pytest.mark.anyio


class Queried:
    """An ASGI wrapper noting the path and query of each request: what relay asked."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
            self.seen.append((scope["path"], query))
        await self.app(scope, receive, send)


# -- generation: progress, and jobs that will never call back ---------------------------------

async def test_generation_progress_moves_by_polls_while_its_webhooks_arrive():
    async with simulators() as sims, relay_for(settings_for(sims, gen={"webhook_grace": 60})
                                               ) as relay:
        external = sims.gen.create_job(generation_timeline(step=0.3, progress_steps=5),
                                       webhook_url=f"{relay.url}/hooks/gen")
        job_id = (await relay.track("gen", external))["job"]["id"]
        job = await final(relay, job_id)
        events = await history(relay, job_id)
    assert job["state"] == "succeeded" and job["progress"] == 1.0
    part_way = [e["job"]["progress"] for e in events
                if e["source"] == "poll" and e["job"]["state"] == "running"
                and 0 < (e["job"]["progress"] or 0) < 1]
    assert len(part_way) >= 2 and part_way == sorted(part_way)
    assert sims.gen.webhooks["sent"] >= 2  # the webhooks arrived all along
    assert sims.gen.reads["progress"] >= 3 and sims.gen.reads["wait"] == 0


async def test_generation_with_progress_off_long_polls_and_reports_no_progress_in_between():
    async with simulators() as sims, relay_for(settings_for(
            sims, gen={"progress": False, "webhook_grace": 0.2, "poll_max_interval": 2})) as relay:
        external = sims.gen.create_job(generation_timeline(step=0.3, progress_steps=5))
        job_id = (await relay.track("gen", external))["job"]["id"]
        assert (await final(relay, job_id))["state"] == "succeeded"
    assert sims.gen.reads["progress"] <= 2 and sims.gen.reads["wait"] >= 1


@pytest.mark.parametrize("webhook_url", [None, "http://127.0.0.1:9/someone-else/hooks/gen"],
                         ids=["no webhookUrl", "another's webhookUrl"])
async def test_a_generation_job_that_will_never_call_back_is_polled_without_waiting(
        webhook_url):
    async with simulators() as sims, relay_for(settings_for(
            sims, gen={"progress": False, "webhook_grace": 120, "poll_max_interval": 2})
                                               ) as relay:
        external = sims.gen.create_job(generation_timeline(step=0.2), webhook_url=webhook_url)
        job_id = (await relay.track("gen", external))["job"]["id"]
        job = await final(relay, job_id, timeout=8)  # not after webhook_grace (120 s)
    assert job["state"] == "succeeded"
    assert sims.gen.reads["wait"] >= 1
    assert sims.gen.webhooks["sent"] == 0  # what it pushed never reached relay


async def test_a_webhook_shows_a_job_calls_back_whatever_its_webhook_url_said():
    async with simulators() as sims:
        settings = settings_for(sims, gen={"progress": False, "webhook_grace": 60})
        async with relay_for(settings) as relay:
            # Its webhookUrl is another host's, which forwards to relay: it does call back.
            external = sims.gen.create_job(generation_timeline(step=60),
                                           webhook_url="https://forwarder.example/hooks/x")
            job_id = (await relay.track("gen", external))["job"]["id"]
            await eventually(lambda: sims.gen.reads["progress"] == 1)
            while not sims.gen.is_terminal(external):
                sims.gen.advance(external)
            pushed = {**sims.gen.snapshot(external), "progress_percent": 100.0}
            assert (await relay.webhook(pushed)).status_code == 202
            assert (await final(relay, job_id))["state"] == "succeeded"


# -- story lists ----------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def queried_story(**overrides: Any) -> AsyncIterator[tuple[Any, Any, Queried]]:
    async with simulators() as sims:
        queried = Queried(sims.story.app)
        from relay.runtime.server import serving
        async with serving(queried) as url:
            sims.urls["stories"] = url
            async with relay_for(settings_for(sims, stories=overrides)) as relay:
                yield sims, relay, queried


async def test_an_unreadable_list_entry_spoils_only_its_job_which_is_read_alone():
    async with queried_story(page_size=2) as (sims, relay, queried):
        sims.story.junk = [42, {"status": "processing"}, {"job_id": "not-tracked"}]
        externals = [sims.story.create_job(story_timeline(scenes=2, step=0.4))
                     for _ in range(5)]
        odd = externals[2]
        sims.story.garble(odd, {"job_id": odd, "status": ["not", "a", "word"]})
        tracked = [await relay.track("stories", e) for e in externals]
        jobs = [await final(relay, t["job"]["id"]) for t in tracked]
        unreadable = await counter(relay, "relay_list_entries_unreadable_total",
                                   provider="stories")
    assert {job["state"] for job in jobs} == {"succeeded"}
    lists = [query for path, query in queried.seen if path == "/v1/jobs"]
    gets = {path.rsplit("/", 1)[1] for path, _ in queried.seen if path != "/v1/jobs"}
    assert {query["limit"] for query in lists} == {"2"}
    # 3 junk entries and 5 jobs: pages start at 0, 2, 4 and 6, counting every entry.
    assert {query["offset"] for query in lists} == {"0", "2", "4", "6"}
    assert gets == {odd}
    assert unreadable >= 4  # 42, the entry without job_id, the garbled one, each sweep


async def test_a_story_list_is_asked_for_page_size_entries_by_default_50():
    async with queried_story() as (sims, relay, queried):
        externals = [sims.story.create_job(story_timeline(scenes=1, step=0.3))
                     for _ in range(3)]
        tracked = [await relay.track("stories", e) for e in externals]
        for t in tracked:
            await final(relay, t["job"]["id"])
    assert {q["limit"] for path, q in queried.seen if path == "/v1/jobs"} == {"50"}


async def test_a_job_a_story_list_misses_is_read_alone_and_its_refusal_fails_it():
    async with queried_story() as (sims, relay, queried):
        listed = sims.story.create_job(story_timeline(scenes=2, step=0.3))
        refused = sims.story.create_job(story_timeline(scenes=2, step=60))
        sims.story.refuse(refused, 451, code="content_blocked",
                          message="This story is unavailable in your region.")
        tracked = [await relay.track("stories", e) for e in (listed, refused)]
        jobs = [await final(relay, t["job"]["id"]) for t in tracked]
    assert jobs[0]["state"] == "succeeded"
    assert (jobs[1]["state"], jobs[1]["error"]) == ("failed", {
        "code": "content_blocked", "message": "This story is unavailable in your region.",
        "fix": None, "retryable": False})
    assert any(path.endswith(refused) for path, _ in queried.seen)


async def test_a_story_list_the_provider_refuses_leaves_each_job_to_its_own_read():
    async with queried_story() as (sims, relay, _):
        sims.story.faults.push(Fault(status=422, route="list", count=1000))
        externals = [sims.story.create_job(story_timeline(scenes=2, step=0.2))
                     for _ in range(3)]
        tracked = [await relay.track("stories", e) for e in externals]
        jobs = [await final(relay, t["job"]["id"]) for t in tracked]
    assert {job["state"] for job in jobs} == {"succeeded"}
    assert sims.story.requests["list"] <= 2


# -- what polls carry -------------------------------------------------------------------------

async def test_polls_carry_provider_times_provider_data_and_the_catalog_s_fix():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        await eventually(lambda: counter(relay, "relay_error_catalog_codes", provider="gen"))
        story_ext = sims.story.create_job(story_timeline(scenes=2, step=0.2))
        jobs_ext = sims.jobs.create_job(jobstatus_timeline(step=0.1))
        gen_ext = sims.gen.create_job(generation_timeline(step=0.1, fail=True))
        tracked = [await relay.track("stories", story_ext), await relay.track("jobs", jobs_ext),
                   await relay.track("gen", gen_ext)]
        story, jobs, gen = [await final(relay, t["job"]["id"]) for t in tracked]
    provider_story = sims.story.snapshot(story_ext)
    assert (story["started_at"], story["finished_at"]) == (provider_story["started_at"],
                                                           provider_story["completed_at"])
    assert jobs["provider_data"]["title"] == sims.jobs.snapshot(jobs_ext)["title"]
    assert jobs["provider_data"]["writing_model"] == "google/gemini-2.5-flash-001"
    assert gen["provider_data"]["model"] == "lipsync-2"
    assert gen["error"]["code"] == "generation_input_video_inaccessible"
    assert gen["error"]["fix"].startswith("Make the video URL publicly readable")
    assert gen["error"]["retryable"] is False


async def test_a_jobstatus_job_being_cancelled_runs_on_and_then_completes():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        external = sims.jobs.create_job(jobstatus_timeline(step=0.3, cancelling=True))
        job_id = (await relay.track("jobs", external))["job"]["id"]
        job = await final(relay, job_id)
        events = await history(relay, job_id)
    assert job["state"] == "succeeded"
    assert ("running", "cancelling", False) in {
        (e["job"]["state"], e["job"]["stage"], e["job"]["terminal"]) for e in events}


async def test_a_webhook_s_error_gets_the_catalog_s_fix_too():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        await eventually(lambda: counter(relay, "relay_error_catalog_codes", provider="gen"))
        answer = await relay.webhook({"id": "hooked-1", "status": "FAILED",
                                      "error_code": "generation_input_video_inaccessible"})
        assert answer.status_code == 202
        job = (await relay.client.get(f"/v1/jobs/{answer.json()['job_id']}")).json()
    assert job["error"]["code"] == "generation_input_video_inaccessible"
    assert job["error"]["fix"].startswith("Make the video URL publicly readable")
