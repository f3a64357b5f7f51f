"""Structured logs: one JSON object per line, with node, workload and peer fields.

Modules log through their own named loggers and pass context as
``extra={"workload": ..., "peer": ...}``; ``JsonFormatter`` puts every such
field into the line, and the node's name into all of them.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


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


def configure_logging(node: str | None, level: str = "info", stream: TextIO = sys.stderr) -> None:
    """Send every log record of this process to ``stream`` as JSON lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
