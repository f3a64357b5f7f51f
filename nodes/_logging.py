"""Structured logs: one JSON object per line, with node, workload and peer fields.

Modules log through their own named loggers and pass context as
``extra={"workload": ..., "peer": ...}``; ``JsonFormatter`` puts every such
field into the line, and the node's name into all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
for _package in ("nodes", "migrate", "snapshot"):
    logging.getLogger(_package).addHandler(logging.NullHandler())


class JsonFormatter(logging.Formatter):
    """Format records as JSON lines: ts, level, logger, msg, node, and the extra fields."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node is not None:
            line["node"] = self.node
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


#: The loggers of this project's packages: what an embedded node logs under.
PACKAGES = ("nodes", "migrate", "snapshot")
#: Log level of an application's embedded node (``migrate.connect``) when its ``log_level`` is not given.
EMBEDDED_ENV = "MIGRATE_LOG_LEVEL"


def check_level(level: str) -> str:
    """``level`` upper-cased; raises ValueError if it is not debug, info, warning or error."""
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"log level must be debug, info, warning or error, got {level!r}")
    return level.upper()


@contextlib.contextmanager
def embedded_logging(node: str, level: str | None = None, stream: TextIO | None = None) -> Iterator[None]:
    """Within the block, this project's packages log JSON lines (as the daemon does) to ``stream``.

    ``level`` None means ``$MIGRATE_LOG_LEVEL``, if set.

    For a node inside an application, whose root logger is the
    application's: only the packages' own loggers get the handler, at
    ``level``, and stop passing records up.  ``level`` None: nothing
    changes, and the packages stay silent unless the application's logging
    shows them (each package logger has a NullHandler, so Python's
    last-resort handler does not print their warnings as plain text).
    Raises ValueError for an unknown level.
    """
    level = level or os.environ.get(EMBEDDED_ENV) or None
    if level is None:
        yield
        return
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(node))
    loggers = [logging.getLogger(name) for name in PACKAGES]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(check_level(level))
        lg.propagate = False
    try:
        yield
    finally:
        for lg, (old_level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(old_level)
            lg.propagate = propagate


def configure_logging(node: str | None, level: str = "info", stream: TextIO = sys.stderr) -> None:
    """Send every log record of this process to ``stream`` as JSON lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
