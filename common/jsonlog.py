"""Structured logs: one JSON object per line, so log shippers index fields instead of parsing prose.

Call sites log an event name as the message and their facts through `extra={...}`; the plain format for
people (`setup_plain`) keeps those facts too, as `key=value` after the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, object] | None = None):
        super().__init__()
        self.static = static or {}  # fields on every line, e.g. the replica id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **self.static,
        }
        entry.update(extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The facts a call site passed through `extra={...}`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message (key=value, ...)`: a line for people that keeps the call site's facts."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # facts on the message's line, before any traceback
        return f"{head} ({', '.join(f'{k}={v}' for k, v in fields.items())}){newline}{rest}"


def setup_plain(level: int = logging.INFO) -> None:
    """Plain lines on stderr for every logger (the command-line tools), unless logging is set up already."""
    handler = logging.StreamHandler()
    handler.setFormatter(PlainFormatter())
    logging.basicConfig(level=level, handlers=[handler])


def setup(level: str = "info", stream: TextIO = sys.stderr, **static: object) -> None:
    """Route every logger of the process through one JSON handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
