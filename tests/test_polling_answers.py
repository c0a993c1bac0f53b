"""What a provider answers a poll decides what happens, and every
job has a deadline: the real relay on uvicorn against simulated providers over real HTTP."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.ingest.providers import MAX_ANSWER
from relay.settings import parse_settings
from relay.sim import Fault, generation_timeline, jobstatus_timeline
from tests.simulated import counter, final, history, relay_for, settings_for, simulators
from tests.support import eventually, free_port

pytestmark = pytest.mark.anyio

FOREVER = 10**6  # a fault's count: every request until cleared


async def readyz(relay: Any) -> dict[str, Any]:
    return (await relay.client.get("/readyz")).json()  # type: ignore[no-any-return]


# -- the account cannot call the API: the provider pauses, jobs stay ----------------------------

@pytest.mark.parametrize(("status", "word"), [(402, "payment_required"), (403, "unauthorized")])
async def test_a_402_or_403_pauses_the_provider_shows_in_readyz_and_keeps_the_jobs(status, word):
    async with simulators() as sims, \
            relay_for(settings_for(sims, jobs={"max_concurrency": 2})) as relay:
        sims.jobs.faults.push(Fault(status=status, count=FOREVER))
        externals = [sims.jobs.create_job(jobstatus_timeline(step=0.1)) for _ in range(5)]
        tracked = [await relay.track("jobs", e) for e in externals]

        async def paused() -> bool:
            return (await readyz(relay)).get("providers", {}).get("jobs", {}).get(
                "polling") == word

        await eventually(paused)
        shown = (await readyz(relay))["providers"]["jobs"]
        assert (shown["status"], shown["error"]) == (status, sims_code(status))
        assert await counter(relay, "relay_provider_unauthorized", provider="jobs") == 1
        # Probed gently, one call at a time, the pauses growing: no loop per job. (Counted
        # from when it showed paused: the first wave of calls crossed the first refusal.)
        mark = len(sims.jobs_seen.arrivals)
        await eventually(lambda: len(sims.jobs_seen.arrivals) >= mark + 4)
        gaps = [b - a for a, b in itertools.pairwise(sims.jobs_seen.arrivals[mark:])]
        assert min(gaps) >= 0.05 * 0.99
        for t in tracked:  # the jobs stay as they were
            job = (await relay.client.get(f"/v1/jobs/{t['job']['id']}")).json()
            assert (job["state"], job["error"]) == ("queued", None)

        sims.jobs.faults.clear()  # the account is paid up: polling recovers by itself
        for t in tracked:
            assert (await final(relay, t["job"]["id"]))["state"] == "succeeded"
        assert await readyz(relay) == {"status": "ready"}
        assert await counter(relay, "relay_provider_unauthorized", provider="jobs") == 0


def sims_code(status: int) -> str:
    return {402: "payment_required", 403: "forbidden"}[status]


# -- the job is gone or refused: it fails with the provider's reason ----------------------------

@pytest.mark.parametrize(("status", "envelope", "expected"), [
    (451, {"code": "content_blocked", "message": "Blocked in your region."},
     {"code": "content_blocked", "message": "Blocked in your region."}),
    (410, {"code": "job_expired", "message": "Jobs are kept 7 days."},
     {"code": "job_expired", "message": "Jobs are kept 7 days."}),
    (410, None, {"code": "provider_not_found"}),
    (451, None, {"code": "http_451"}),
    (400, None, {"code": "http_400"}),
    (422, {"code": "invalid_job_id", "message": "jobId must be a UUID."},
     {"code": "invalid_job_id", "message": "jobId must be a UUID."}),
], ids=["451", "410", "410 plain", "451 plain", "400 plain", "422"])
async def test_a_job_the_provider_refuses_fails_at_once_and_is_polled_no_more(
        status, envelope, expected):
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        external = sims.jobs.create_job(jobstatus_timeline(step=60))
        if envelope is None:
            sims.jobs.refuse(external, status, envelope=False, message="refused")
        else:
            sims.jobs.refuse(external, status, **envelope)
        job = await final(relay, (await relay.track("jobs", external))["job"]["id"])
        # Another job polled to its end meanwhile: the refused one was not polled again.
        other = sims.jobs.create_job(jobstatus_timeline(step=0.2))
        await final(relay, (await relay.track("jobs", other))["job"]["id"])
    assert job["state"] == "failed" and job["terminal"]
    error = job["error"]
    assert {key: error[key] for key in expected} == expected
    assert error["retryable"] is False
    if envelope is None:  # the provider's words are kept, whatever their shape
        assert f"answered {status}: refused" in error["message"]
    assert sims.jobs_seen.asked.count(external) == 1
    assert sims.jobs_seen.asked.count(other) >= 2


# -- passing trouble: back off and try again -----------------------------------------------------

@pytest.mark.parametrize("status", [408, 409, 425, 500, 502, 504])
async def test_passing_trouble_is_retried_until_the_job_ends(status):
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        sims.jobs.faults.push(Fault(status=status, count=3))
        external = sims.jobs.create_job(jobstatus_timeline(step=0.1))
        job = await final(relay, (await relay.track("jobs", external))["job"]["id"])
    assert job["state"] == "succeeded"
    assert sims.jobs.requests["get"] >= 4


async def test_a_retry_after_on_passing_trouble_is_honoured_for_that_job():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        sims.jobs.faults.push(Fault(status=409, retry_after=1))
        external = sims.jobs.create_job(jobstatus_timeline(step=0.1))
        job = await final(relay, (await relay.track("jobs", external))["job"]["id"])
    assert job["state"] == "succeeded"
    refused_at = next(at for at, status in sims.jobs_seen.answers if status == 409)
    later = [at for at in sims.jobs_seen.arrivals if at > refused_at]
    assert later and later[0] - refused_at >= 1.0


async def test_unreadable_oversized_and_deeply_nested_answers_are_passing_trouble():
    async with simulators() as sims, relay_for(settings_for(sims)) as relay:
        sims.jobs.faults.push(Fault(oversize=64 * 2**20), Fault(body=b"[" * 200_000),
                              Fault(body=b"<html>502</html>"))
        external = sims.jobs.create_job(jobstatus_timeline(step=0.1))
        job = await final(relay, (await relay.track("jobs", external))["job"]["id"])
        unreadable = await counter(relay, "relay_polls_total", provider="jobs",
                                   outcome="unreadable")
    assert job["state"] == "succeeded"
    assert unreadable == 3
    assert sims.jobs.streamed < MAX_ANSWER + 16 * 2**20  # the 64 MB answer was not read whole


# -- deadlines -------------------------------------------------------------------------------

async def test_a_job_past_max_job_age_fails_with_deadline_exceeded_and_is_polled_no_more():
    async with simulators() as sims, relay_for(settings_for(sims, jobs={"max_job_age": 0.5})
                                               ) as relay:
        external = sims.jobs.create_job(jobstatus_timeline(step=60))
        job_id = (await relay.track("jobs", external))["job"]["id"]
        job = await final(relay, job_id)
        polls = sims.jobs_seen.asked.count(external)
        other = sims.jobs.create_job(jobstatus_timeline(step=0.04))  # ends before its deadline
        assert (await final(relay, (await relay.track("jobs", other))["job"]["id"]))[
            "state"] == "succeeded"
        expired = await counter(relay, "relay_job_deadlines_exceeded_total", provider="jobs")
        tracked_at = (await history(relay, job_id))[0]["received_at"]
    assert (job["state"], job["error"]["code"], job["error"]["retryable"]) == (
        "failed", "deadline_exceeded", True)
    assert job["provider_status"] == "queued"  # what the provider last said stays
    assert 0.5 <= seconds_between(tracked_at, job["finished_at"]) < 1.5
    assert expired == 1 and polls >= 1
    assert sims.jobs_seen.asked.count(external) == polls  # none after it failed
    assert sims.jobs_seen.asked.count(other) >= 2


async def test_a_job_no_poller_polls_gets_its_deadline_too():
    settings = parse_settings({"server": {"store": "memory://", "port": free_port()},
                               "providers": {"pushed": {"schema": "generation",
                                                        "max_job_age": 0.3}}})
    async with relay_for(settings) as relay:
        job = await final(relay, (await relay.track("pushed", "g-1"))["job"]["id"])
    assert (job["state"], job["error"]["code"]) == ("failed", "deadline_exceeded")


async def test_max_job_age_0_means_no_deadline():
    async with simulators() as sims, relay_for(settings_for(sims, jobs={"max_job_age": 0})
                                               ) as relay:
        external = sims.jobs.create_job(jobstatus_timeline(step=0.3))
        job = await final(relay, (await relay.track("jobs", external))["job"]["id"])
    assert job["state"] == "succeeded"


async def test_a_deadline_counts_from_tracking_across_a_restart(tmp_path):
    async with simulators() as sims:
        settings = settings_for(sims, store=f"sqlite:///{tmp_path}/relay.db",
                                jobs={"max_job_age": 3})
        external = sims.jobs.create_job(jobstatus_timeline(step=1.5))
        async with relay_for(settings) as relay:
            job_id = (await relay.track("jobs", external))["job"]["id"]

            async def running() -> bool:
                job = (await relay.client.get(f"/v1/jobs/{job_id}")).json()
                return job["state"] == "running"  # 1.5 s after tracking

            await eventually(running)
        restarted_at = datetime.now(UTC)
        async with relay_for(settings) as relay:
            job = await final(relay, job_id)
            tracked_at = (await history(relay, job_id))[0]["received_at"]
    assert job["error"]["code"] == "deadline_exceeded"
    # Counted from tracking (3 s), not from the restart, which came 1.5 s or more after it.
    assert seconds_between(tracked_at, job["finished_at"]) >= 3.0
    assert datetime.fromisoformat(job["finished_at"]) < restarted_at + timedelta(seconds=3)


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


# -- the error catalog ---------------------------------------------------------------------------

async def test_a_catalog_that_cannot_be_read_at_startup_is_not_fatal_and_logged_once(caplog):
    async with simulators() as sims:
        sims.gen.faults.push(Fault(status=500, route="errors"))
        async with relay_for(settings_for(sims)) as relay:
            await eventually(lambda: sims.gen.requests["errors"] == 1)
            assert (await readyz(relay)) == {"status": "ready"}
            external = sims.gen.create_job(generation_timeline(step=0.1, fail=True))
            job = await final(relay, (await relay.track("gen", external))["job"]["id"])
            failed = await counter(relay, "relay_error_catalog_reads_total", provider="gen",
                                   outcome="failed")
    assert (job["state"], job["error"]["code"]) == ("failed",
                                                   "generation_input_video_inaccessible")
    assert job["error"]["fix"] is None  # no catalog to explain it with
    assert failed == 1
    warnings = [r for r in caplog.records
                if "error catalog of gen" in r.getMessage() and r.levelname == "WARNING"]
    assert len(warnings) == 1
