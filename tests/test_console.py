"""The console at `/` in headless Chromium, as an operator uses it: against `relay demo`
(generation bars moving, a job's history) and against a relay with simulated providers and a
consumer that fails on command (cancel, a 429 pause, a subscription failing and recovering,
API keys). The session exchange behind the key prompt is also tested over plain HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.app import create_app
from relay.runtime.server import serving
from relay.settings import parse_settings
from relay.sim import Fault, JobStatusProvider, StoryProvider, jobstatus_timeline, story_timeline
from relay.tokens import Tokens, key_fingerprint
from tests.browser import ARTIFACTS, page, wait_until
from tests.consumers import Consumer, serving_consumer
from tests.support import Demo, free_port

__all__ = ["page"]  # the fixture, used by name

pytestmark = pytest.mark.slow

KEY = "console-test-key"
SECRET = "console-test-secret-" + "x" * 24


def expect(locator: Any) -> Any:
    return pytest.importorskip("playwright.sync_api").expect(locator)


# -- against relay demo ----------------------------------------------------------------------

@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path, free_port())
    running.start()
    yield running
    running.stop()


PART_WAY = """() => [...document.querySelectorAll('#jobs tr[data-provider="lipsync"]')]
    .filter(tr => tr.dataset.state === 'running')
    .map(tr => [tr.dataset.id, parseFloat(tr.querySelector('.bar span').style.width)])
    .filter(([, width]) => width > 0 && width < 100)"""


def test_on_the_demo_a_generation_bar_moves_part_way_and_a_drawer_shows_its_history(demo, page):
    page.goto(demo.url + "/")
    expect(page.locator("#connection")).to_have_text("live", timeout=20_000)
    [[job_id, _], *_] = wait_until(page, lambda: page.evaluate(PART_WAY), timeout=40,
                                   what="a generation bar part-way")
    page.locator(f'#jobs tr[data-id="{job_id}"]').click()
    drawer = page.locator("#drawer")
    expect(drawer).to_be_visible()
    expect(drawer.locator("#drawer-title")).to_contain_text("lipsync")
    entries = drawer.locator("#timeline li")
    expect(entries.first).to_contain_text("api")  # tracked by the demo through the API
    wait_until(page, lambda: entries.count() >= 2, what="a second history entry")
    expect(drawer.locator("#timeline")).to_contain_text("%")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-1280.png"))

    page.locator("#drawer-close").click()
    page.set_viewport_size({"width": 400, "height": 900})
    expect(page.locator("#jobs tr").first).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 400, f"the page is {overflow} px wide at 400 px"
    assert page.locator(".col-time").first.is_hidden()  # the columns that do not fit go
    page.screenshot(path=str(ARTIFACTS / "console-400.png"), full_page=True)


def test_the_favicon_is_served(demo):
    answer = httpx.get(f"{demo.url}/favicon.ico", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("image/svg+xml")
    assert answer.content.startswith(b"<svg")


# -- against a relay with simulated providers and a steerable consumer ------------------------

@dataclass
class Stack:
    """A relay (SQLite) over a simulated story and jobstatus provider, an unpolled `idle`
    provider, one (`locked`) whose key the jobstatus provider refuses, and a consumer that
    fails on command, served on an event loop of their own thread, so the browser and this
    test can drive them at once."""

    url: str = ""
    consumer_url: str = ""
    story: StoryProvider = field(default_factory=lambda: StoryProvider(api_key="k-story"))
    writer: JobStatusProvider = field(default_factory=lambda: JobStatusProvider(api_key="k-js"))
    consumer: Consumer = field(default_factory=lambda: Consumer(status=500))
    headers: dict[str, str] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None

    def on_loop(self, work: Any) -> Any:
        """Run `work()` on the stack's loop (the simulators are not thread-safe)."""
        assert self.loop is not None
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(work())
            except Exception as exc:  # handed to the waiting test
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def track(self, provider: str, external_id: str) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/v1/jobs", headers=self.headers, timeout=10,
                            json={"provider": provider, "external_id": external_id})
        assert answer.status_code == 201, answer.text
        return answer.json()["job"]  # type: ignore[no-any-return]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=10,
                             **kwargs)


def stack_settings(tmp_path: Path, stack: Stack, story_url: str, writer_url: str,
                   api_keys: tuple[str, ...]) -> Any:
    fast = {"poll_interval": 0.3, "poll_max_interval": 1.0}
    return parse_settings({
        "server": {"store": f"sqlite:///{tmp_path / 'relay.db'}", "api_keys": list(api_keys),
                   "secret": SECRET, "allow_private_targets": True},
        "providers": {
            "stories": {"schema": "story", "base_url": story_url, "api_key": "k-story", **fast},
            "writer": {"schema": "jobstatus", "base_url": writer_url, "api_key": "k-js",
                       **fast},
            "idle": {"schema": "generation"},
            "locked": {"schema": "jobstatus", "base_url": writer_url, "api_key": "revoked",
                       **fast},
        },
    })


