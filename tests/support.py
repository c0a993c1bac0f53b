"""What the tests share: running the real relay, a real SSE client, signing, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.app import create_app
from relay.config import Settings
from relay.models import Job, Source, State
from relay.runtime.server import serving
from relay.settings import parse_settings
from relay.store import Applied, Change, Store
from tests.senders import WEBHOOK_SECRET, signed


def settings_with(store: str = "memory://", **providers: dict[str, Any]) -> Settings:
    """Settings with these providers (name: table) and no other."""
    return parse_settings({"server": {"store": store}, "providers": providers})


def make_settings(store: str = "memory://", **server: Any) -> Settings:
    """Settings with one provider of each schema: `gen` (generation, Sync-Signature secret),
    `stories` (story, no secret) and `jobs` (jobstatus, no secret)."""
    return parse_settings({
        "server": {"store": store, **server},
        "providers": {
            "gen": {"schema": "generation", "webhook_secret": WEBHOOK_SECRET},
            "stories": {"schema": "story"},
            "jobs": {"schema": "jobstatus"},
        },
    })


@dataclass
class Relay:
    url: str
    store: Store
    client: httpx.AsyncClient

    async def track(self, provider: str = "gen", external_id: str = "ext-1",
                    **extra: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/jobs", json={"provider": provider, "external_id": external_id, **extra})
        assert response.status_code in (200, 201), response.text
        return response.json()  # type: ignore[no-any-return]

    async def webhook(self, payload: Mapping[str, Any], provider: str = "gen",
                      secret: str = WEBHOOK_SECRET, timestamp: int | None = None,
                      headers: Mapping[str, str] | None = None) -> httpx.Response:
        body, signature = signed(payload, secret, timestamp)
        return await self.client.post(f"/hooks/{provider}", content=body,
                                      headers={**signature, **(headers or {})})


# -- jobs and changes for the store's own API ---------------------------------------------

NOW = "2026-01-01T00:00:00.000Z"
"""The receive time of every change these helpers make."""


def job(external_id: str, *, provider: str = "p", version: int = 1, state: State = State.QUEUED,
        topics: tuple[str, ...] = ()) -> Job:
    """A job as a store test makes it, its id made from its provider and external id."""
    job_id = f"id-{provider}-{external_id}"
    return Job(id=job_id, provider=provider, schema="generation", external_id=external_id,
               state=state, version=version,
               topics=(f"job:{job_id}", f"provider:{provider}", *topics))


def create(new: Job) -> Change:
    """The change that starts `new`, or makes nothing when its job exists."""
    return lambda current: new if current is None else None


def bump(state: State | None = None) -> Change:
    """The change that raises a job's version (and moves it to `state`)."""
    def change(current: Job | None) -> Job | None:
        assert current is not None
        return current.replace(version=current.version + 1, state=state or current.state)
    return change


async def put(store: Store, new: Job, **kwargs: Any) -> Applied:
    """`new` started in `store`, as received at NOW."""
    return await store.apply(new.provider, new.external_id, create(new), source=Source.API,
                             received_at=NOW, **kwargs)


@contextlib.asynccontextmanager
async def running_relay(settings: Settings | None = None, store: Store | None = None
                        ) -> AsyncIterator[Relay]:
    """The real app on a real uvicorn server on a free loopback port."""
    settings = settings or make_settings()
    app = create_app(settings, store=store)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield Relay(url, app.state.store, client)


@dataclass
class SSEEvent:
    id: str | None
    event: str | None
    data: Any


class SSEStream:
    """A real SSE client over an httpx streaming response. A background task parses the
    stream, so a `next()` that times out leaves the stream intact."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.retry: int | None = None
        self._events: asyncio.Queue[SSEEvent | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def next(self, timeout: float = 5.0) -> SSEEvent:
        event = await asyncio.wait_for(self._events.get(), timeout)
        if event is None:
            self._events.put_nowait(None)
            raise StopAsyncIteration
        return event

    async def take(self, count: int, timeout: float = 5.0) -> list[SSEEvent]:
        return [await self.next(timeout) for _ in range(count)]

    async def reset_then(self, reason: str, current: Mapping[str, Any]) -> None:
        """Assert what a resume relay cannot place exactly gets: `relay.reset` of `reason`
        (no id), then `current` (jobs by id) as `job.updated` events, in any order."""
        reset = await self.next()
        assert (reset.event, reset.id, reset.data) == ("relay.reset", None, {"reason": reason})
        snapshot = await self.take(len(current))
        assert {event.event for event in snapshot} == {"job.updated"}
        assert {event.data["id"]: event.data for event in snapshot} == current

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server ends the stream (with no further event)."""
        with contextlib.suppress(StopAsyncIteration):
            event = await self.next(timeout)
            raise AssertionError(f"expected the stream to close, got {event}")
        return True

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._reader

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if "data" in fields:
                        self._events.put_nowait(SSEEvent(
                            fields.get("id"), fields.get("event"), json.loads(fields["data"])))
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    self._field(fields, *line.partition(":")[::2])
        except httpx.HTTPError:
            pass
        finally:
            self._events.put_nowait(None)

    def _field(self, fields: dict[str, str], name: str, value: str) -> None:
        value = value.removeprefix(" ")
        if name == "retry":
            self.retry = int(value)
        else:
            fields[name] = fields[name] + "\n" + value if name in fields else value


