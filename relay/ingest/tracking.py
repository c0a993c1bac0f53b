"""`POST /v1/jobs`: start tracking a provider's job, and hand out where to follow it."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.auth import Access, Tokens
from relay.errors import ApiError
from relay.ingest.recorder import Recorder
from relay.settings import Settings
from relay.web import json_object, read_json

TOKEN_TTL = 86400
MAX_TOPICS = 50
MAX_METADATA = 16384
RESERVED = ("job:", "provider:")


class Tracking:
    def __init__(self, settings: Settings, recorder: Recorder, access: Access,
                 tokens: Tokens) -> None:
        self.settings = settings
        self.recorder = recorder
        self.access = access
        self.tokens = tokens

    async def track(self, request: Request) -> Response:
        self.access.require_key(request.headers.get("authorization"))
        body = json_object(await read_json(request))
        provider = self.settings.providers.get(_text(body, "provider"))
        if provider is None:
            raise ApiError(f"no provider named {str(body['provider'])[:64]!r} is configured",
                           status=404, code="unknown_provider")
        applied = await self.recorder.track(
            provider, _text(body, "external_id"), topics=_topics(body),
            metadata=_metadata(body))
        job = applied.job
        assert job is not None
        token, _ = self.tokens.subscribe_token([job.id], ttl=TOKEN_TTL)
        base = self.settings.server.public_url
        hook_token = self.tokens.webhook_token(provider.name)
        answer = {
            "job": job.to_dict(),
            "webhook_url": f"{base}/hooks/{provider.name}/{hook_token}",
            "subscribe_token": token,
            "events_url": f"{base}/v1/jobs/{job.id}/events?token={token}",
        }
        return JSONResponse(answer, status_code=201 if applied.event else 200)


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(f"{field}: {problem}", status=422, code="invalid_request",
                    details={"field": field})


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise _invalid(field, "required, a string of 1 to 256 characters")
    return value


def _topics(body: dict[str, Any]) -> list[str]:
    topics = body.get("topics", [])
    if not isinstance(topics, list) or len(topics) > MAX_TOPICS or not all(
            isinstance(t, str) and 0 < len(t) <= 256 for t in topics):
        raise _invalid("topics", f"expected at most {MAX_TOPICS} strings")
    if any(t.startswith(RESERVED) for t in topics):
        raise _invalid("topics", "job: and provider: topics are given by the relay")
    return topics


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict) or len(json.dumps(metadata)) > MAX_METADATA:
        raise _invalid("metadata", f"expected an object of at most {MAX_METADATA} bytes")
    if "provider" in metadata:
        raise _invalid("metadata", "the key 'provider' holds what the provider reports")
    return metadata
