"""`relay demo` as a user runs it: headless to completion, stopped with Ctrl-C at any moment,
and its dashboard in a real browser. (Its command line: tests/test_demo_cli.py.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import ARTIFACTS, page, wait_until
from tests.support import Demo, free_port

__all__ = ["page"]  # the fixture, used by name

pytestmark = pytest.mark.slow

PROGRESS = re.compile(
    r"relay demo: \d+ jobs?: \d+ (queued|running|succeeded|failed|canceled)"
    r"(, \d+ (queued|running|succeeded|failed|canceled))*")
SUMMARY = re.compile(
    r"relay demo: (done|stopped after [\d.]+ s|interrupted): (\d+) jobs?: (\d+) succeeded, "
    r"(\d+) failed, (\d+) canceled(; not terminal: .*)?")


def relay_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "demo", *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "RELAY_PORT": "", "PORT": ""})


# -- headless runs ---------------------------------------------------------------------------

def wait_ready(process: subprocess.Popen[str], url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the demo did not answer at {url} within {timeout} s")


def test_headless_demo_on_relay_port_reports_progress_and_exits_0_when_all_are_terminal(
        tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--jobs", "6", "--exit-after", "45",
         "--dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RELAY_PORT": str(port), "PORT": ""})
    wait_ready(process, f"http://127.0.0.1:{port}")
    out, err = process.communicate(timeout=55)
    assert process.returncode == 0, out + err
    first, *progress, last = out.splitlines()
    assert first == (f"relay demo: dashboard at http://127.0.0.1:{port}/  "
                     f"(store {tmp_path / 'relay.db'})")
    assert progress, "no progress line"
    assert all(PROGRESS.fullmatch(line) for line in progress), progress
    summary = SUMMARY.fullmatch(last)
    assert summary and summary.group(1) == "done", last
    started, succeeded, failed, canceled = map(int, summary.group(2, 3, 4, 5))
    assert started == succeeded + failed + canceled == 6
    assert "Traceback" not in err and "Task exception" not in err, err


def test_headless_demo_that_runs_out_of_time_says_what_is_unfinished_and_exits_1(tmp_path):
    # Without --jobs it keeps starting jobs; each takes seconds, so after 1 s none has ended.
    result = relay_demo("--exit-after", "1", "--port", str(free_port()), "--dir", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    summary = SUMMARY.fullmatch(result.stdout.splitlines()[-1])
    assert summary and summary.group(1) == "stopped after 1 s", result.stdout
    assert summary.group(6), "the summary names the jobs that are not terminal"


# -- stopping --------------------------------------------------------------------------------

def interrupt(process: subprocess.Popen[str]) -> tuple[float, str, str]:
    """Send SIGINT; how long the demo took to exit, and what it printed."""
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the demo ignored Ctrl-C for 15 s: {out}{err}") from None
    return time.monotonic() - sent, out, err


def start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--port", str(port), "--dir", str(tmp_path),
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, f"http://127.0.0.1:{port}"


def assert_clean_stop(process: subprocess.Popen[str], took: float, err: str) -> None:
    assert process.returncode in (130, 0), err
    assert took < 5, f"the demo took {took:.1f} s to stop"
    assert "Traceback" not in err and "Task exception" not in err, err


@pytest.mark.timeout(180)
def test_ctrl_c_in_the_first_moments_stops_the_demo_promptly_and_cleanly(tmp_path):
    for attempt in range(6):
        process, _ = start_demo(tmp_path / str(attempt))
        time.sleep(0.2)  # the moment under test: 0.2 s after the start, while it is starting
        wait_for_signals_taken_over(process)
        took, _, err = interrupt(process)
        assert_clean_stop(process, took, err)


def wait_for_signals_taken_over(process: subprocess.Popen[str], timeout: float = 10) -> None:
    """Wait, if need be, until relay has taken SIGTERM over (as it does SIGINT, first thing).

    A signal that comes before Python has run any of relay's code is Python's to handle, so
    on a machine loaded enough to start Python slower than 0.2 s, the signal waits for that;
    otherwise this returns at once. Read from Linux's /proc; elsewhere it does not wait."""
    status = Path(f"/proc/{process.pid}/status")
    deadline = time.monotonic() + timeout
    while status.exists() and time.monotonic() < deadline:
        caught = next((line.split()[1] for line in status.read_text().splitlines()
                       if line.startswith("SigCgt:")), "0")
        if int(caught, 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.01)


def test_ctrl_c_while_the_demo_runs_stops_it_promptly_and_cleanly(tmp_path):
    for attempt, args in enumerate([(), (), ("--jobs", "50"), ("--jobs", "50")]):
        process, url = start_demo(tmp_path / str(attempt), *args)
        wait_ready(process, url)
        deadline = time.monotonic() + 20
        while not httpx.get(f"{url}/v1/jobs", params={"state": "running"}).json()["jobs"]:
            assert time.monotonic() < deadline, "no job started running"
            time.sleep(0.1)
        took, out, err = interrupt(process)
        assert_clean_stop(process, took, err)
        if args:  # headless: it still says where it was
            summary = SUMMARY.fullmatch(out.splitlines()[-1])
            assert summary and summary.group(1) == "interrupted", out


@pytest.fixture
def demo(tmp_path) -> Iterator[Demo]:
    running = Demo(tmp_path, free_port())
    running.start()
    yield running
    running.stop()


BARS = """() => [...document.querySelectorAll('#jobs tr')].map(tr => [
    tr.dataset.id, tr.dataset.state, parseFloat(tr.querySelector('.bar span').style.width || 0)])"""


GENERATION_BARS = """() => [...document.querySelectorAll('#jobs tr[data-provider="lipsync"]')]
    .map(tr => [tr.dataset.state, parseFloat(tr.querySelector('.bar span').style.width || 0)])"""


def test_a_generation_job_shows_progress_part_way_on_the_dashboard(demo, page):
    # The provider's webhooks report only the end: the bar moves because relay polls
    # include=progress while the job runs.
    page.goto(demo.url + "/")
    wait_until(page, lambda: page.inner_text("#connection") == "live")
    part_way = wait_until(page, lambda: [width for state, width in page.evaluate(GENERATION_BARS)
                                         if state == "running" and 0 < width < 100],
                          timeout=30)
    assert all(0 < width < 100 for width in part_way)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-generation-progress.png"))


def test_dashboard_shows_progress_live_and_catches_up_after_a_restart(demo, page):
    page.goto(demo.url + "/")
    wait_until(page, lambda: page.inner_text("#connection") == "live")

    first_seen: dict[str, float] = {}

    def a_bar_advanced() -> bool:
        for job_id, state, width in page.evaluate(BARS):
            if state == "running" and job_id in first_seen and width > first_seen[job_id]:
                return True
            first_seen.setdefault(job_id, width) if state == "running" else None
        return False

    wait_until(page, a_bar_advanced)
    page.wait_for_selector('#jobs tr[data-state="succeeded"]', timeout=20_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

    before = {job_id for job_id, _, _ in page.evaluate(BARS)}
    demo.kill()
    wait_until(page, lambda: page.inner_text("#connection") != "live")
    demo.start()  # same port, same SQLite directory: tokens and cursors still hold
    wait_until(page, lambda: page.inner_text("#connection") == "live", timeout=30)
    # Jobs started after the restart arrive, and so do the final states of the jobs the old
    # providers took with them (they fail with the new providers' not_found once polled).
    wait_until(page, lambda: {j for j, _, _ in page.evaluate(BARS)} - before, timeout=30)
    page.screenshot(path=str(ARTIFACTS / "dashboard-after-restart.png"))
