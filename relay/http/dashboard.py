"""The dashboard at `/`: a static page, handed a subscribe token for every provider's topic.

With open access (loopback, no API keys) the page is minted its own token. With API keys
configured it is not: an operator mints one (`POST /v1/tokens`) and opens `/?token=…`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from relay.http.auth import Access
from relay.tokens import Tokens

PAGE_TOKEN_TTL = 12 * 3600


class Dashboard:
    def __init__(self, providers: Sequence[str], access: Access, tokens: Tokens) -> None:
        self.providers = list(providers)
        self.access = access
        self.tokens = tokens
        self.page = resources.files("relay").joinpath("static/dashboard.html").read_text()

    def routes(self) -> list[BaseRoute]:
        return [Route("/", self.show),
                Mount("/static", StaticFiles(packages=[("relay", "static")]), name="static")]

    async def show(self, request: Request) -> Response:
        topics = [f"provider:{name}" for name in self.providers]
        config: dict[str, Any] = {"topics": topics, "providers": self.providers,
                                  "token": request.query_params.get("token")}
        if not config["token"] and self.access.open:
            config["token"], _ = self.tokens.subscribe_token(topics=topics, ttl=PAGE_TOKEN_TTL)
        # "</" is escaped so nothing in the JSON can close the <script> it sits in.
        embedded = json.dumps(config).replace("</", "<\\/")
        return HTMLResponse(self.page.replace("__RELAY_CONFIG__", embedded),
                            headers={"Cache-Control": "no-store"})