@contextlib.contextmanager
def running_stack(tmp_path: Path, api_keys: tuple[str, ...] = ()) -> Iterator[Stack]:
    stack = Stack(headers={"authorization": f"Bearer {api_keys[0]}"} if api_keys else {})
    ready, failed = threading.Event(), []
    stopping: list[asyncio.Event] = []

    async def serve() -> None:
        stop = asyncio.Event()
        stopping.append(stop)
        stack.loop = asyncio.get_running_loop()
        async with serving_all(tmp_path, stack, api_keys):
            ready.set()
            await stop.wait()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the test
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="console-stack")
    thread.start()
    try:
        assert ready.wait(30) and not failed, failed
        yield stack
    finally:
        if stopping and stack.loop is not None:
            stack.loop.call_soon_threadsafe(stopping[0].set)
        thread.join(30)


@contextlib.asynccontextmanager
async def serving_all(tmp_path: Path, stack: Stack, api_keys: tuple[str, ...]
                      ) -> AsyncIterator[None]:
    async with serving(stack.story.app) as story_url, \
            serving(stack.writer.app) as writer_url, \
            serving_consumer(stack.consumer) as consumer_url:
        app = create_app(stack_settings(tmp_path, stack, story_url, writer_url, api_keys))
        async with serving(app) as url:
            stack.url, stack.consumer_url = url, consumer_url
            yield


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def open_console(page: Any, url: str) -> None:
    page.goto(url + "/")
    expect(page.locator("#connection")).to_have_text("live", timeout=20_000)


def test_cancel_in_the_drawer_cancels_an_unfinished_jobstatus_job(stack, page):
    external = stack.on_loop(lambda: stack.writer.create_job(jobstatus_timeline(step=60)))
    job = stack.track("writer", external)
    open_console(page, stack.url)
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    expect(row.locator(".pct")).to_have_text("0%", timeout=20_000)  # polled: it reports 0 %
    row.click()
    page.locator("#cancel").click()
    drawer = page.locator("#drawer")
    expect(drawer.locator(".facts .state")).to_have_text("canceled", timeout=20_000)
    expect(drawer.locator("#timeline li").last).to_contain_text("canceled")
    expect(row).to_have_attribute("data-state", "canceled")
    expect(page.locator("#cancel")).to_have_count(0)  # nothing left to cancel
    assert stack.on_loop(lambda: stack.writer.snapshot(external))["status"] == "cancelled"


def test_unknown_progress_is_drawn_as_unknown_and_a_failure_without_progress_as_no_bar(
        stack, page):
    waiting = stack.track("idle", "never-polled")  # no base_url, no webhook yet: no progress
    failing = stack.api("POST", "/v1/jobs", json={"provider": "idle", "external_id": "broke"})
    open_console(page, stack.url)
    unknown = page.locator(f'#jobs tr[data-id="{waiting["id"]}"]')
    expect(unknown.locator(".bar")).to_have_class("bar indeterminate", timeout=20_000)
    expect(unknown.locator(".pct")).to_have_text("…")

    path = httpx.URL(failing.json()["webhook_url"]).path  # its host is the public_url's
    hook = httpx.post(stack.url + path, timeout=10, json={
        "id": "broke", "status": "FAILED", "errorCode": "input_unreadable",
        "error": "The input could not be read."})
    assert hook.status_code == 202, hook.text
    failed = page.locator(f'#jobs tr[data-id="{failing.json()["job"]["id"]}"]')
    expect(failed).to_have_attribute("data-state", "failed", timeout=20_000)
    expect(failed.locator(".bar")).to_have_class("bar none")
    assert failed.locator(".bar span").evaluate("span => span.style.width") == "0%"
    failed.click()
    expect(page.locator("#drawer .error-block")).to_contain_text("input_unreadable")
    expect(page.locator("#drawer .error-block")).to_contain_text("could not be read")
    expect(page.locator("#drawer #timeline li").last).to_contain_text("webhook")
    expect(page.locator("#cancel")).to_have_count(0)  # generation jobs cannot be canceled


def test_provider_cards_show_a_429_pause_a_refused_key_and_an_unpolled_provider(stack, page):
    open_console(page, stack.url)
    expect(page.locator('.card[data-provider="idle"] .health')).to_have_text(
        "not polled (no base_url)")
    expect(page.locator('.card[data-provider="stories"] .health')).to_have_text("ok")
    stack.story.faults.push(Fault(status=429, retry_after=60))
    stack.track("stories", stack.on_loop(lambda: stack.story.create_job(story_timeline())))
    card = page.locator('.card[data-provider="stories"]')
    expect(card.locator(".health")).to_contain_text("rate-limited until", timeout=20_000)
    expect(card).to_have_class("card throttled")
    expect(card.locator(".by-state")).to_contain_text("queued 1")
    expect(card.locator(".rates")).to_contain_text("polls")

    stack.track("locked", "any-job")
    refused = page.locator('.card[data-provider="locked"]')
    expect(refused.locator(".health")).to_contain_text("unauthorized (HTTP 401) since",
                                                       timeout=20_000)
    expect(refused).to_have_class("card unauthorized")


