"""The pollers, one class per schema: what a poll is, and when the next one is due."""

from __future__ import annotations

from relay.models import Schema
from relay.polling.pollers.base import Poller, Services
from relay.polling.pollers.generation import GenerationPoller
from relay.polling.pollers.jobstatus import JobStatusPoller
from relay.polling.pollers.story import StoryPoller

POLLERS: dict[Schema, type[Poller]] = {
    Schema.STORY: StoryPoller,
    Schema.GENERATION: GenerationPoller,
    Schema.JOBSTATUS: JobStatusPoller,
}

__all__ = ["POLLERS", "Poller", "Services"]
