"""The foundation, end to end: a real uvicorn relay, real HTTP, a real SSE client."""

from __future__ import annotations

import time

import pytest

from relay.store.sqlite import SQLiteStore
from tests.support import make_settings, running_relay, sse

pytestmark = pytest.mark.anyio


async def test_signed_webhooks_stream_to_a_subscriber_and_resume_from_last_event_id(tmp_path):
    settings = make_settings(store=f"sqlite:///{tmp_path}/relay.db")
    async with running_relay(settings) as relay:
        tracked = await relay.track("gen", "gen-1")
        job_id = tracked["job"]["id"]
        async with sse(relay.client, f"/v1/jobs/{job_id}/events") as stream:
            current = await stream.next()
            assert current.data["state"] == "queued"

            processing = await relay.webhook({"id": "gen-1", "status": "PROCESSING"})
            completed = await relay.webhook({"id": "gen-1", "status": "COMPLETED",
                                             "outputUrl": "https://cdn.example/out.mp4"})
            assert (processing.status_code, completed.status_code) == (202, 202)

            first, second = await stream.take(2)
            assert (first.event, second.event) == ("job.updated", "job.updated")
            assert [first.data["state"], second.data["state"]] == ["running", "succeeded"]
            assert second.data["output"]["outputUrl"] == "https://cdn.example/out.mp4"
            assert first.id == processing.json()["cursor"]
            assert await stream.closed()  # a single-job stream ends after the terminal event

        async with sse(relay.client, f"/v1/jobs/{job_id}/events",
                       last_event_id=first.id) as resumed:
            replayed = await resumed.next()
            assert (replayed.id, replayed.data["state"]) == (second.id, "succeeded")
            assert await resumed.closed()


async def test_subscriber_sees_current_state_first_then_live_events():
    async with running_relay() as relay:
        job_id = (await relay.track("gen", "g2"))["job"]["id"]
        await relay.webhook({"id": "g2", "status": "PROCESSING", "progress_percent": 10})
        async with sse(relay.client, f"/v1/jobs/{job_id}/events") as stream:
            current = await stream.next()
            assert (current.data["state"], current.data["progress"]) == ("running", 0.1)
            assert stream.retry is not None
            await relay.webhook({"id": "g2", "status": "PROCESSING", "progress_percent": 40})
            live = await stream.next()
            assert live.data["progress"] == 0.4


async def test_heartbeats_keep_an_idle_stream_open():
    async with running_relay(make_settings(heartbeat=0.1)) as relay:
        job_id = (await relay.track("gen", "g3"))["job"]["id"]
        async with sse(relay.client, f"/v1/jobs/{job_id}/events") as stream:
            await stream.next()
            with pytest.raises(TimeoutError):
                await stream.next(timeout=0.6)  # idle: no event, only comments
            assert stream.comments.count("heartbeat") >= 3
            await relay.webhook({"id": "g3", "status": "PROCESSING"})
            assert (await stream.next()).data["state"] == "running"


