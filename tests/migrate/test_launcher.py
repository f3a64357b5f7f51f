"""The one node launcher: its command lines and how it reads a node's log."""

from pathlib import Path

import pytest

from migrate.launcher import NodeProcess, listening_address, log_records, migrate_node_command, serve_command
from nodes import NodeError


def test_listening_address_reads_the_first_listening_line():
    log = 'not json\n{"msg": "starting"}\n{"msg": "listening", "address": "198.18.0.2:4000"}\n'
    assert listening_address(log) == "198.18.0.2:4000"
    assert listening_address("[1, 2]\n") is None


def test_log_records_keep_lines_that_are_not_json_objects():
    assert log_records('{"msg": "a"}\n[1, 2]\noops\n') == [{"msg": "a"}, {"raw": "[1, 2]"}, {"raw": "oops"}]


def test_serve_command_runs_migrate_node_serve_with_tls_or_on_plain_tcp():
    tls = serve_command("edge-1", "edge", listen="127.0.0.1:0", data_dir=Path("/d"), tls_dir=Path("/t"),
                        join=["127.0.0.1:7401"], args=["--workload-memory-bytes", "1024"])
    assert tls[:len(migrate_node_command())] == migrate_node_command()
    rest = tls[len(migrate_node_command()):]
    assert rest == ["serve", "--name", "edge-1", "--role", "edge", "--listen", "127.0.0.1:0", "--data-dir", "/d",
                    "--workload-memory-bytes", "1024", "--join", "127.0.0.1:7401", "--tls-dir", "/t"]
    plain = serve_command("edge-1", "edge", listen="127.0.0.1:0", data_dir=Path("/d"), tls_dir=None)
    assert plain[-1] == "--insecure" and "--tls-dir" not in plain


def test_without_the_script_the_command_is_the_migrate_cli_module(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert migrate_node_command()[1:] == ["-m", "migrate.cli"]


def test_a_node_never_started_says_so(tmp_path):
    node = NodeProcess("edge-1", "edge", data_dir=tmp_path / "edge-1", tls_dir=None)
    for use in (lambda: node.pid, node.stop, node.terminate):
        with pytest.raises(NodeError, match="edge-1 was never started"):
            use()
    with pytest.raises(NodeError, match="edge-1 never listened"):
        node.restart()
