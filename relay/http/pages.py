"""What relay serves to browsers from its own package, beside the dashboard: the client
module at `GET /client.js` and the API reference at `GET /docs`.

Both are files in `relay/static/`, read once; the reference renders `/openapi.json` in the
browser, so it can never disagree with the document."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

# A module script from another origin is fetched with CORS: without this header an app on
# its own origin could not import the client. The file is public and carries no credentials.
_CLIENT_HEADERS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"}


class Pages:
    def __init__(self) -> None:
        static = resources.files("relay").joinpath("static")
        self.client = static.joinpath("client.js").read_bytes()
        self.reference = static.joinpath("docs.html").read_bytes()

    def routes(self) -> list[Route]:
        return [Route("/docs", self.docs), Route("/client.js", self.client_js)]

    async def client_js(self, request: Request) -> Response:
        return Response(self.client, media_type="text/javascript; charset=utf-8",
                        headers=_CLIENT_HEADERS)

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(self.reference, headers={"Cache-Control": "no-cache"})
