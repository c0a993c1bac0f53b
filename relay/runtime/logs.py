"""Log lines: relay's, uvicorn's and the access lines in one format, `text` or `json`
(`server.log_format`), on stderr.

Uvicorn is started without a logging config of its own (relay.runtime.server), so its loggers
propagate to the root handler set here. A line's structured fields are the `extra` it was
logged with: `text` appends them as `key=value`, `json` puts them beside `ts`, `level`,
`logger` and `msg`. httpx and httpcore log every request at info; they are kept to warnings
unless the level is debug (the relay polls and posts thousands of times an hour).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
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


def timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the fields, and `exc` (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": timestamp(record), "level": record.levelname.lower(),
                                "logger": record.name, "msg": record.getMessage()}
        line.update(fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value …`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extra = fields(record)
        if not extra:
            return text
        return text + "".join(f" {k}={v}" for k, v in extra.items())


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Every line through one handler on stderr (or `stream`) in `log_format`, at `level`."""
    # No format shows where a line was logged from, nor the thread or process: not looking
    # them up takes about a quarter off each line (logging's own "Optimization" advice),
    # which matters at an access line per webhook.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    chatty = logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING
    for name in CHATTY:
        logging.getLogger(name).setLevel(chatty)
