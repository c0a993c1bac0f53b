"""A simulated job: a timeline of steps, applied as the provider's clock passes them.

Times are readings of the provider's clock (`time.monotonic` unless one is injected); a step's
`after` is relative to the job's creation. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, init=False)
class Step:
    """At `after` seconds from creation the job has `status` and the schema fields in `fields`
    (merged over those of earlier steps), e.g. `Step(0.2, "processing", scenes_completed=1)`."""

    after: float
    status: str
    fields: Mapping[str, Any]

    def __init__(self, after: float, status: str, **fields: Any) -> None:
        if after < 0:
            raise ValueError("Step.after must not be negative")
        object.__setattr__(self, "after", float(after))
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "fields", fields)


@dataclass(frozen=True)
class Lifecycle:
    """A schema's status words: those before processing starts, and the final ones."""

    waiting: frozenset[str]
    terminal: frozenset[str]


def check_timeline(steps: Sequence[Step]) -> tuple[Step, ...]:
    if not steps:
        raise ValueError("a timeline needs at least one step")
    if any(later.after < earlier.after for earlier, later in itertools.pairwise(steps)):
        raise ValueError("timeline steps must be in order of `after`")
    return tuple(steps)


@dataclass(eq=False)
class SimJob:
    """One job's state. `offset` is how far `advance` has pushed the job ahead of its clock."""

    id: str
    seq: int
    created: float
    steps: tuple[Step, ...]
    fields: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    status: str = ""
    position: int = 0
    offset: float = 0.0
    started: float | None = None
    finished: float | None = None
    updated: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.finished is not None

    def elapsed(self, now: float) -> float:
        return now - self.created + self.offset

    def next_step(self) -> Step | None:
        return self.steps[self.position] if self.position < len(self.steps) else None

    def due(self, now: float) -> bool:
        step = self.next_step()
        return step is not None and step.after <= self.elapsed(now)

    def apply_next(self, now: float, lifecycle: Lifecycle) -> bool:
        """Apply the next step at the time it was due; True if the status changed."""
        step = self.steps[self.position]
        self.position += 1
        return self.apply(step, min(now, self.created + step.after - self.offset), lifecycle)

    def apply(self, step: Step, at: float, lifecycle: Lifecycle) -> bool:
        """Apply `step` at clock time `at`; a terminal status ends the timeline."""
        changed = step.status != self.status
        self.status = step.status
        self.fields.update(step.fields)
        self.updated = at
        if self.started is None and step.status not in lifecycle.waiting:
            self.started = at
        if step.status in lifecycle.terminal:
            self.finished = at
            self.position = len(self.steps)
        return changed

    def skip_ahead(self, now: float) -> None:
        """Move the job's clock forward so that its next step is due now."""
        step = self.next_step()
        if step is not None:
            self.offset += max(0.0, step.after - self.elapsed(now))
