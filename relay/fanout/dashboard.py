"""The dashboard at `/`: a static page, handed a subscribe token for every provider's topic.

With open access (loopback, no API keys) the page is minted its own token. With API keys
configured it is not: an operator mints one (`POST /v1/tokens`) and opens `/?token=…`.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from relay.auth import Tokens
from relay.settings import Settings

PAGE_TOKEN_TTL = 12 * 3600


class Dashboard:
    def __init__(self, settings: Settings, tokens: Tokens) -> None:
        self.settings = settings
        self.tokens = tokens
        self.page = resources.files("relay").joinpath("static/dashboard.html").read_text()

    async def show(self, request: Request) -> Response:
        topics = [f"provider:{name}" for name in self.settings.providers]
        config: dict[str, Any] = {"topics": topics, "providers": list(self.settings.providers),
                                  "token": request.query_params.get("token")}
        if not config["token"] and not self.settings.server.api_keys:
            config["token"], _ = self.tokens.subscribe_token(topics=topics, ttl=PAGE_TOKEN_TTL)
        # "</" is escaped so nothing in the JSON can close the <script> it sits in.
        embedded = json.dumps(config).replace("</", "<\\/")
        return HTMLResponse(self.page.replace("__RELAY_CONFIG__", embedded),
                            headers={"Cache-Control": "no-store"})
