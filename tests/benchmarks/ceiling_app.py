"""The ceiling for one Python process: a Starlette route that reads and parses a JSON webhook
and answers 202, storing nothing, served by uvicorn (uvloop, httptools, no access log) the way
the relay is. bench_ingest.py --compare runs it beside the relay with the same client."""

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hook(request: Request) -> JSONResponse:
    payload = json.loads(await request.body())
    return JSONResponse({"accepted": True, "job_id": payload.get("id")}, status_code=202)


app = Starlette(routes=[Route("/hooks/{provider}", hook, methods=["POST"])])
