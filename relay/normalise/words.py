"""Provider status words, matched case-insensitively, to normalised states.

Providers vary case and wording ("COMPLETED", "succeeded", "in-progress"), and seed 003 does not
list its enum at all, so the usual words of each state are accepted for every schema. Spaces,
hyphens and underscores are one separator: "In Progress", "in-progress" and "IN__PROGRESS"
are one word.
"""

from __future__ import annotations

import re

from relay.models import State

_WORDS: dict[State, tuple[str, ...]] = {
    State.QUEUED: ("queued", "pending", "created", "submitted", "waiting", "scheduled",
                   "accepted", "new", "starting", "in_queue", "enqueued", "not_started",
                   "initializing", "initialising", "preparing"),
    # A job being cancelled has not stopped yet, and may still complete: it is running.
    State.RUNNING: ("running", "processing", "in_progress", "started", "generating", "active",
                    "working", "rendering", "uploading", "finalizing", "progress",
                    "cancelling", "canceling"),
    State.SUCCEEDED: ("succeeded", "success", "successful", "completed", "complete", "done",
                      "finished", "ready"),
    State.FAILED: ("failed", "failure", "error", "errored", "rejected", "timeout", "timed_out",
                   "expired", "aborted"),
    State.CANCELED: ("canceled", "cancelled", "cancel", "stopped"),
}

STATE_OF_WORD: dict[str, State] = {word: state for state, words in _WORDS.items()
                                   for word in words}

_SEPARATORS = re.compile(r"[\s\-_]+")


def word_key(word: str) -> str:
    """A status word in the form the tables use: lower case, one `_` between its parts."""
    return _SEPARATORS.sub("_", word.casefold()).strip("_")


def is_cancelling(word: str) -> bool:
    """Whether a status word says the job is being cancelled (and so still running)."""
    return word_key(word) in ("cancelling", "canceling")


def state_of(word: str) -> State | None:
    """The state a status word means, or None for a word the relay does not know."""
    return STATE_OF_WORD.get(word_key(word))
