"""`POST /hooks/{provider}` and `POST /hooks/{provider}/{token}`: the webhookUrl target.

The order matters: find the provider, check the content type, read the body under its cap,
prove the delivery (signature or token) over the raw bytes, then parse, normalise and store
(relay.ingest.webhooks). Only a committed update is answered 202; a repeat is a 200.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.config import ProviderConfig
from relay.errors import ApiError, PayloadError, StoreError, Unverified
from relay.http.requests import parse_json, read_body
from relay.ingest.webhooks import WebhookIngest

_JSON_TYPES = ("application/json", "text/json")


class Hooks:
    def __init__(self, ingest: WebhookIngest, max_body: int) -> None:
        self.ingest = ingest
        self.max_body = max_body

    def routes(self) -> list[Route]:
        return [Route("/hooks/{provider}", self.receive, methods=["POST"]),
                Route("/hooks/{provider}/{token}", self.receive, methods=["POST"])]

    async def receive(self, request: Request) -> Response:
        provider = self.ingest.provider(request.path_params["provider"])
        try:
            return await self._receive(request, provider)
        except (ApiError, PayloadError) as exc:
            self.ingest.count(provider, "invalid_payload" if isinstance(exc, PayloadError)
                              else exc.code)
            raise
        except Unverified as exc:
            self.ingest.count(provider, exc.reason)
            raise
        except StoreError:
            self.ingest.count(provider, "store_unavailable")
            raise

    async def _receive(self, request: Request, provider: ProviderConfig) -> Response:
        _check_content_type(request.headers.get("content-type", ""))
        body = await read_body(request, self.max_body)
        self.ingest.authenticate(provider, request.path_params.get("token"), request.headers,
                                 body)
        applied = await self.ingest.accept(provider, parse_json(body), request.headers)
        job_id = applied.job.id if applied.job is not None else None
        if applied.event is None:
            return JSONResponse({"accepted": True, "duplicate": True, "job_id": job_id})
        return JSONResponse({"accepted": True, "job_id": job_id,
                             "cursor": applied.event.cursor}, status_code=202)


def _check_content_type(header: str) -> None:
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type and media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        raise ApiError(f"expected application/json, got {media_type[:64]!r}", status=415,
                       code="unsupported_media_type")
