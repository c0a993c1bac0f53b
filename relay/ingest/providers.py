"""HTTP clients for the providers' status APIs, one per schema, and `ProviderClients`, the
one place the poll scheduler and the cancel command get them from.

Each call answers normalised `Update`s (through `relay.normalise`, with the provider's error
catalog when there is one: relay.ingest.catalogs) or raises `ProviderError` with the HTTP
status (None when the provider could not be reached or timed out) and the `Retry-After` it
asked for. Two kinds of it say more:

    ProviderError
    ├── AnswerError        an error status; `code`, `detail`: what its error envelope said
    └── UnreadableAnswer   an answer relay cannot read: over MAX_ANSWER, not JSON, too deep

An answer is streamed and read up to `MAX_ANSWER` bytes, never whole: past the cap relay stops
reading and drops the connection. Answers are asked for uncompressed, so the bytes counted are
the bytes held (a compressed one could grow a thousandfold between two counts).
`httpx` exceptions never leave this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from relay.config import ProviderConfig, Providers
from relay.errors import PayloadError, ProviderError
from relay.ingest.catalogs import Catalogs
from relay.models import Schema, Update, now
from relay.normalise import Catalog, parse_catalog, read_update, story
from relay.normalise.catalog import explain
from relay.normalise.fields import Reader
from relay.signing import retry_after

LONG_POLL_MARGIN = 10.0
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_ANSWER = 8 * 1024 * 1024
"""Bytes of one provider answer relay reads at most."""
MAX_ERROR_ANSWER = 64 * 1024
"""Bytes of an error answer read for its envelope; the rest is not needed."""
ACCEPT = {"Accept": "application/json", "Accept-Encoding": "identity"}


class AnswerError(ProviderError):
    """The provider answered an error status. `code` and `detail` are the code and message of
    its error envelope (`{"error": "<code>", "message"}` in the seeds; also `{"error": {"code",
    "message"}}` and `{"code", "message"}`), None where it sent none readable."""

    def __init__(self, message: str, *, status: int, retry_after: float | None,
                 code: str | None, detail: str | None) -> None:
        super().__init__(message, status=status, retry_after=retry_after)
        self.code = code
        self.detail = detail


class UnreadableAnswer(ProviderError):
    """An answer relay cannot read: larger than MAX_ANSWER, not JSON, or nested deeper than a
    parser can follow. Passing trouble: the next answer may be fine."""


@dataclass(frozen=True, slots=True)
class Page:
    """One `GET /v1/jobs` page of a story provider. `entries` is how many it listed, readable
    or not (the next page starts that much further); `unreadable` are the entries that could
    not be read (with their job id when it could be): such a job must be read on its own."""

    updates: list[Update]
    total: int
    unreadable: tuple[story.Unreadable, ...] = ()
    entries: int = 0


class ProviderClient:
    """Calls one provider's API with its credentials; `status` reads one job."""

    def __init__(self, provider: ProviderConfig, http: httpx.AsyncClient,
                 catalogs: Catalogs | None = None) -> None:
        if provider.base_url is None:
            raise ValueError(f"provider {provider.name} has no base_url")
        self.provider = provider
        self.http = http
        self.catalogs = catalogs
        self.base_url = provider.base_url
        self.headers = {**ACCEPT, **provider.auth_headers()}

    async def status(self, external_id: str) -> Update:
        raise NotImplementedError

    async def call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, timeout: httpx.Timeout | None = None,
                   authenticated: bool = True) -> Any:
        """The JSON the provider answered; ProviderError for anything else."""
        where = f"{self.provider.name}: {method} {path}"
        try:
            async with self.http.stream(
                    method, self.base_url + path, params=params, json=body,
                    headers=self.headers if authenticated else ACCEPT,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT
            ) as response:
                if not response.is_success:
                    raise _answer_error(where, response,
                                        await _read(where, response, MAX_ERROR_ANSWER, cut=True))
                raw = await _read(where, response, MAX_ANSWER)
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{where} timed out") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"{where} failed: {exc!r}") from exc
        return _parse(where, raw, response.status_code)

    def read(self, payload: Any, external_id: str) -> Update:
        update = read_update(self.provider.schema, payload, now(), catalog=self.catalog())
        if update.external_id != external_id:
            raise PayloadError("id", f"asked for job {external_id[:64]!r}, got another")
        return update

    def catalog(self) -> Catalog | None:
        """This provider's error catalog, when one was read."""
        return self.catalogs.get(self.provider.name) if self.catalogs is not None else None

    def explain(self, error: dict[str, Any]) -> dict[str, Any]:
        """An error relay makes of an answer, explained from the catalog where it knows it."""
        catalog = self.catalog()
        return explain(error, catalog) if catalog else error


