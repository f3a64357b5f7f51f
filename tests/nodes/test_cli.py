"""The migrate-node command line: user errors give one clear line and a nonzero status, never a traceback."""

from __future__ import annotations

import json
import re
import socket

import pytest

from nodes.cli import COMMANDS, EXIT_FAILED, build_parser, main
from nodeproc import run_cli


def test_commands_leave_room_for_migration():
    assert {"serve", "status", "list", "ca", "cert"} <= set(COMMANDS)
    assert build_parser().parse_args(["status", "--node", "127.0.0.1:1"]).node.port == 1


@pytest.mark.parametrize("args, status, message", [
    (["serve", "--name", "n", "--insecure", "--listen", "0.0.0.0:0"], 2, "only on loopback"),
    (["serve", "--role", "edge"], 2, "needs a name"),
    (["serve", "--name", "n", "--tls-dir", "/nonexistent/tls"], 2, "lacks cert.pem"),
    (["serve", "--name", "n", "--listen", "nowhere"], 2, "is not HOST:PORT"),
    (["status", "--insecure", "--node", "127.0.0.1:1"], 1, "cannot connect to 127.0.0.1:1"),
    (["status", "--node", "127.0.0.1:1"], 2, "TLS dir"),
    (["cert", "issue", "--ca", "/nonexistent", "--name", "n", "--role", "node", "--out", "/tmp/x"], 2, "no CA in"),
])
def test_user_errors(args, status, message):
    done = run_cli(*args, check=False)
    assert done.returncode == status, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    # The error is one line (argparse's own errors come after the usage text).
    assert message in done.stderr.splitlines()[-1], done.stderr


class ToolError(Exception):
    """An error class of a package that runs ``main`` with its own commands."""


@pytest.mark.parametrize("raised, status", [(ToolError("the tool failed"), EXIT_FAILED), (LookupError("bug"), None)])
def test_a_callers_failure_classes_exit_with_status_1_and_others_propagate(capsys, raised, status):
    def run(args):
        raise raised

    commands = {"go": (lambda sub: sub.add_parser("go"), run)}
    if status is None:  # not one of ``failures``: a bug, with its traceback
        with pytest.raises(LookupError):
            main(["go"], commands=commands, failures=(ToolError,), prog="tool")
        return
    assert main(["go"], commands=commands, failures=(ToolError,), prog="tool") == status
    assert capsys.readouterr().err == "tool go: the tool failed\n"


def test_serve_on_a_busy_port_is_one_line_with_status_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--name", "n", "--insecure", "--listen", f"127.0.0.1:{port}",
                       "--data-dir", str(tmp_path / "data"), check=False)
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"migrate-node serve: cannot listen on 127.0.0.1:{port}: "), done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr


def test_ca_init_refuses_to_overwrite(tmp_path):
    assert "created cluster CA" in run_cli("ca", "init", "--dir", str(tmp_path / "ca")).stdout
    done = run_cli("ca", "init", "--dir", str(tmp_path / "ca"), check=False)
    assert done.returncode == 2 and "already holds a CA" in done.stderr


async def test_status_list_deploy_and_call_against_a_real_node(node_procs, cluster_tls, tmp_path):
    import trio
    import workloads

    node = node_procs.start("edge-1", "edge")
    module = tmp_path / "counter.wasm"
    module.write_bytes(workloads.load("counter"))
    client = ["--node", str(node.address), "--tls-dir", str(cluster_tls.app)]

    def cli(*args):
        return run_cli(*args, *client, check=False)

    done = await trio.to_thread.run_sync(cli, "deploy", str(module), "--id", "c1")
    assert done.returncode == 0, done.stderr
    assert (await trio.to_thread.run_sync(cli, "call", "c1", "incr", "41")).stdout.strip() == "41"
    listing = (await trio.to_thread.run_sync(cli, "list")).stdout
    assert "c1" in listing and "WORKLOAD" in listing
    status = (await trio.to_thread.run_sync(cli, "status")).stdout
    assert "node edge-1 (edge)" in status and "c1" in status
    # The membership view: this node, alive, heard of just now.
    assert re.search(rf"^edge-1 +edge +{re.escape(str(node.address))} +- +alive +0\.0 s", status, re.M), status
    members = (await trio.to_thread.run_sync(cli, "members")).stdout
    assert members.splitlines()[0].split()[:5] == ["NODE", "ROLE", "ADDRESS", "LOCATION", "STATE"]
    assert re.search(r"^edge-1 +edge .* alive ", members, re.M), members
    listed = json.loads((await trio.to_thread.run_sync(cli, "members", "--json")).stdout)
    assert [(m["name"], m["state"]) for m in listed] == [("edge-1", "alive")]
    failed = await trio.to_thread.run_sync(cli, "call", "c1", "nope")
    assert failed.returncode == 1 and "no callable export 'nope'" in failed.stderr
