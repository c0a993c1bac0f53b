"""The `jobstatus` schema's poller."""

from __future__ import annotations

from relay.polling.pollers.base import Poller


class JobStatusPoller(Poller):
    """`GET /getJobStatus?jobId=`, one job per call."""
