"""docs/examples/use-relay-job.js, the README's React hook, run as written in headless
Chromium with real React (18, the last major version that ships browser builds, so no build
step is needed) installed from the npm registry, against a real relay."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.app import create_app
from relay.runtime.server import serving_in_thread
from tests.browser import page, wait_until
from tests.senders import post_update
from tests.support import make_settings

__all__ = ["page"]  # the fixture, used by name

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
HOOK = ROOT / "docs" / "examples" / "use-relay-job.js"
REACT = "18.3.1"
KEY = "hook-test-key"

# The hook imports "react" and the relay's client by its README URL: an import map points
# them at React's browser build and at this relay's /client.js.
PAGE = """<!doctype html>
<div id="root"></div>
<script src="/test/react.js"></script>
<script src="/test/react-dom.js"></script>
<script type="importmap">{"imports": {
  "react": "/test/react-module.js",
  "https://relay.example.com/client.js": "/client.js"}}</script>
<script type="module">
import { createElement } from "react";
import { useRelayJob } from "/test/use-relay-job.js";
window.tokenCalls = 0;
async function mint(jobId) {
  window.tokenCalls += 1;
  const answer = await fetch("/v1/tokens", {method: "POST", body: JSON.stringify({jobs: [jobId]}),
    headers: {"content-type": "application/json", authorization: "Bearer __KEY__"}});
  return (await answer.json()).token;
}
function Job({ url, jobId }) {
  const job = useRelayJob(url, () => mint(jobId));  // a new callback on every render
  return createElement("p", {id: "job", "data-state": job ? job.state : "none"},
                       job ? `${job.state} v${job.version}` : "waiting");
}
const root = ReactDOM.createRoot(document.getElementById("root"));
window.show = (jobId) => root.render(createElement(Job, {url: `/v1/jobs/${jobId}/events`, jobId}));
window.unmount = () => root.unmount();
window.ready = true;
</script>
"""
REACT_MODULE = ("export const { createElement, useEffect, useRef, useState } = window.React;\n"
                "export default window.React;\n")


@pytest.fixture(scope="session")
def react_builds(request) -> Path:
    """React's browser builds, installed once from the npm registry into pytest's cache."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the hook needs React from the npm registry")
    folder = request.config.cache.mkdir(f"react-{REACT}")
    if not (folder / "node_modules/react-dom/umd/react-dom.development.js").exists():
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--silent",
             "--prefix", str(folder), f"react@{REACT}", f"react-dom@{REACT}"],
            capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"npm could not install React {REACT}: {result.stderr[-500:]}")
    return folder / "node_modules"


def serve_test_files(page: Any, url: str, modules: Path) -> None:
    files = {
        "/test/hook.html": ("text/html", PAGE.replace("__KEY__", KEY)),
        "/test/react.js": ("text/javascript",
                           (modules / "react/umd/react.development.js").read_text()),
        "/test/react-dom.js": ("text/javascript",
                               (modules / "react-dom/umd/react-dom.development.js").read_text()),
        "/test/react-module.js": ("text/javascript", REACT_MODULE),
        "/test/use-relay-job.js": ("text/javascript", HOOK.read_text()),
    }
    for path, (kind, body) in files.items():
        page.route(url + path, answer(kind, body))


def answer(kind: str, body: str) -> Callable[[Any], None]:
    # One argument only: Playwright passes the request too to a handler that takes two.
    return lambda route: route.fulfill(status=200, content_type=kind, body=body)


def subscribers(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("relay_subscribers "):
            return float(line.split()[1])
    raise AssertionError("relay_subscribers is not in /metrics")


def test_the_readme_hook_renders_a_job_live_and_lets_go_when_unmounted(page, react_builds):
    app = create_app(make_settings(api_keys=[KEY]))
    with serving_in_thread(app) as url, httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {KEY}"}) as client:
        serve_test_files(page, url, react_builds)
        page.goto(f"{url}/test/hook.html")
        wait_until(page, lambda: page.evaluate("window.ready === true"), what="React")

        first = client.post("/v1/jobs", json={"provider": "gen", "external_id": "hook-1"})
        page.evaluate("id => window.show(id)", first.json()["job"]["id"])
        # Streams need a token here (the relay has API keys): it came from the callback.
        page.wait_for_selector('#job[data-state="queued"]')
        post_update(url, "hook-1", "PROCESSING", 50)
        page.wait_for_selector("#job:has-text('running v2')")
        post_update(url, "hook-1", "COMPLETED")
        page.wait_for_selector("#job:has-text('succeeded v3')")
        # Re-rendered with a new callback each time, it still opened one stream only.
        assert page.evaluate("window.tokenCalls") == 1
        wait_until(page, lambda: subscribers(url) == 0, what="the finished stream's end")

        second = client.post("/v1/jobs", json={"provider": "gen", "external_id": "hook-2"})
        page.evaluate("id => window.show(id)", second.json()["job"]["id"])
        page.wait_for_selector("#job:has-text('queued v1')")
        assert subscribers(url) == 1
        page.evaluate("window.unmount()")
        wait_until(page, lambda: subscribers(url) == 0, what="the stream closed on unmount")