def test_a_failing_subscription_shows_as_failing_and_recovers_after_replay(stack, page):
    created = stack.api("POST", "/v1/subscriptions", json={"url": stack.consumer_url})
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    for _ in range(6):  # five failures in a row make a subscription failing
        stack.track("writer", stack.on_loop(
            lambda: stack.writer.create_job(jobstatus_timeline(step=60))))
    open_console(page, stack.url)
    card = page.locator(f'.subscription[data-id="{sub_id}"]')
    expect(card.locator("header .sub-status")).to_have_text("failing", timeout=30_000)
    expect(card.locator(".last-error")).to_contain_text("answered 500")
    card.get_by_role("button", name="deliveries").click()
    expect(card.locator(".deliveries")).to_contain_text("answered 500")

    stack.consumer.status = 200
    card.get_by_role("button", name="replay last hour").click()
    expect(card.locator(".note")).to_contain_text("replayed", timeout=10_000)
    expect(card.locator("header .sub-status")).to_have_text("active", timeout=30_000)
    expect(card.locator(".failures")).to_have_text("0")
    expect(card.locator(".deliveries")).to_contain_text("delivered")


# -- API keys --------------------------------------------------------------------------------

def test_with_api_keys_the_console_asks_for_a_key_once_and_never_puts_it_in_a_url(
        tmp_path, page):
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    with running_stack(tmp_path, api_keys=(KEY,)) as keyed:
        page.goto(keyed.url + "/")
        dialog = page.locator("#sign-in")
        expect(dialog).to_be_visible()
        page.fill("#api-key", "not-the-key")
        page.click("#sign-in button[type=submit]")
        expect(page.locator("#sign-in-error")).to_contain_text("not one of")
        page.fill("#api-key", KEY)
        page.click("#sign-in button[type=submit]")
        expect(dialog).to_be_hidden()
        expect(page.locator("#connection")).to_have_text("live", timeout=20_000)
        expect(page.locator('.card[data-provider="idle"]')).to_be_visible()

        job = keyed.track("writer", keyed.on_loop(
            lambda: keyed.writer.create_job(jobstatus_timeline(step=60))))
        expect(page.locator(f'#jobs tr[data-id="{job["id"]}"]')).to_be_visible(timeout=20_000)
        page.reload()  # the same tab: its session holds, no second prompt
        expect(page.locator("#connection")).to_have_text("live", timeout=20_000)
        expect(dialog).to_be_hidden()
        expect(page.locator(f'#jobs tr[data-id="{job["id"]}"]')).to_be_visible()
        stored = page.evaluate("JSON.stringify(sessionStorage)")

    assert KEY not in stored, "the key itself is kept"
    session = page.evaluate("JSON.parse(sessionStorage.getItem('relay.session')).token")
    assert not [url for url in urls if KEY in url or session in url]


def test_a_session_token_stands_in_for_its_key_and_renews_itself(tmp_path):
    with running_stack(tmp_path, api_keys=(KEY,)) as keyed:
        refused = httpx.post(f"{keyed.url}/v1/sessions", timeout=10,
                             headers={"authorization": "Bearer nope"})
        session = keyed.api("POST", "/v1/sessions")
        token = session.json()["token"]
        as_session = {"authorization": f"Bearer {token}"}
        listed = httpx.get(f"{keyed.url}/v1/providers", headers=as_session, timeout=10)
        renewed = httpx.post(f"{keyed.url}/v1/sessions", headers=as_session, timeout=10)
        expired, _ = Tokens(SECRET).session_token(key_fingerprint(KEY), 1, now=0)
        stale = httpx.get(f"{keyed.url}/v1/jobs", timeout=10,
                          headers={"authorization": f"Bearer {expired}"})
        foreign, _ = Tokens(SECRET).session_token(key_fingerprint("a removed key"), 60)
        removed = httpx.get(f"{keyed.url}/v1/jobs", timeout=10,
                            headers={"authorization": f"Bearer {foreign}"})

    assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
    assert session.status_code == 201 and session.json()["expires_at"] > 0
    assert listed.status_code == 200
    assert [p["name"] for p in listed.json()["providers"]] == [
        "stories", "writer", "idle", "locked"]
    assert renewed.status_code == 201 and renewed.json()["token"]
    assert stale.status_code == 401 and removed.status_code == 401


def test_an_open_relay_needs_no_session(stack):
    answer = stack.api("POST", "/v1/sessions")
    assert (answer.status_code, answer.json()["error"]) == (409, "no_api_keys")
