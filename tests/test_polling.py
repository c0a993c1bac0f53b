"""Polling fallback, end to end: the real relay on uvicorn against simulated providers served
over real HTTP. Intervals are small (50 ms, backing off to 500 ms) so the suite stays fast."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import httpx
import pytest

from relay.sim import (
    Fault,
    generation_timeline,
    jobstatus_timeline,
    story_timeline,
)
from tests.simulated import KEY, counter, final, relay_for, settings_for, simulators
from tests.support import eventually, sse

pytestmark = pytest.mark.anyio


async def test_a_story_job_moves_scene_by_scene_to_succeeded_and_a_subscriber_sees_each_step():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        external = sims.story.create_job(story_timeline(scenes=3, step=0.4))
        job_id = (await relay.track("stories", external))["job"]["id"]
        async with sse(relay.client, f"/v1/jobs/{job_id}/events") as stream:
            seen = []
            with contextlib.suppress(StopAsyncIteration):
                while True:
                    seen.append((await stream.next(timeout=5)).data)
        stages = list(dict.fromkeys(job["stage"] for job in seen if job["stage"]))
        assert stages == ["scene 0 of 3", "scene 1 of 3", "scene 2 of 3", "scene 3 of 3"]
        assert [job["state"] for job in seen][-1] == "succeeded"
        assert seen[-1]["output"]["title"] == "A simulated story"


async def test_fifty_story_jobs_are_refreshed_by_list_pages_not_one_get_each():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        externals = [sims.story.create_job(story_timeline(scenes=2, step=0.3))
                     for _ in range(50)]
        tracked = await asyncio.gather(*(relay.track("stories", e) for e in externals))
        jobs = await asyncio.gather(*(final(relay, t["job"]["id"]) for t in tracked))
        assert {job["state"] for job in jobs} == {"succeeded"}
        # Each job went through four states; one GET each would have cost 200 calls or more.
        # A list page refreshes all 50 at once: a round costs one call.
        assert sims.story.requests["get"] <= 5
        assert sims.story.requests["list"] < 50
        histories = [(await relay.client.get(f"/v1/jobs/{t['job']['id']}/history")).json()
                     for t in tracked[:5]]
        assert all(len(h["events"]) >= 4 for h in histories)  # every step was seen


async def test_a_429_with_retry_after_pauses_every_poll_to_that_provider():
    async with simulators() as sims:
        settings = settings_for(sims, jobs={"max_concurrency": 1})
        sims.jobs.faults.push(Fault(status=429, retry_after=2))
        async with relay_for(settings) as relay:
            externals = [sims.jobs.create_job(jobstatus_timeline(step=0.1)) for _ in range(3)]
            tracked = [await relay.track("jobs", e) for e in externals]
            for t in tracked:
                assert (await final(relay, t["job"]["id"]))["state"] == "succeeded"
        refused_at = next(at for at, status in sims.jobs_seen.answers if status == 429)
        later = [at for at in sims.jobs_seen.arrivals if at > refused_at]
        assert later, "polling resumed"
        assert later[0] - refused_at >= 2.0


async def test_jobs_reach_their_final_state_through_500s_timeouts_and_dropped_webhooks():
    async with simulators() as sims, httpx.AsyncClient(timeout=0.5) as http, \
            relay_for(settings_for(sims), http=http) as relay:
        sims.jobs.faults.push(Fault(status=500, count=3))
        sims.story.faults.push(Fault(hang=True, count=2))
        sims.gen.faults.push(Fault(drop_webhooks=1.0))  # every webhook is lost
        jobs_ext = sims.jobs.create_job(jobstatus_timeline(step=0.1))
        story_ext = sims.story.create_job(story_timeline(scenes=2, step=0.1))
        gen_ext = sims.gen.create_job(generation_timeline(step=0.2),
                                      webhook_url=f"{relay.url}/hooks/gen")
        tracked = [await relay.track("jobs", jobs_ext), await relay.track("stories", story_ext),
                   await relay.track("gen", gen_ext)]
        jobs = [await final(relay, t["job"]["id"]) for t in tracked]
        assert [job["state"] for job in jobs] == ["succeeded"] * 3
        assert jobs[2]["output"]["outputUrl"].endswith("output.mp4")
        assert sims.gen.webhooks["dropped"] >= 1
        assert await counter(relay, "relay_polls_total", provider="jobs",
                             outcome="server_error") == 3
        assert await counter(relay, "relay_polls_total", provider="stories",
                             outcome="unreachable") == 2


async def test_a_generation_job_whose_webhooks_arrive_is_read_once_then_never_polled():
    # With `progress` off only: with it on (the default) relay polls for progress, which
    # webhooks never report (test_polling_progress.py).
    async with simulators() as sims:
        settings = settings_for(sims, gen={"webhook_grace": 5, "progress": False})
        async with relay_for(settings) as relay:
            gen_ext = sims.gen.create_job(generation_timeline(step=0.1),
                                          webhook_url=f"{relay.url}/hooks/gen")
            job_id = (await relay.track("gen", gen_ext))["job"]["id"]
            assert (await final(relay, job_id))["state"] == "succeeded"
        assert sims.gen.webhooks["sent"] >= 2  # PROCESSING, COMPLETED
        # The one read when tracking starts: its webhookUrl is relay's.
        assert sims.gen.requests["get"] == 1


async def test_a_generation_job_past_its_grace_is_long_polled_until_terminal():
    settings_extra = {"webhook_grace": 0.2, "poll_max_interval": 3, "progress": False}
    async with simulators() as sims:
        settings = settings_for(sims, gen=settings_extra)
        async with relay_for(settings) as relay:
            gen_ext = sims.gen.create_job(generation_timeline(step=0.5))  # no webhook URL
            job_id = (await relay.track("gen", gen_ext))["job"]["id"]
            assert (await final(relay, job_id))["state"] == "succeeded"
        # One quick read with progress when tracking started (no webhookUrl: it will never
        # call back), then long-polls held open by the provider (up to 3 s each) until the
        # job ended about 2 s later.
        assert sims.gen.requests["get"] <= 3
        assert sims.gen.reads["wait"] >= 1


async def test_a_job_first_seen_by_webhook_is_polled_to_its_end():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        gen_ext = sims.gen.create_job(generation_timeline(step=0.2))  # pushes nothing itself
        first = await relay.webhook(sims.gen.snapshot(gen_ext))
        assert first.status_code == 202
        job = await final(relay, first.json()["job_id"])
        assert job["state"] == "succeeded"
        assert sims.gen.requests["get"] >= 1


async def test_an_unverified_delivery_makes_the_relay_poll_the_job_it_names():
    async with simulators() as sims:
        settings = settings_for(sims, gen={"webhook_grace": 60, "progress": False})
        sims.gen.faults.push(Fault(drop_webhooks=1.0))  # it calls relay back, but none arrive
        async with relay_for(settings) as relay:
            gen_ext = sims.gen.create_job(generation_timeline(step=0.3),
                                          webhook_url=f"{relay.url}/hooks/gen")
            job_id = (await relay.track("gen", gen_ext))["job"]["id"]
            await eventually(lambda: sims.gen.is_terminal(gen_ext))
            forged = await relay.webhook({"id": gen_ext, "status": "COMPLETED"}, secret="wrong")
            assert forged.status_code == 401
            job = await final(relay, job_id, timeout=5)
            assert job["state"] == "succeeded"
            history = (await relay.client.get(f"/v1/jobs/{job_id}/history")).json()["events"]
            assert history[-1]["source"] == "poll"
            # The read when tracking started, then the one the forged delivery asked for.
            assert sims.gen.requests["get"] == 2


async def test_polling_resumes_after_a_restart_and_the_job_completes(tmp_path):
    async with simulators() as sims:
        settings = settings_for(sims, store=f"sqlite:///{tmp_path}/relay.db")
        jobs_ext = sims.jobs.create_job(jobstatus_timeline(step=0.3))
        async with relay_for(settings) as relay:
            job_id = (await relay.track("jobs", jobs_ext))["job"]["id"]

            async def running() -> bool:
                return (await relay.client.get(f"/v1/jobs/{job_id}")).json()["state"] == "running"

            await eventually(running)
        assert not sims.jobs.is_terminal(jobs_ext)
        async with relay_for(settings) as relay:
            job = await final(relay, job_id)
            assert (job["state"], job["progress"]) == ("succeeded", 1.0)
            history = (await relay.client.get(f"/v1/jobs/{job_id}/history")).json()["events"]
            assert [e["job"]["state"] for e in history][-1] == "succeeded"


async def test_cancel_stops_a_jobstatus_job_at_the_provider_and_it_becomes_canceled():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        jobs_ext = sims.jobs.create_job(jobstatus_timeline(step=30))
        job_id = (await relay.track("jobs", jobs_ext))["job"]["id"]
        response = await relay.client.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text
        assert (response.json()["state"], response.json()["terminal"]) == ("canceled", True)
        assert sims.jobs.snapshot(jobs_ext)["status"] == "cancelled"
        history = (await relay.client.get(f"/v1/jobs/{job_id}/history")).json()["events"]
        assert (history[-1]["source"], history[-1]["job"]["state"]) == ("api", "canceled")

        again = await relay.client.post(f"/v1/jobs/{job_id}/cancel")
        assert (again.status_code, again.json()["error"]) == (409, "already_terminal")


async def test_cancel_answers_409_for_schemas_without_cancel_and_404_for_unknown_jobs():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        story_id = (await relay.track("stories", sims.story.create_job()))["job"]["id"]
        story = await relay.client.post(f"/v1/jobs/{story_id}/cancel")
        assert (story.status_code, story.json()["error"]) == (409, "cancel_not_supported")
        unknown = await relay.client.post("/v1/jobs/nope/cancel")
        assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")


async def test_cancel_answers_502_when_the_provider_fails_and_the_job_goes_on():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        jobs_ext = sims.jobs.create_job(jobstatus_timeline(step=30))
        job_id = (await relay.track("jobs", jobs_ext))["job"]["id"]
        sims.jobs.faults.push(Fault(status=500, route="cancel"))
        response = await relay.client.post(f"/v1/jobs/{job_id}/cancel")
        assert (response.status_code, response.json()["error"]) == (502, "provider_error")
        assert response.json()["details"]["status"] == 500
        job = (await relay.client.get(f"/v1/jobs/{job_id}")).json()
        assert not job["terminal"]


async def test_cancel_requires_an_api_key_when_keys_are_configured():
    async with simulators() as sims, \
            relay_for(settings_for(sims, server={"api_keys": ["k"]})) as relay:
        response = await relay.client.post("/v1/jobs/anything/cancel")
        assert (response.status_code, response.json()["error"]) == (401, "unauthorized")


async def test_a_job_the_provider_answers_404_for_three_times_fails_with_its_code():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        job_id = (await relay.track("jobs", "no-such-job"))["job"]["id"]
        job = await final(relay, job_id)
        assert job["state"] == "failed"
        # the provider's error code (its envelope says "not_found") and
        # message; provider_not_found only where it sent none (test_polling_answers.py).
        assert job["error"] == {"code": "not_found", "message": "Job no-such-job not found.",
                                "fix": None, "retryable": False}
        assert sims.jobs.requests["get"] == 3


async def test_a_provider_refusing_credentials_shows_in_readyz_and_metrics_without_hot_looping():
    async with simulators(jobs_key="the-real-key") as sims, \
            relay_for(settings_for(sims, jobs={"max_concurrency": 2})) as relay:
        externals = [sims.jobs.create_job(jobstatus_timeline(step=0.1)) for _ in range(10)]
        tracked = [await relay.track("jobs", e) for e in externals]

        async def refused() -> bool:
            ready = (await relay.client.get("/readyz")).json()
            return ready.get("providers", {}).get("jobs", {}).get("polling") == "unauthorized"

        await eventually(refused)
        ready = await relay.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["providers"]["jobs"]["status"] == 401
        assert await counter(relay, "relay_provider_unauthorized", provider="jobs") == 1
        # One probe at a time, the pauses between them growing: not a loop per job.
        await eventually(lambda: len(sims.jobs_seen.arrivals) >= 7)
        probes = sims.jobs_seen.arrivals[-4:]
        gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
        assert min(gaps) >= 0.05 * 0.99
        assert sum(gaps) >= 0.3
        assert await counter(relay, "relay_polls_total", provider="jobs",
                             outcome="unauthorized") >= 7

        sims.jobs.api_key = KEY  # the credentials are fixed: polling recovers by itself
        for t in tracked:
            assert (await final(relay, t["job"]["id"]))["state"] == "succeeded"
        assert (await relay.client.get("/readyz")).json() == {"status": "ready"}
        assert await counter(relay, "relay_provider_unauthorized", provider="jobs") == 0
