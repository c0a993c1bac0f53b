"""HTTP clients for the providers' status APIs, one per schema, and `ProviderClients`, the
one place the poll scheduler and the cancel command get them from.

Each call answers normalised `Update`s (through `relay.normalise`) or raises `ProviderError`
with the HTTP status (None when the provider could not be reached or timed out) and the
`Retry-After` it asked for. `httpx` exceptions never leave this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from relay.config import ProviderConfig, Providers
from relay.errors import PayloadError, ProviderError
from relay.models import Schema, Update, utcnow
from relay.normalise import read_update, story
from relay.signing import retry_after

LONG_POLL_MARGIN = 10.0
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@dataclass(frozen=True, slots=True)
class Page:
    """One `GET /v1/jobs` page of a story provider. `unreadable` are its entries that could
    not be read (with their job id when it could be): such a job must be read on its own."""

    updates: list[Update]
    total: int
    unreadable: tuple[story.Unreadable, ...] = ()


class ProviderClient:
    """Calls one provider's API with its credentials; `status` reads one job."""

    def __init__(self, provider: ProviderConfig, http: httpx.AsyncClient) -> None:
        if provider.base_url is None:
            raise ValueError(f"provider {provider.name} has no base_url")
        self.provider = provider
        self.http = http
        self.base_url = provider.base_url
        self.headers = provider.auth_headers()

    async def status(self, external_id: str) -> Update:
        raise NotImplementedError

    async def call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, timeout: httpx.Timeout | None = None) -> Any:
        """The JSON the provider answered; ProviderError for anything else."""
        try:
            response = await self.http.request(
                method, self.base_url + path, params=params, json=body, headers=self.headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{self.provider.name}: {method} {path} timed out") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"{self.provider.name}: {method} {path} failed: {exc!r}") from exc
        if not response.is_success:
            raise _answer_error(self.provider.name, method, path, response)
        try:
            return response.json()
        except ValueError:
            raise ProviderError(f"{self.provider.name}: {method} {path} answered invalid JSON",
                                status=response.status_code) from None

    def read(self, payload: Any, external_id: str) -> Update:
        update = read_update(self.provider.schema, payload, utcnow())
        if update.external_id != external_id:
            raise PayloadError("id", f"asked for job {external_id[:64]!r}, got another")
        return update


class StoryClient(ProviderClient):
    async def status(self, external_id: str) -> Update:
        payload = await self.call("GET", f"/v1/generate/story/{segment(external_id)}")
        return self.read(payload, external_id)

    async def page(self, limit: int, offset: int) -> Page:
        """`GET /v1/jobs?limit&offset`: the provider's jobs, newest first."""
        payload = await self.call("GET", "/v1/jobs",
                                  params={"limit": str(limit), "offset": str(offset)})
        listed = story.read_list(payload, utcnow())
        total = payload.get("total") if isinstance(payload, dict) else None
        if isinstance(total, bool) or not isinstance(total, int):
            total = offset + len(listed.updates) + len(listed.unreadable)
        return Page(list(listed.updates), total, listed.unreadable)


class GenerationClient(ProviderClient):
    async def status(self, external_id: str) -> Update:
        """A quick read with `include=progress` (which `wait` cannot be combined with)."""
        payload = await self.call("GET", f"/v2/generate/{segment(external_id)}",
                                  params={"include": "progress"})
        return self.read(payload, external_id)

    async def wait(self, external_id: str, seconds: float) -> Update:
        """A long-poll: answered when the job is terminal or after `seconds` (at most 55)."""
        base = self.http.timeout
        margin = base.read if base.read is not None else LONG_POLL_MARGIN
        timeout = httpx.Timeout(base.connect, read=seconds + margin, write=base.write,
                                pool=base.pool)
        payload = await self.call("GET", f"/v2/generate/{segment(external_id)}",
                                  params={"wait": "true", "timeout": f"{seconds:g}"},
                                  timeout=timeout)
        return self.read(payload, external_id)


class JobStatusClient(ProviderClient):
    async def status(self, external_id: str) -> Update:
        payload = await self.call("GET", "/getJobStatus", params={"jobId": external_id})
        return self.read(payload, external_id)

    async def cancel(self, external_id: str) -> None:
        await self.call("POST", "/cancelJob", body={"jobId": external_id})


CLIENTS: dict[Schema, type[ProviderClient]] = {
    Schema.STORY: StoryClient,
    Schema.GENERATION: GenerationClient,
    Schema.JOBSTATUS: JobStatusClient,
}


class ProviderClients:
    """The API client of every provider with a `base_url`, on one httpx client (`given`, or
    one of their own sized for every provider's concurrency) from `open` to `close`."""

    def __init__(self, providers: Providers, given: httpx.AsyncClient | None = None) -> None:
        self.providers = providers
        self._given = given
        self._own: httpx.AsyncClient | None = None
        self._clients: dict[str, ProviderClient] = {}

    def open(self) -> None:
        http = self._given
        if http is None:
            connections = sum(p.max_concurrency for p in self.providers.values()) + 10
            limits = httpx.Limits(max_connections=connections,
                                  max_keepalive_connections=connections)
            http = self._own = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=limits)
        self._clients = {name: CLIENTS[provider.schema](provider, http)
                         for name, provider in self.providers.items() if provider.base_url}

    async def close(self) -> None:
        self._clients = {}
        if self._own is not None:
            await self._own.aclose()
            self._own = None

    def get(self, provider: str) -> ProviderClient | None:
        """The client of `provider` (None without a base_url, or outside open..close)."""
        return self._clients.get(provider)

    def __iter__(self) -> Iterator[ProviderClient]:
        return iter(list(self._clients.values()))


def segment(external_id: str) -> str:
    """The id as one path segment: `/` and `..` must not walk to another endpoint."""
    if set(external_id) <= {"."}:
        raise ProviderError(f"{external_id!r} cannot name a job in a URL path", status=404)
    return quote(external_id, safe="")


def _answer_error(name: str, method: str, path: str, response: httpx.Response) -> ProviderError:
    return ProviderError(
        f"{name}: {method} {path} answered {response.status_code}{_said(response)}",
        status=response.status_code, retry_after=retry_after(response.headers.get("retry-after")))


def _said(response: httpx.Response) -> str:
    """The provider's own error message, when its envelope has one (best effort)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {message[:200]}" if isinstance(message, str) and message else ""