@pytest.mark.parametrize("signature", [None, "t={t},v1=" + "0" * 64, "garbage"])
async def test_bad_or_missing_signature_is_refused_and_stores_nothing(signature):
    async with running_relay() as relay:
        headers = {"content-type": "application/json"}
        if signature is not None:
            headers["sync-signature"] = signature.format(t=int(time.time()))
        response = await relay.client.post("/hooks/gen", content=b'{"id":"x","status":"PENDING"}',
                                           headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_signature"
        assert response.json()["request_id"] == response.headers["x-request-id"]
        assert await relay.store.find("gen", "x") is None
        assert await relay.store.last_cursor() is None


async def test_a_stale_signature_timestamp_is_refused():
    async with running_relay() as relay:
        response = await relay.webhook({"id": "old", "status": "PENDING"},
                                       timestamp=int(time.time()) - 301)
        assert response.status_code == 401
        assert await relay.store.find("gen", "old") is None


async def test_the_same_webhook_twice_makes_one_event():
    async with running_relay() as relay:
        payload = {"id": "dup", "status": "PROCESSING"}
        first = await relay.webhook(payload)
        again = await relay.webhook(payload)
        assert first.status_code == 202
        assert again.status_code == 200
        assert again.json() == {"accepted": True, "duplicate": True,
                                "job_id": first.json()["job_id"]}
        job_id = first.json()["job_id"]
        assert len(await relay.store.history(job_id)) == 1


async def test_a_late_processing_after_completed_stays_succeeded():
    async with running_relay() as relay:
        await relay.webhook({"id": "late", "status": "COMPLETED", "outputUrl": "https://o/1"})
        late = await relay.webhook({"id": "late", "status": "PROCESSING"})
        assert late.status_code == 200 and late.json()["duplicate"] is True
        job = (await relay.client.get(f"/v1/jobs/{late.json()['job_id']}")).json()
        assert (job["state"], job["terminal"], job["version"]) == ("succeeded", True, 1)


async def test_jobs_and_events_survive_a_restart_on_the_same_sqlite_file(tmp_path):
    settings = make_settings(store=f"sqlite:///{tmp_path}/relay.db")
    async with running_relay(settings) as relay:
        job_id = (await relay.track("gen", "keep"))["job"]["id"]
        await relay.webhook({"id": "keep", "status": "PROCESSING"})
        token = (await relay.track("gen", "keep"))["subscribe_token"]
    async with running_relay(settings) as relay:
        job = (await relay.client.get(f"/v1/jobs/{job_id}")).json()
        assert (job["state"], job["version"]) == ("running", 2)
        history = (await relay.client.get(f"/v1/jobs/{job_id}/history")).json()["events"]
        assert [e["job"]["state"] for e in history] == ["queued", "running"]
        # The generated secret is kept in the store, so tokens outlive the process.
        async with sse(relay.client, f"/v1/jobs/{job_id}/events?token={token}") as stream:
            assert (await stream.next()).data["version"] == 2


async def test_tracking_the_same_job_twice_answers_200_with_the_same_job():
    async with running_relay() as relay:
        first = await relay.client.post("/v1/jobs", json={"provider": "gen", "external_id": "a"})
        again = await relay.client.post("/v1/jobs", json={"provider": "gen", "external_id": "a"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["job"]["id"] == again.json()["job"]["id"]


async def test_every_response_carries_a_request_id_and_errors_use_the_envelope():
    async with running_relay() as relay:
        for response in [await relay.client.get("/healthz"),
                         await relay.client.get("/v1/jobs/nope"),
                         await relay.client.post("/hooks/nobody", json={})]:
            assert response.headers["x-request-id"]
        missing = await relay.client.get("/v1/jobs/nope")
        assert missing.status_code == 404
        assert set(missing.json()) == {"error", "message", "details", "request_id"}
        unknown = await relay.client.post("/hooks/nobody", json={})
        assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_provider")


async def test_readyz_answers_when_the_store_is_reachable(tmp_path):
    async with running_relay(make_settings(store=f"sqlite:///{tmp_path}/r.db")) as relay:
        assert (await relay.client.get("/readyz")).json() == {"status": "ready"}
        assert (await relay.client.get("/healthz")).status_code == 200


async def test_sqlite_store_can_be_given_ready_made(tmp_path):
    store = SQLiteStore(str(tmp_path / "given.db"))
    async with running_relay(store=store) as relay:
        assert relay.store is store
        await relay.track("gen", "given")
        assert await store.find("gen", "given") is not None


async def test_tracking_keeps_metadata_exactly_as_given_even_a_provider_key():
    async with running_relay() as relay:
        response = await relay.client.post("/v1/jobs", json={
            "provider": "gen", "external_id": "m", "metadata": {"provider": "mine"}})
        assert response.status_code == 201
        assert response.json()["job"]["metadata"] == {"provider": "mine"}
        await relay.webhook({"id": "m", "status": "PROCESSING", "model": "lipsync-2"})
        job = (await relay.client.get(f"/v1/jobs/{response.json()['job']['id']}")).json()
        assert (job["metadata"], job["provider_data"]["model"]) == ({"provider": "mine"},
                                                                    "lipsync-2")
