"""The console at `/`: a static page that works through the public API like any client (jobs,
history, cancel, providers, subscriptions) and follows jobs live with `/client.js`.

The page is handed only the provider names and whether API keys are configured. With keys, it
asks for one once and exchanges it for a session token (`POST /v1/sessions`), sent in headers,
never in a URL; its SSE stream opens with a short subscribe token (`POST /v1/tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from relay.http.auth import Access


class Dashboard:
    def __init__(self, providers: Sequence[str], access: Access) -> None:
        static = resources.files("relay").joinpath("static")
        config = json.dumps({"providers": list(providers), "keys": not access.open})
        # "</" is escaped so nothing in the JSON can close the <script> it sits in.
        self.page = static.joinpath("dashboard.html").read_text().replace(
            "__RELAY_CONFIG__", config.replace("</", "<\\/"))
        self.icon = static.joinpath("favicon.svg").read_bytes()

    def routes(self) -> list[BaseRoute]:
        return [Route("/", self.show), Route("/favicon.ico", self.favicon),
                Mount("/static", StaticFiles(packages=[("relay", "static")]), name="static")]

    async def show(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers={"Cache-Control": "no-store"})

    async def favicon(self, request: Request) -> Response:
        return Response(self.icon, media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})
