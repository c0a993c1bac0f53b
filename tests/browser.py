"""Headless Chromium, driven by Playwright, for every test that loads a page (the demo's
dashboard, the console, /client.js, /docs): the page fails its test if it throws an error
no script caught."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
ARTIFACTS = Path(__file__).parent.parent / "artifacts"
"""Where screenshots go, for a person to look at (CI keeps the folder)."""


@contextlib.contextmanager
def opened_page() -> Iterator[Any]:
    """A new page in a new browser, closed after the block; skips the test without one."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        errors: list[str] = []
        try:
            opened = browser.new_page(viewport={"width": 1280, "height": 900})
            opened.on("pageerror", lambda error: errors.append(str(error)))
            yield opened
        finally:
            browser.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def page() -> Iterator[Any]:
    with opened_page() as opened:
        yield opened


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
