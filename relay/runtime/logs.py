"""Log lines: relay's, uvicorn's and the access lines in one format, `text` or `json`
(`server.log_format`), on stderr.

Uvicorn is started without a logging config of its own (relay.runtime.server), so its loggers
propagate to the root handler set here. A line's structured fields are the `extra` it was
logged with: `text` appends them as `key=value`, `json` puts them beside `ts`, `level`,
`logger` and `msg`. httpx and httpcore log every request at info; they are kept to warnings
unless the level is debug (the relay polls and posts thousands of times an hour).

At info every request writes an access line, so a line's cost is a webhook's cost: the
formatters build their lines directly (the time's text made once a second), and the handler
(`LineWriter`) writes the info lines logged during one turn of the event loop in one write at
its end, not one write and flush each. A warning or an error is written at once, after any
line held before it; what a SIGKILL can take is the info lines of the turn it lands in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
CHATTY = ("httpx", "httpcore")
"""Loggers that log each request they make at info."""

_RECORD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName",
                                                       "color_message"}
"""A LogRecord's own attributes: what is not among them came as `extra` (uvicorn's
`color_message` is the same message with terminal colours)."""


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a line was logged with."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD}


class _Seconds:
    """`strftime(fmt, convert(second))`, made once per second rather than once per line."""

    def __init__(self, fmt: str, convert: Any) -> None:
        self.fmt, self.convert = fmt, convert
        self.second, self.text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second, self.text = second, time.strftime(self.fmt, self.convert(second))
        return self.text


_UTC_SECONDS = _Seconds("%Y-%m-%dT%H:%M:%S", time.gmtime)


def timestamp(record: logging.LogRecord) -> str:
    """`2026-01-02T03:04:05.678Z`: when the record was made, in UTC."""
    return f"{_UTC_SECONDS(record.created)}.{int(record.msecs):03d}Z"


_JSON = json.JSONEncoder(default=str, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the fields, and `exc` (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": timestamp(record), "level": record.levelname.lower(),
                                "logger": record.name, "msg": record.getMessage()}
        line.update(fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _JSON.encode(line)


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value …`, the time as logging's default shows it
    (`2026-01-02 03:04:05,678`, local time), then the traceback, if any, on the lines below."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds(self.default_time_format, self.converter)

    def format(self, record: logging.LogRecord) -> str:
        text = (f"{self._seconds(record.created)},{int(record.msecs):03d} {record.levelname}"
                f" {record.name}: {record.getMessage()}")
        extra = fields(record)
        if extra:
            text += "".join(f" {k}={v}" for k, v in extra.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class LineWriter(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that holds the info and debug lines logged on a running event loop
    until the end of the loop's turn, then writes them in one go (see the module docstring).
    Lines from other threads, and warnings and errors, are written at once, after the lines
    held before them, so the order is kept."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        self._turn: asyncio.AbstractEventLoop | None = None  # the loop that will write them

    def emit(self, record: logging.LogRecord) -> None:
        try:  # called with self.lock held (Handler.handle)
            self._held.append(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING or not self._hold():
                self.flush()
        except Exception:
            self.handleError(record)

    def _hold(self) -> bool:
        """Whether the held lines can wait for the end of the running loop's turn."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._turn is None or self._turn.is_closed():
            self._turn = loop
            loop.call_soon(self._end_turn)
        return self._turn is loop

    def _end_turn(self) -> None:
        self.acquire()
        try:
            self._turn = None
            self.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "(log lines held for a turn)"}))
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._held:
                text, self._held = "".join(self._held), []
                self.stream.write(text)
            super().flush()
        finally:
            self.release()


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Every line through one handler on stderr (or `stream`) in `log_format`, at `level`."""
    # No format shows where a line was logged from, nor the thread or process: not looking
    # them up takes about a quarter off each line (logging's own "Optimization" advice),
    # which matters at an access line per webhook.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = LineWriter(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    chatty = logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING
    for name in CHATTY:
        logging.getLogger(name).setLevel(chatty)
