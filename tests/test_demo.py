"""`relay demo` as a user runs it: headless to completion, and its dashboard in a real browser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "artifacts"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]


def test_headless_demo_exits_0_with_every_job_terminal(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "relay", "demo", "--jobs", "20", "--exit-after", "30",
         "--port", str(free_port()), "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 20 jobs are terminal" in result.stdout


class Demo:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.directory / "demo.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", "demo", "--port", str(self.port),
                 "--dir", str(self.directory)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError((self.directory / "demo.log").read_text()[-2000:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def demo(tmp_path) -> Iterator[Demo]:
    running = Demo(tmp_path, free_port())
    running.start()
    yield running
    running.stop()


@pytest.fixture
def page():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 720})
        browser.close()


BARS = """() => [...document.querySelectorAll('#jobs tr')].map(tr => [
    tr.dataset.id, tr.dataset.state, parseFloat(tr.querySelector('.bar span').style.width || 0)])"""


def wait_until(page, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(100)
    raise AssertionError("the dashboard did not get there in time")


GENERATION_BARS = """() => [...document.querySelectorAll('#jobs tr[data-provider="lipsync"]')]
    .map(tr => [tr.dataset.state, parseFloat(tr.querySelector('.bar span').style.width || 0)])"""


def test_a_generation_job_shows_progress_part_way_on_the_dashboard(demo, page):
    # The provider's webhooks report only the end: the bar moves because relay polls
    # include=progress while the job runs (CONTRACT section 4).
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
