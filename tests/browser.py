"""Headless Chromium for the browser-facing tests (/client.js, /docs), driven by Playwright
the way tests/test_demo.py drives the dashboard."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.test_demo import BROWSER_ARGS, CHROMIUM


@pytest.fixture
def page() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        opened = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        opened.on("pageerror", lambda error: errors.append(str(error)))
        yield opened
        browser.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def wait_until(page: Any, predicate: Callable[[], Any], timeout: float = 20.0,
               what: str = "the page") -> Any:
    """The first truthy value of `predicate()`, polled every 50 ms; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(50)
    raise AssertionError(f"{what} did not get there within {timeout}s")