async def current_jobs(client: httpx.AsyncClient, provider: str) -> dict[str, Any]:
    """The jobs of `provider` as `GET /v1/jobs` lists them, by id."""
    listed = (await client.get("/v1/jobs", params={"provider": provider})).json()["jobs"]
    return {job["id"]: job for job in listed}


@contextlib.asynccontextmanager
async def sse(client: httpx.AsyncClient, url: str, *, last_event_id: str | None = None,
              headers: Mapping[str, str] | None = None) -> AsyncIterator[SSEStream]:
    request_headers = {"accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        request_headers["last-event-id"] = last_event_id
    async with client.stream("GET", url, headers=request_headers,
                             timeout=httpx.Timeout(10, read=30)) as response:
        stream = SSEStream(response)
        try:
            yield stream
        finally:
            await stream.aclose()


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool],
                     timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until `check()` is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


REDIS = "redis://127.0.0.1:6379/0"
_PREFIXES: set[str] = set()  # every prefix redis_url() gave out in this test session


def redis_url(**options: str) -> str:
    """A Redis store URL with a prefix of its own, so tests never see each other's keys;
    skips the test, saying why, when no Redis answers at 127.0.0.1:6379. Its keys are
    deleted when the session ends (`wipe_test_prefixes`)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            answered = sock.recv(16).startswith(b"+PONG")
    except OSError:
        answered = False
    if not answered:
        pytest.skip("no Redis answers at 127.0.0.1:6379 (.ci/run starts redis-server)")
    prefix = f"test-{uuid.uuid4().hex}"
    _PREFIXES.add(prefix)
    query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
    return f"{REDIS}?{query}"


def wipe_redis(url: str) -> None:
    """Delete every key under the prefix of a `redis_url()`: the store as a flush leaves it."""
    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    _delete_keys(f"{prefix}:*", lambda _: True)


def wipe_test_prefixes() -> None:
    """Delete the keys of every prefix `redis_url()` gave out: the Redis a developer's or CI's
    tests run against is theirs, and holds nothing of the tests afterwards."""
    if _PREFIXES:
        _delete_keys("test-*", lambda key: key.split(b":", 1)[0].decode() in _PREFIXES)


def _delete_keys(pattern: str, chosen: Callable[[bytes], bool]) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        keys = [key for key in client.scan_iter(match=pattern, count=1000) if chosen(key)]
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start:start + 1000])
    except redis.ConnectionError:
        pass  # no Redis: the tests that wanted one were skipped
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gen_config(tmp_path: Path, store: str) -> Path:
    """A relay.toml for `relay serve`: `store`, and provider `gen` (generation, Sync-Signature
    with WEBHOOK_SECRET)."""
    path = tmp_path / "relay.toml"
    path.write_text(f"""
[server]
store = "{store}"
[providers.gen]
schema = "generation"
webhook_secret = "{WEBHOOK_SECRET}"
""")
    return path


class RelayProcess:
    """`python -m relay serve` as a real subprocess, for restarts and SIGKILL."""

    def __init__(self, config: Path, port: int, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(f".{port}.log")

    def start(self, timeout: float = 15.0) -> RelayProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config),
                 "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"relay did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


class Demo:
    """`relay demo` as a real subprocess, its store in `directory`, restartable on `port`."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.directory / "demo.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", "demo", "--port", str(self.port),
                 "--dir", str(self.directory)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError((self.directory / "demo.log").read_text()[-2000:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


# -- what the server side shows ----------------------------------------------------------

def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


async def metrics(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def server_side_open(server_port: int, client_port: int) -> bool:
    """Whether the server still holds its end of the connection from `client_port`."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    with open("/proc/net/tcp") as table:
        return any(tuple(row.split()[1:3]) == wanted for row in list(table)[1:])
