"""GET /docs in headless Chromium: every operation of /openapi.json rendered with its
parameters, request body fields and status codes, every schema too, from relay alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from relay.app import create_app
from relay.runtime.server import serving_in_thread
from tests.browser import page
from tests.support import make_settings

__all__ = ["page"]  # the fixture, used by name

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent.parent / "artifacts"
METHODS = ("get", "post", "put", "patch", "delete")

RENDERED = """() => Object.fromEntries([...document.querySelectorAll('[data-operation]')].map(
  (section) => [section.dataset.operation, {
    parameters: [...section.querySelectorAll('tr.parameter')].map((row) => row.dataset.name),
    body: [...section.querySelectorAll('.request-body tr[data-name]')].map((r) => r.dataset.name),
    statuses: [...section.querySelectorAll('tr.response')].map((row) => row.dataset.status),
    text: section.innerText,
  }]))"""


def expected_operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    schemas = document["components"]["schemas"]
    expected = {}
    for path, item in document["paths"].items():
        for method in (m for m in METHODS if m in item):
            operation = item[method]
            body = operation.get("requestBody", {}).get("content", {}).get(
                "application/json", {}).get("schema", {})
            if "$ref" in body:
                body = schemas[body["$ref"].split("/")[-1]]
            expected[f"{method.upper()} {path}"] = {
                "summary": operation["summary"],
                "parameters": [p["name"] for p in operation.get("parameters", [])],
                "body": list(body.get("properties", {})),
                "statuses": list(operation["responses"]),
            }
    return expected


def test_docs_renders_every_operation_of_the_openapi_document(page):
    with serving_in_thread(create_app(make_settings())) as url:
        document = httpx.get(f"{url}/openapi.json").json()
        hosts: set[str] = set()
        page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
        page.goto(f"{url}/docs")
        page.wait_for_selector("#reference[data-rendered]")
        rendered = page.evaluate(RENDERED)
        schemas = page.eval_on_selector_all("[data-schema]", "all => all.map(s => s.id)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs.png"))

    expected = expected_operations(document)
    assert set(rendered) == set(expected)
    for name, wanted in expected.items():
        shown = rendered[name]
        assert wanted["summary"].split("`")[0] in shown["text"], name
        assert shown["parameters"] == wanted["parameters"], name
        assert shown["body"] == wanted["body"], name
        assert shown["statuses"] == sorted(wanted["statuses"]), name  # in numeric order
    assert schemas == [f"schema-{name}" for name in document["components"]["schemas"]]
    assert hosts == {urlsplit(url).netloc}  # nothing from a third-party host
