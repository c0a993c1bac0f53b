"""`relay demo`: the relay on the embedded default, with simulated providers of all three
schemas and a generator that keeps starting jobs, so the dashboard has something to show.

The `generation` provider pushes signed webhooks; `story` and `jobstatus` are polled. Some jobs
fail, one jobstatus job is cancelled, and the story provider answers an occasional 429.

Headless (`jobs` or `exit_after`), it prints a progress line every few seconds and a summary
at the end, and its exit status is 0 only when every job it started is terminal.

Stopping: SIGINT and SIGTERM are noted from the moment the command starts (relay.cli), so no
Ctrl-C is lost while the demo is still starting. A signal during the start cancels it, and
what had started is stopped again; a signal once it runs ends the run, with its summary. The
status is then 128 + the signal's number (130 for Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import signal
import tempfile
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from relay.app import create_app
from relay.config import Settings
from relay.models import State
from relay.runtime.server import serving
from relay.runtime.tasks import cancel_all
from relay.settings import parse_settings
from relay.sim import (
    Fault,
    GenerationProvider,
    JobStatusProvider,
    SimulatedProvider,
    StoryProvider,
    generation_timeline,
    jobstatus_timeline,
    story_timeline,
)

logger = logging.getLogger(__name__)

WEBHOOK_SECRET = "demo-webhook-secret"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    jobs: int | None = None          # start this many jobs, then wait for them to end
    exit_after: float | None = None  # seconds the run lasts at most
    directory: Path | None = None    # where relay.db lives; a temporary one by default
    every: float = 2.0               # seconds between new jobs, when `jobs` is not given
    report_every: float = 3.0        # seconds between progress lines, when headless

    @property
    def headless(self) -> bool:
        return self.jobs is not None or self.exit_after is not None


@dataclass
class Providers:
    story: StoryProvider = field(default_factory=lambda: StoryProvider(api_key="demo-story"))
    generation: GenerationProvider = field(default_factory=lambda: GenerationProvider(
        api_key="demo-generation", webhook_secret=WEBHOOK_SECRET))
    jobstatus: JobStatusProvider = field(
        default_factory=lambda: JobStatusProvider(api_key="demo-jobstatus"))

    def by_schema(self) -> dict[str, SimulatedProvider]:
        return {"story": self.story, "generation": self.generation, "jobstatus": self.jobstatus}


def demo_settings(directory: Path, urls: dict[str, str], options: DemoOptions) -> Settings:
    fast = {"poll_interval": 0.5, "poll_max_interval": 2.0, "webhook_grace": 10.0}
    return parse_settings({
        "server": {"host": options.host, "port": options.port,
                   "store": f"sqlite:///{directory / 'relay.db'}"},
        "providers": {
            "stories": {"schema": "story", "base_url": urls["story"], "api_key": "demo-story",
                        **fast},
            "lipsync": {"schema": "generation", "base_url": urls["generation"],
                        "api_key": "demo-generation", "webhook_secret": WEBHOOK_SECRET, **fast},
            "writer": {"schema": "jobstatus", "base_url": urls["jobstatus"],
                       "api_key": "demo-jobstatus", **fast},
        },
    })


@dataclass(frozen=True)
class Tally:
    """How many jobs the demo started, and how many of them are in each state."""

    started: int
    states: Mapping[State, int]

    @property
    def all_terminal(self) -> bool:
        ended = sum(self.states.get(state, 0) for state in State if state.terminal)
        return ended == self.started

    def progress(self) -> str:
        """`12 jobs: 3 queued, 4 running, 4 succeeded, 1 failed` (states with no job left out)."""
        counts = [f"{self.states[state]} {state}" for state in State if self.states.get(state)]
        return f"{_jobs(self.started)}: {', '.join(counts) or 'none tracked yet'}"

    def summary(self) -> str:
        """`20 jobs: 15 succeeded, 4 failed, 1 canceled`, then what is not terminal, if any."""
        ended = [f"{self.states.get(state, 0)} {state}" for state in State if state.terminal]
        unfinished = [f"{self.states[state]} {state}" for state in State
                      if not state.terminal and self.states.get(state)]
        line = f"{_jobs(self.started)}: {', '.join(ended)}"
        return f"{line}; not terminal: {', '.join(unfinished)}" if unfinished else line


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


class JobStarter:
    """Starts jobs at the simulated providers and tracks them in the relay.

    Every job it tracks carries a topic of its own run (`demo-run:<random>`), so it counts
    its jobs by state with a few list calls, however many there are and whatever an earlier
    run left in the same store."""

    def __init__(self, relay: httpx.AsyncClient, providers: Providers, relay_url: str,
                 seed: int | None = None) -> None:
        self.relay = relay
        self.providers = providers
        self.relay_url = relay_url
        self.random = random.Random(seed)
        self.job_ids: list[str] = []
        self.run_topic = f"demo-run:{secrets.token_hex(4)}"
        self._kinds = itertools.cycle(["story", "generation", "jobstatus"])
        self._count = 0
        self._canceled_one = False
        self._later: set[asyncio.Task[None]] = set()

    async def start_one(self) -> str:
        self._count += 1
        kind = next(self._kinds)
        fail = self.random.random() < 0.2
        step = self.random.uniform(0.6, 1.6)
        if kind == "story":
            if self._count % 7 == 0:
                self.providers.story.faults.push(Fault(status=429, retry_after=1))
            external = self.providers.story.create_job(
                story_timeline(scenes=self.random.randint(3, 6), step=step, fail=fail))
            return await self._track("stories", external, "kind:story")
        if kind == "generation":
            external = self.providers.generation.create_job(
                generation_timeline(step=step, progress_steps=4, fail=fail),
                webhook_url=f"{self.relay_url}/hooks/lipsync")
            return await self._track("lipsync", external, "kind:generation")
        external = self.providers.jobstatus.create_job(jobstatus_timeline(step=step, fail=fail))
        job_id = await self._track("writer", external, "kind:jobstatus")
        if not self._canceled_one and not fail:
            self._canceled_one = True
            self._start_later(self._cancel_after(2 * step, job_id))
        return job_id

    async def tally(self) -> Tally:
        states = {}
        for state in State:
            response = await self.relay.get("/v1/jobs", params={
                "topic": self.run_topic, "state": state.value, "limit": 1})
            response.raise_for_status()
            states[state] = int(response.json()["total"])
        return Tally(len(self.job_ids), states)

    async def aclose(self) -> None:
        """Stop what it scheduled (the delayed cancel), before its HTTP client closes."""
        await cancel_all(self._later)

    async def _track(self, provider: str, external_id: str, kind: str) -> str:
        response = await self.relay.post("/v1/jobs", json={
            "provider": provider, "external_id": external_id,
            "topics": ["demo", kind, self.run_topic]})
        response.raise_for_status()
        job_id: str = response.json()["job"]["id"]
        self.job_ids.append(job_id)
        return job_id

    def _start_later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _cancel_after(self, delay: float, job_id: str) -> None:
        await asyncio.sleep(delay)
        try:
            response = await self.relay.post(f"/v1/jobs/{job_id}/cancel")
        except httpx.HTTPError as exc:
            logger.warning("demo could not cancel job %s: %r", job_id, exc)
            return
        logger.info("demo cancelled job %s: %s", job_id, response.status_code)


class Interrupt:
    """SIGINT and SIGTERM while the demo runs in the event loop.

    While the demo starts, the first signal cancels the start (the task that runs the demo),
    so the parts already started stop again at once; once it runs, the signal sets `stop`,
    and the run ends with its summary. Later signals are noted and otherwise ignored: the
    stop the first one began is under way."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stop = asyncio.Event()
        self._starting: asyncio.Task[Any] | None = asyncio.current_task()

    def install(self, early: Sequence[int]) -> None:
        """Take SIGINT and SIGTERM over; `early` are those that came before the loop ran."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.received, sig)
        if early:
            self.received(early[0])

    def received(self, sig: int) -> None:
        if self.signal is not None:
            return
        self.signal = sig
        self.stop.set()
        if self._starting is not None:
            self._starting.cancel()

    def started(self) -> None:
        """From now on a signal asks the run to stop instead of cancelling it."""
        self._starting = None

    @property
    def status(self) -> int:
        return 128 + (self.signal or 0)


@dataclass
class Running:
    """What a started demo is made of."""

    relay_url: str
    directory: Path
    starter: JobStarter


@contextlib.asynccontextmanager
async def _directory(given: Path | None) -> AsyncIterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as name:
        yield Path(name)


@contextlib.asynccontextmanager
async def _started(options: DemoOptions) -> AsyncIterator[Running]:
    """The providers, the relay and the job starter, started; stopped again on the way out,
    in reverse. The relay stops before the providers, so nothing polls a provider that is
    gone; the `generation` provider stops pushing webhooks first, so none meets a relay that
    is gone."""
    providers = Providers()
    async with _directory(options.directory) as directory, \
            contextlib.AsyncExitStack() as simulated:
        urls = {kind: await simulated.enter_async_context(serving(provider.app))
                for kind, provider in providers.by_schema().items()}
        app = create_app(demo_settings(directory, urls, options))
        async with (serving(app, options.host, options.port) as relay_url,
                    httpx.AsyncClient(base_url=relay_url, timeout=10) as client):
            starter = JobStarter(client, providers, relay_url)
            try:
                yield Running(relay_url, directory, starter)
            finally:
                await starter.aclose()
                providers.generation.faults.push(Fault(drop_webhooks=1.0))


async def run_demo(options: DemoOptions, early_signals: Sequence[int] = ()) -> int:
    """Run until Ctrl-C (or SIGTERM); headless with `jobs`/`exit_after`. The exit status is 0
    when headless and every job reached a terminal state, 1 when one did not, and 128 + the
    signal's number when a signal stopped it. `early_signals` are the signals that came before
    the event loop ran (relay.cli notes them)."""
    interrupt = Interrupt()
    interrupt.install(early_signals)
    try:
        async with _started(options) as running:
            interrupt.started()
            print(f"relay demo: dashboard at {running.relay_url}/  "
                  f"(store {running.directory / 'relay.db'})", flush=True)
            return await _drive(running.starter, options, interrupt)
    except asyncio.CancelledError:
        if interrupt.signal is None:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return interrupt.status


async def _drive(starter: JobStarter, options: DemoOptions, interrupt: Interrupt) -> int:
    if not options.headless:
        while not await _paused(interrupt.stop, options.every):
            await starter.start_one()
        return interrupt.status
    return await Headless(starter, options, interrupt).run()


class Headless:
    """A headless run: starts its jobs, reports progress, ends with a summary and a status."""

    def __init__(self, starter: JobStarter, options: DemoOptions, interrupt: Interrupt) -> None:
        self.starter = starter
        self.options = options
        self.interrupt = interrupt
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.began = self.clock()
        self.next_report = self.began
        self.next_job = self.began

    async def run(self) -> int:
        while not self.interrupt.stop.is_set():
            await self._start_due_job()
            tally = await self.starter.tally()
            self._report(tally)
            if self.options.jobs is not None and tally.started >= self.options.jobs \
                    and tally.all_terminal:
                print(f"relay demo: done: {tally.summary()}", flush=True)
                return 0
            if self._past_deadline():
                return self._end(f"stopped after {self.options.exit_after:g} s", tally)
            await _paused(self.interrupt.stop, 0.25)
        return self._end("interrupted", await self.starter.tally(), self.interrupt.status)

    async def _start_due_job(self) -> None:
        wanted = self.options.jobs
        if wanted is not None:
            if len(self.starter.job_ids) < wanted:
                await self.starter.start_one()
        elif self.clock() >= self.next_job:
            await self.starter.start_one()
            self.next_job += self.options.every

    def _report(self, tally: Tally) -> None:
        if self.clock() >= self.next_report:
            print(f"relay demo: {tally.progress()}", flush=True)
            self.next_report += self.options.report_every

    def _past_deadline(self) -> bool:
        limit = self.options.exit_after
        return limit is not None and self.clock() - self.began >= limit

    @staticmethod
    def _end(why: str, tally: Tally, status: int | None = None) -> int:
        print(f"relay demo: {why}: {tally.summary()}", flush=True)
        if status is not None:
            return status
        return 0 if tally.all_terminal else 1


async def _paused(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set; whether it is."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()
