"""Simulated providers of the three schemas, served over real HTTP for tests, the demo and
benchmarks.

    sim = GenerationProvider(api_key="k", webhook_secret="s")
    async with serving(sim.app) as base_url:          # relay.runtime.server
        job_id = sim.create_job(generation_timeline(step=0.05), webhook_url=hook_url)
        sim.faults.push(Fault(status=429, retry_after=1))
        ...
        sim.requests["get"], sim.webhooks["sent"]

Each job follows its timeline of `Step`s, relative to its creation on the provider's clock;
`advance(job_id)` jumps to the next step now. Webhooks (any schema, when a job has a
`webhook_url`) are pushed while the app is served with its lifespan.
"""

from __future__ import annotations

from relay.sim.core import SimulatedProvider
from relay.sim.faults import Fault, FaultQueue
from relay.sim.generation import GenerationProvider, generation_timeline
from relay.sim.jobstatus import JobStatusProvider, jobstatus_timeline
from relay.sim.story import StoryProvider, story_timeline
from relay.sim.timeline import Step
from relay.sim.webhooks import sync_signature

__all__ = [
    "Fault",
    "FaultQueue",
    "GenerationProvider",
    "JobStatusProvider",
    "SimulatedProvider",
    "Step",
    "StoryProvider",
    "generation_timeline",
    "jobstatus_timeline",
    "story_timeline",
    "sync_signature",
]
