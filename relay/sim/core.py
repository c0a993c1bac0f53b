"""The core every simulated provider shares: job table, timelines, faults, counters, webhooks.

A schema subclass gives its routes, its auth check and how a job renders; the core runs the
timelines (lazily on every read, and from a background task while the app is served so that
webhooks go out even when nobody polls) and applies faults before any route answers.
Public methods are safe to call from a test thread while the app runs on another.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import copy
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.sim.faults import Fault, FaultQueue
from relay.sim.responses import SimError, error_response
from relay.sim.timeline import Lifecycle, SimJob, Step, check_timeline
from relay.sim.webhooks import WebhookSender

Handler = Callable[[Request], Awaitable[Response]]
Clock = Callable[[], float]

logger = logging.getLogger(__name__)

HANG_SECONDS = 3600.0
CHUNK = 64 * 1024


class Padding(Response):
    """A JSON object of `size` bytes, `{"pad": "xxx…"}`, sent in chunks without a
    Content-Length until the client hangs up; `sent(n)` is told of each chunk the server took
    (so a test can tell how much a client read before it stopped)."""

    media_type = "application/json"

    def __init__(self, size: int, sent: Callable[[int], None]) -> None:
        super().__init__()
        del self.headers["content-length"]
        self.size = size
        self.sent = sent

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gone = asyncio.Event()

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        listener = asyncio.create_task(listen())
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            for chunk in self._chunks():
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.sent(len(chunk))
            await send({"type": "http.response.body", "body": b""})
        finally:
            listener.cancel()

    def _chunks(self) -> Iterator[bytes]:
        head, tail = b'{"pad": "', b'"}'
        left = max(0, self.size - len(head) - len(tail))
        yield head
        while left > 0:
            yield b"x" * min(CHUNK, left)
            left -= min(CHUNK, left)
        yield tail


class SimulatedProvider(abc.ABC):
    """A provider's HTTP API served by `app`, with jobs that follow scripted timelines.

    `clock` drives the timelines (inject one to control time in tests); `tick` is how often
    the background task moves jobs that have a webhook URL; `seed` makes fractional webhook
    drops repeatable.
    """

    lifecycle: ClassVar[Lifecycle]

    def __init__(self, api_key: str, *, webhook_secret: str | None = None,
                 clock: Clock = time.monotonic, tick: float = 0.01, seed: int | None = None,
                 webhook_timeout: float = 5.0) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.faults = FaultQueue(seed)
        self.requests: Counter[str] = Counter()
        self.webhooks: Counter[str] = Counter()
        self.streamed = 0  # bytes of `oversize` answers sent so far
        self._clock = clock
        self._tick = tick
        self._lock = threading.RLock()
        self._jobs: dict[str, SimJob] = {}
        self._refusals: dict[str, SimError] = {}
        self._pushing: set[str] = set()
        self._origin = (time.time(), clock())
        self._sender = WebhookSender(webhook_secret, self.webhooks, self.faults, webhook_timeout)
        self._stopping: asyncio.Event | None = None
        self.app = Starlette(routes=self.routes(), lifespan=self._lifespan)

    # -- what a schema defines ---------------------------------------------------------------

    @abc.abstractmethod
    def routes(self) -> list[Route]:
        """The schema's endpoints, each built with `self.route(...)`."""

    @abc.abstractmethod
    def authorized(self, request: Request) -> bool:
        """Whether the request carries this provider's API key the schema's way."""

    @abc.abstractmethod
    def render(self, job: SimJob) -> dict[str, Any]:
        """The job's status object, as the schema's status endpoint answers it."""

    @abc.abstractmethod
    def default_timeline(self) -> list[Step]:
        """The timeline of a job created without one."""

    def initial_fields(self, job_id: str) -> dict[str, Any]:
        """Fields a new job starts with, before its first step and the caller's overrides."""
        return {}

    def webhook_payload(self, job: SimJob) -> dict[str, Any]:
        return self.render(job)

    # -- the public, thread-safe interface ---------------------------------------------------

    def create_job(self, timeline: Sequence[Step] | None = None, *,
                   webhook_url: str | None = None, job_id: str | None = None,
                   **fields: Any) -> str:
        """Start a job now; `fields` override the schema's initial fields. Returns its id."""
        steps = check_timeline(timeline if timeline is not None else self.default_timeline())
        job_id = job_id or str(uuid.uuid4())
        now = self._clock()
        with self._lock:
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} already exists")
            job = SimJob(job_id, len(self._jobs), now, steps,
                         {**self.initial_fields(job_id), **fields}, webhook_url)
            job.apply_next(now, self.lifecycle)
            self._jobs[job_id] = job
            if webhook_url is not None and not job.terminal:
                self._pushing.add(job_id)
            self._sync(job, now)
        return job_id

    def advance(self, job_id: str) -> str:
        """Jump the job to its next step now (later steps keep their spacing); its status."""
        now = self._clock()
        with self._lock:
            job = self._lookup(job_id)
            job.skip_ahead(now)
            self._sync(job, now)
            return job.status

    def refuse(self, job_id: str, status: int, *, code: str | None = None,
               message: str | None = None, envelope: bool = True) -> None:
        """From now on the job's status calls answer `status` (e.g. 451, 410) with `code` and
        `message` in the error envelope (plain text without `envelope`), and lists leave it
        out. Its timeline goes on (a webhook URL is still called)."""
        error = SimError(status, message or f"Job {job_id} is refused.", code=code,
                         envelope=envelope)
        with self._lock:
            self._lookup(job_id)
            self._refusals[job_id] = error

    def snapshot(self, job_id: str) -> dict[str, Any]:
        """The job's status object as the API answers it now (KeyError if unknown)."""
        with self._lock:
            return copy.deepcopy(self.render(self._lookup(job_id)))

    def is_terminal(self, job_id: str) -> bool:
        with self._lock:
            return self._lookup(job_id).terminal

    def job_ids(self) -> list[str]:
        """Every job id, oldest first."""
        with self._lock:
            return list(self._jobs)

    # -- for schema subclasses ---------------------------------------------------------------

    def route(self, path: str, name: str, handler: Handler, method: str = "GET", *,
              public: bool = False) -> Route:
        """A route counted in `requests[name]`, subject to faults, then (unless `public`) to
        the auth check."""

        async def endpoint(request: Request) -> Response:
            self.requests[name] += 1
            try:
                answer = await self._suffer(self.faults.take(name))
                if answer is not None:
                    return answer
                if not public and not self.authorized(request):
                    raise SimError(401, "Missing or invalid API key.")
                return await handler(request)
            except SimError as error:
                return error_response(error)

        return Route(path, endpoint, methods=[method], name=name)

    def require(self, job_id: str) -> SimJob:
        """The job, brought up to date (hold `self._lock`); 404 envelope if unknown."""
        job = self._jobs.get(job_id)
        if job is None:
            raise SimError(404, f"Job {job_id} not found.")
        self._sync(job, self._clock())
        refused = self._refusals.get(job_id)
        if refused is not None:
            raise refused
        return job

    def view(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self.render(self.require(job_id))

    def newest_first(self) -> list[SimJob]:
        """Every job not refused, brought up to date, newest first (hold `self._lock`)."""
        now = self._clock()
        jobs = sorted((job for job in self._jobs.values() if job.id not in self._refusals),
                      key=lambda job: job.seq, reverse=True)
        for job in jobs:
            self._sync(job, now)
        return jobs

    def change(self, job: SimJob, step: Step) -> None:
        """Apply an out-of-timeline step now, e.g. a cancel (hold `self._lock`)."""
        if job.apply(step, self._clock(), self.lifecycle):
            self._announce(job)

    def iso(self, at: float) -> str:
        """A clock reading as ISO 8601 UTC with `Z`."""
        wall = self._origin[0] + at - self._origin[1]
        stamp = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
        return stamp.replace("+00:00", "Z")

    async def hold_until_terminal(self, job_id: str, timeout: float) -> None:
        """Return once the job is terminal, `timeout` seconds have passed, or the server stops."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.is_terminal(job_id):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or await self._pause(min(self._tick, remaining)):
                return

    # -- internals ---------------------------------------------------------------------------

    def _lookup(self, job_id: str) -> SimJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        self._sync(job, self._clock())
        return job

    def _sync(self, job: SimJob, now: float) -> None:
        while job.due(now):
            if job.apply_next(now, self.lifecycle):
                self._announce(job)

    def _announce(self, job: SimJob) -> None:
        if job.webhook_url is not None:
            self._sender.enqueue(job.id, job.webhook_url, self.webhook_payload(job))
        if job.terminal:
            self._pushing.discard(job.id)

    async def _suffer(self, fault: Fault | None) -> Response | None:
        """Apply a fault: raise its error, or answer in the route's stead (None: go on)."""
        if fault is None:
            return None
        if fault.hang and await self._pause(HANG_SECONDS):
            raise SimError(503, "The server is shutting down.")
        if fault.delay and await self._pause(fault.delay):
            raise SimError(503, "The server is shutting down.")
        if fault.status is not None:
            raise SimError(fault.status, f"Simulated {fault.status} fault.",
                           retry_after=fault.retry_after)
        if fault.body is not None:
            return Response(fault.body, media_type="application/json")
        if fault.oversize:
            return Padding(fault.oversize, self._count_streamed)
        return None

    def _count_streamed(self, size: int) -> None:
        self.streamed += size

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the server began stopping meanwhile."""
        stopping = self._stopping
        if stopping is None:
            await asyncio.sleep(seconds)
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stopping.wait()
        return stopping.is_set()

    def _move_pushing_jobs(self) -> None:
        now = self._clock()
        with self._lock:
            for job_id in list(self._pushing):
                self._sync(self._jobs[job_id], now)

    async def _drive(self) -> None:
        while True:
            try:
                self._move_pushing_jobs()
                self._sender.pump()
            except Exception:
                logger.exception("simulated provider failed to move its jobs")
            await asyncio.sleep(self._tick)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # relay.runtime.server sets `app.state.stopping` when asked to exit, so held requests end.
        self._stopping = app.state.stopping = asyncio.Event()
        self._sender.start()
        driver = asyncio.create_task(self._drive())
        try:
            yield
        finally:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
            await self._sender.close()
            self._stopping = None
