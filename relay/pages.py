"""What relay serves to browsers from its own package, beside the dashboard: the client
module at `GET /client.js` (CONTRACT section 9), a file in `relay/static/`, read once."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

# A module script from another origin is fetched with CORS: without this header an app on
# its own origin could not import the client. The file is public and carries no credentials.
_CLIENT_HEADERS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"}


class Pages:
    def __init__(self) -> None:
        static = resources.files("relay").joinpath("static")
        self.client = static.joinpath("client.js").read_bytes()

    async def client_js(self, request: Request) -> Response:
        return Response(self.client, media_type="text/javascript; charset=utf-8",
                        headers=_CLIENT_HEADERS)
