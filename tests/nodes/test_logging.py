"""Structured logs: the daemon's JSON lines, and the embedded node's (silent unless asked)."""

from __future__ import annotations

import io
import json
import logging

import pytest

import migrate
from nodes import embedded_logging


def test_embedded_logging_writes_json_lines_for_the_packages_only_within_its_block():
    stream = io.StringIO()
    with embedded_logging("local", "warning", stream):
        logging.getLogger("nodes._node").warning("peer lost", extra={"peer": "edge-1"})
        logging.getLogger("migrate._source").info("below the level")
        logging.getLogger("someapp").warning("the application's own")
    logging.getLogger("nodes._node").warning("after the block")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["msg"], r["node"], r["level"], r.get("peer")) for r in lines] == \
        [("peer lost", "local", "warning", "edge-1")]
    assert logging.getLogger("nodes").propagate and logging.getLogger("nodes").handlers  # the NullHandler only


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="debug, info, warning or error"):
        with embedded_logging("local", "loud", io.StringIO()):
            pass


async def test_the_local_node_logs_json_when_asked_and_nothing_otherwise(capsys, monkeypatch):
    monkeypatch.delenv("MIGRATE_LOG_LEVEL", raising=False)
    async with migrate.connect():
        pass
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("MIGRATE_LOG_LEVEL", "info")
    async with migrate.connect():
        pass
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert any(r["msg"] == "listening" and r["node"] == "local" for r in records), records
