"""Starting to track a provider's job, and handing out where to follow it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.config import Providers
from relay.errors import Refusal, Refused
from relay.ingest.recorder import Recorder
from relay.limits import TRACKED_TOKEN_TTL
from relay.models import Job
from relay.tokens import Tokens


@dataclass(frozen=True, slots=True)
class Tracked:
    """A tracked job (`created` unless it was tracked already) and where to follow it."""

    job: Job
    created: bool
    webhook_url: str
    subscribe_token: str
    events_url: str


class Tracking:
    def __init__(self, providers: Providers, recorder: Recorder, tokens: Tokens,
                 public_url: str) -> None:
        self.providers = providers
        self.recorder = recorder
        self.tokens = tokens
        self.public_url = public_url

    async def track(self, provider_name: str, external_id: str, *, topics: Sequence[str] = (),
                    metadata: Mapping[str, Any] | None = None) -> Tracked:
        provider = self.providers.get(provider_name)
        if provider is None:
            raise Refused(Refusal.MISSING, "unknown_provider",
                          f"no provider named {provider_name[:64]!r} is configured")
        applied = await self.recorder.track(provider, external_id, topics=topics,
                                            metadata=metadata)
        job = applied.job
        assert job is not None
        token, _ = self.tokens.subscribe_token([job.id], ttl=TRACKED_TOKEN_TTL)
        base = self.public_url
        hook_token = self.tokens.webhook_token(provider.name, external_id)
        return Tracked(job, applied.event is not None,
                       webhook_url=f"{base}/hooks/{provider.name}/{hook_token}",
                       subscribe_token=token,
                       events_url=f"{base}/v1/jobs/{job.id}/events?token={token}")
