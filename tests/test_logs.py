"""Logs worth reading, from a real `relay serve`:
relay's and uvicorn's lines in one format, access lines with the request id and duration
and no token in them, no httpx line per poll, and each job's moves logged once each."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.runtime.logs import LineWriter, TextFormatter
from relay.runtime.server import serving_in_thread
from relay.sim import JobStatusProvider, jobstatus_timeline
from tests.support import RelayProcess, free_port

KEY = "sim-api-key"
RID = "test-request-7"


def config(tmp_path: Path, log_format: str, jobs_url: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(f"""
[server]
store = "sqlite:///{tmp_path}/relay.db"
log_format = "{log_format}"

[providers.gen]
schema = "generation"

[providers.jobs]
schema = "jobstatus"
base_url = "{jobs_url}"
api_key = "{KEY}"
poll_interval = 0.05
poll_max_interval = 0.2
""")
    return path


def final(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = client.get(f"/v1/jobs/{job_id}", params={"wait": "true", "timeout": "10"}).json()
    assert job["terminal"], job
    return job  # type: ignore[no-any-return]


def run_relay(tmp_path: Path, log_format: str) -> tuple[str, dict[str, str]]:
    """Serve relay, make one webhook job and one polled job live their lives, and stop it:
    its log, and the tokens it was handed."""
    provider = JobStatusProvider(KEY)
    with serving_in_thread(provider.app) as jobs_url:
        process = RelayProcess(config(tmp_path, log_format, jobs_url), free_port()).start()
        try:
            tokens = make_jobs(process.url, provider)
        finally:
            process.stop()
    return process.log.read_text(), tokens


def make_jobs(url: str, provider: JobStatusProvider) -> dict[str, str]:
    with httpx.Client(base_url=url, timeout=15) as client:
        tracked = client.post("/v1/jobs", json={"provider": "gen", "external_id": "g-1"},
                              headers={"x-request-id": RID}).json()
        hook = tracked["webhook_url"].removeprefix(url)
        for status in ("PROCESSING", "PROCESSING", "COMPLETED"):  # the repeat changes nothing
            answer = client.post(hook, json={"id": "g-1", "status": status})
            assert answer.status_code in (200, 202), answer.text
        events = client.get(f"/v1/jobs/{tracked['job']['id']}/events",
                            params={"token": tracked["subscribe_token"]})
        assert events.status_code == 200  # its terminal event, then the stream ends
        external = provider.create_job(jobstatus_timeline(step=0.05))
        polled = client.post("/v1/jobs", json={"provider": "jobs", "external_id": external})
        final(client, polled.json()["job"]["id"])
    return {"gen": tracked["job"]["id"], "polled": polled.json()["job"]["id"],
            "hook token": hook.rsplit("/", 1)[1], "subscribe token": tracked["subscribe_token"]}


@pytest.fixture(scope="module")
def json_run(tmp_path_factory) -> tuple[str, dict[str, str]]:
    return run_relay(tmp_path_factory.mktemp("json"), "json")


def test_json_logs_are_one_object_per_line_for_relay_uvicorn_and_access(json_run):
    text, _ = json_run
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON

    loggers = {line["logger"] for line in lines}
    assert {"relay.cli", "uvicorn.error", "relay.access", "relay.ingest.recorder"} <= loggers
    assert not {name for name in loggers if name.startswith(("httpx", "httpcore"))}
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
               for line in lines)
    access = [line for line in lines if line["logger"] == "relay.access"]
    tracked = next(line for line in access if line["request_id"] == RID)
    assert (tracked["method"], tracked["path"], tracked["status"]) == ("POST", "/v1/jobs", 201)
    assert isinstance(tracked["duration_ms"], float) and tracked["duration_ms"] >= 0
    hooks = [line for line in access if line["path"].startswith("/hooks/")]
    assert [line["status"] for line in hooks] == [202, 200, 202]
    assert all(line["path"] == "/hooks/gen/REDACTED" and line["request_id"] for line in hooks)
    streams = [line for line in access if line["path"].endswith("/events?token=REDACTED")]
    assert [line["status"] for line in streams] == [200]
    assert streams[0]["request_id"] and streams[0]["method"] == "GET"


def test_no_token_handed_out_ever_reaches_the_log(json_run):
    text, tokens = json_run
    assert tokens["hook token"] not in text
    assert tokens["subscribe token"] not in text
    assert "/hooks/gen/REDACTED" in text


def test_each_move_of_a_job_is_logged_once_with_its_id_provider_and_state(json_run):
    text, tokens = json_run
    moves = [json.loads(line) for line in text.splitlines()
             if '"logger":"relay.ingest.recorder"' in line]

    def states(job_id: str) -> list[str]:
        return [m["state"] for m in moves if m["job_id"] == job_id]

    assert states(tokens["gen"]) == ["queued", "running", "succeeded"]
    assert {m["provider"] for m in moves if m["job_id"] == tokens["gen"]} == {"gen"}
    polled = states(tokens["polled"])
    assert polled[0] == "queued" and polled[-1] == "succeeded"
    assert max(Counter(polled).values()) == 1  # many polls, each state once
    assert [m["source"] for m in moves if m["job_id"] == tokens["polled"]][1:] == [
        "poll"] * (len(polled) - 1)


def test_text_logs_put_uvicorns_lines_in_relays_format(tmp_path):
    text, tokens = run_relay(tmp_path, "text")
    line_format = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
                             r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
    lines = text.splitlines()
    assert all(line_format.match(line) for line in lines), lines
    assert any(" uvicorn.error: Application startup complete." in line for line in lines)
    assert any(f"relay.access: POST /v1/jobs 201 request_id={RID} " in line for line in lines)
    assert not any(" httpx: " in line for line in lines)
    assert tokens["hook token"] not in text


@pytest.mark.parametrize("log_format", ["xml", ""])
def test_an_unknown_log_format_fails_at_startup_naming_the_key(tmp_path, log_format):
    path = config(tmp_path, log_format, "http://127.0.0.1:9")
    process = RelayProcess(path, free_port())
    with pytest.raises(RuntimeError, match=r"server\.log_format: expected text or json"):
        process.start()


# -- the handler: lines held for a turn of the event loop --------------------------------------

def line_writer() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = LineWriter(stream)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger(f"tests.lines.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return log, stream


def messages(stream: io.StringIO) -> list[str]:
    return [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]


def test_info_lines_logged_in_one_turn_of_the_loop_are_written_together_at_its_end():
    log, stream = line_writer()

    async def turn() -> tuple[list[str], list[str]]:
        log.info("one")
        log.debug("two")
        held = messages(stream)
        await asyncio.sleep(0)  # the turn ends: the handler's call_soon runs before this resumes
        return held, messages(stream)

    held, written = asyncio.run(turn())
    assert held == []
    assert written == ["one", "two"]


def test_a_warning_is_written_at_once_after_the_lines_held_before_it():
    log, stream = line_writer()

    async def turn() -> list[str]:
        log.info("held")
        log.warning("at once")
        return messages(stream)

    assert asyncio.run(turn()) == ["held", "at once"]


def test_lines_logged_off_the_loop_are_written_at_once_and_in_order():
    log, stream = line_writer()
    log.info("no loop")
    assert messages(stream) == ["no loop"]
    thread = threading.Thread(target=log.info, args=("from a thread",))

    async def turn() -> list[str]:
        log.info("on the loop")
        thread.start()
        thread.join()
        return messages(stream)

    assert asyncio.run(turn()) == ["no loop", "on the loop", "from a thread"]


def test_lines_held_by_a_loop_that_closed_are_written_by_the_next_one():
    log, stream = line_writer()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.call_soon(log.info, "held by a loop that then stops")  # its turn's end never runs
    loop.stop()
    loop.run_forever()
    loop.close()

    async def turn() -> list[str]:
        log.info("the next loop's")
        held = messages(stream)
        await asyncio.sleep(0)
        return held

    assert asyncio.run(turn()) == []  # the next loop holds lines in its turn as the first did
    assert messages(stream) == ["held by a loop that then stops", "the next loop's"]


def test_a_text_line_carries_its_fields_and_traceback():
    log, stream = line_writer()
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"job_id": "j-1"})
    first, *rest = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR tests\.lines\.\d+: "
                        r"failed job_id=j-1", first)
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
