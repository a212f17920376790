"""The log line every chatops service writes, in the shape of the talk's logs:

    Feb 18 06:54:04 tmi_edge: [clue] Timed out (after 5s) while writing request for: privmsg

that is `MMM DD HH:MM:SS <service>: [<remote>] <event>`, with `key=value` fields after the event
where they help. The log collector parses exactly this shape, so both sides import it from here.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

TIME_FORMAT = "%b %d %H:%M:%S"


def _field_value(value: Any) -> str:
    text = str(value)
    # A field never spans lines and never lets a space fake a new key=value pair.
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return f'"{text}"'


def format_line(service: str, remote: str | None, event: str, fields: dict[str, Any] | None = None,
                when: float | None = None) -> str:
    stamp = time.strftime(TIME_FORMAT, time.localtime(time.time() if when is None else when))
    event = event.replace("\r", "\\r").replace("\n", "\\n")
    line = f"{stamp} {service}: [{remote or '-'}] {event}"
    if fields:
        line += " " + " ".join(f"{k}={_field_value(v)}" for k, v in fields.items())
    return line


class TalkFormatter(logging.Formatter):
    """Formats records from `event()` (and plain logging calls) as talk-shaped lines."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        remote = getattr(record, "remote", None)
        fields = dict(getattr(record, "fields", None) or {})
        if record.levelno >= logging.WARNING and "level" not in fields:
            fields = {"level": record.levelname.lower(), **fields}
        line = format_line(self.service, remote, record.getMessage(), fields, record.created)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(service: str, stream: TextIO | None = None, level: int = logging.INFO) -> logging.Logger:
    """Route the `chatops` logger tree to `stream` in the talk's shape; returns the service logger."""
    root = logging.getLogger("chatops")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(TalkFormatter(service))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return logging.getLogger(f"chatops.{service}")


def event(logger: logging.Logger, remote: str | None, message: str, level: int = logging.INFO,
          **fields: Any) -> None:
    logger.log(level, message, extra={"remote": remote, "fields": fields})