class StoryClient(ProviderClient):
    async def status(self, external_id: str) -> Update:
        payload = await self.call("GET", f"/v1/generate/story/{segment(external_id)}")
        return self.read(payload, external_id)

    async def page(self, limit: int, offset: int) -> Page:
        """`GET /v1/jobs?limit&offset`: the provider's jobs, newest first."""
        payload = await self.call("GET", "/v1/jobs",
                                  params={"limit": str(limit), "offset": str(offset)})
        listed = story.read_list(payload, now())
        entries = len(listed.updates) + len(listed.unreadable)
        total = payload.get("total") if isinstance(payload, dict) else None
        if isinstance(total, bool) or not isinstance(total, int):
            total = offset + entries
        return Page(list(listed.updates), total, listed.unreadable, entries)


class GenerationClient(ProviderClient):
    async def status(self, external_id: str) -> Update:
        """A quick read with `include=progress` (which `wait` cannot be combined with)."""
        return (await self.inspect(external_id))[0]

    async def inspect(self, external_id: str) -> tuple[Update, str | None]:
        """A quick read, and the `webhookUrl` the job will call back (None: none)."""
        payload = await self.call("GET", f"/v2/generate/{segment(external_id)}",
                                  params={"include": "progress"})
        update = self.read(payload, external_id)
        return update, Reader(payload).token("webhookUrl", 8192)

    async def fetch_catalog(self) -> Catalog:
        """`GET /v2/errors` (unauthenticated), parsed: relay.ingest.catalogs reads it."""
        return parse_catalog(await self.call("GET", "/v2/errors", authenticated=False))

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

    def __init__(self, providers: Providers, given: httpx.AsyncClient | None = None,
                 catalogs: Catalogs | None = None) -> None:
        self.providers = providers
        self.catalogs = catalogs
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
        self._clients = {name: CLIENTS[provider.schema](provider, http, self.catalogs)
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

    def catalog_sources(self) -> list[GenerationClient]:
        """The clients that serve an error catalog: every generation provider's."""
        return [client for client in self if isinstance(client, GenerationClient)]


def segment(external_id: str) -> str:
    """The id as one path segment: `/` and `..` must not walk to another endpoint."""
    if set(external_id) <= {"."}:
        raise ProviderError(f"{external_id!r} cannot name a job in a URL path", status=404)
    return quote(external_id, safe="")


async def _read(where: str, response: httpx.Response, cap: int, *, cut: bool = False) -> bytes:
    """The body, streamed, up to `cap` bytes: with `cut` the rest is left unread, else an
    answer past the cap is UnreadableAnswer (and the connection is dropped, not drained)."""
    declared = response.headers.get("content-length", "")
    if not cut and declared.isdigit() and int(declared) > cap:
        raise _too_large(where, response, cap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            if not cut:
                raise _too_large(where, response, cap)
            break
    return b"".join(chunks)[:cap]


def _too_large(where: str, response: httpx.Response, cap: int) -> UnreadableAnswer:
    return UnreadableAnswer(f"{where} answered more than {cap} bytes; relay read no further",
                            status=response.status_code)


def _parse(where: str, raw: bytes, status: int) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise UnreadableAnswer(f"{where} answered no JSON relay can read",
                               status=status) from None


def _answer_error(where: str, response: httpx.Response, raw: bytes) -> AnswerError:
    code, detail = envelope(raw)
    words = detail or _plain(response, raw)
    said = f": {words[:200]}" if words else ""
    return AnswerError(f"{where} answered {response.status_code}{said}",
                       status=response.status_code,
                       retry_after=retry_after(response.headers.get("retry-after")),
                       code=code, detail=detail)


def _plain(response: httpx.Response, raw: bytes) -> str:
    """A plain-text error answer, as words for the log (a proxy's, say): no envelope."""
    if not response.headers.get("content-type", "").startswith("text/plain"):
        return ""
    return " ".join(raw[:400].decode("utf-8", "replace").split())


def envelope(raw: bytes) -> tuple[str | None, str | None]:
    """The code and message of a provider's error envelope, where it has readable ones."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    inner = body.get("error")
    if isinstance(inner, dict):
        reader = Reader(inner)
        return reader.token("code"), reader.text("message")
    reader = Reader(body)
    return reader.token("error") or reader.token("code"), (reader.text("message")
                                                           or reader.text("detail"))
