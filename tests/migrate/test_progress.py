"""A move's progress: events to ``h.migrate(progress=...)``, lines from ``migrate-node migrate``, ``status``."""

from __future__ import annotations

import io
import signal
import subprocess

import pytest

import migrate
import workloads
from migrate._progress import MoveProgress, ProgressPrinter
from nodeproc import clean_env, migrate_node_command

MIB = 2**20


async def test_a_move_of_several_mib_reports_progress_to_its_callback(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    events: list[MoveProgress] = []

    async def collect(event: MoveProgress) -> None:  # an async callback; a plain function works too
        events.append(event)

    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node"),
                               local=False) as cluster:
        h = await cluster.spawn(workloads.load("dirtier"), on="edge-1")
        assert await h.call("dt_init", 32) == 32 * MIB // 4096
        checksum = await h.call("dt_checksum")
        report = await h.migrate("cloud-1", progress=collect, progress_interval_s=0.005)
        assert await h.call("dt_checksum") == checksum and h.node == "cloud-1"
    assert report.bytes_sent > 2 * MIB
    assert len(events) >= 2, events  # the first round alone takes longer than the interval
    assert all(e.workload == h.workload for e in events)
    sent = [e.bytes_sent for e in events]
    assert sent == sorted(sent), sent
    assert all(e.phase in ("capture", "encode", "send", "commit") for e in events[:-1])
    last = events[-1]
    assert (last.phase, last.bytes_sent, last.round, last.remaining_bytes) == \
        ("done", report.bytes_sent, report.rounds, 0)
    assert all(e.remaining_bytes is None or e.remaining_bytes >= 0 for e in events)


async def test_migrating_gives_the_events_as_an_async_iterator_and_errors_as_themselves(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node"),
                               local=False) as cluster:
        h = await cluster.spawn(workloads.load("dirtier"), on="edge-1")
        await h.call("dt_init", 32)
        checksum = await h.call("dt_checksum")
        async with h.migrating("cloud-1", progress_interval_s=0.005) as move:
            events = [event async for event in move]
        assert move.report is not None and h.node == "cloud-1"
        assert len(events) >= 2 and events[-1].phase == "done"
        assert events[-1].bytes_sent == move.report.bytes_sent
        sent = [e.bytes_sent for e in events]
        assert sent == sorted(sent), sent

        async with h.migrating("edge-1", progress_interval_s=0.005) as back:
            pass  # nobody reads: leaving the block still waits for the move
        assert back.report is not None and h.node == "edge-1"
        assert await h.call("dt_checksum") == checksum

        with pytest.raises(migrate.UnknownNode):
            async with h.migrating("nowhere-9") as lost:
                async for _ in lost:
                    raise AssertionError("a move to an unknown node has no events")
        with pytest.raises(TypeError, match="progress"):
            async with h.migrating("cloud-1", progress=print):
                pass
        assert h.node == "edge-1" and await h.call("dt_checksum") == checksum


def test_progress_lines_are_rewritten_on_a_terminal_and_whole_when_piped():
    during = MoveProgress("w1", "send", 1, 3 * MIB, 5 * MIB, 10.0 * MIB, 0.5, 0.2)
    done = MoveProgress("w1", "done", 3, 9 * MIB, 0, 12.0 * MIB, 0.0, 0.9)
    piped = io.StringIO()
    printer = ProgressPrinter(piped)
    printer(during)
    printer(done)
    assert piped.getvalue().splitlines() == [
        "progress: w1 send round 1: 3.0 MiB sent, 5.0 MiB left, 10.0 MiB/s, ETA 0.50 s (0.2 s)",
        "progress: w1 done 3 rounds: 9.0 MiB sent, 12.0 MiB/s (0.9 s)"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    printer = ProgressPrinter(terminal)
    printer(during)
    printer(done)
    first, second = terminal.getvalue().split("\r")[1:]
    assert first.startswith("w1 send round 1") and "\n" not in first
    assert second.startswith("w1 done 3 rounds") and second.endswith("\n")
    assert len(second.rstrip("\n")) >= len(first)  # what was on the line is overwritten


def test_migrate_command_piped_prints_progress_lines_and_the_summary(node_procs, cluster_tls, tmp_path):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    tls = cluster_tls.issue("ops", "client")
    module = tmp_path / "dirtier.wasm"
    module.write_bytes(workloads.load("dirtier"))

    def cli(*args):
        return subprocess.run([*migrate_node_command(), *args, "--node", str(edge.address), "--tls-dir", str(tls)],
                              capture_output=True, text=True, env=clean_env(), timeout=120)

    assert cli("deploy", str(module), "--id", "d1").returncode == 0
    assert cli("call", "d1", "dt_init", "16").stdout.strip() == str(16 * MIB // 4096)
    # A move that fails while its progress is watched is still one line and status 1.
    failed = cli("migrate", "d1", "--to", "127.0.0.1:1")
    assert failed.returncode == 1 and "cannot reach 127.0.0.1:1" in failed.stderr.splitlines()[-1], failed.stderr
    assert "Traceback" not in failed.stderr
    done = cli("migrate", "d1", "--to", str(cloud.address))
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("progress: d1 ")]
    assert progress and progress[-1].startswith("progress: d1 done ") and "MiB sent" in progress[-1]
    assert "\r" not in done.stderr
    assert done.stdout.startswith("d1 edge-1 -> cloud-1 (precopy): ")


async def test_status_shows_a_move_under_way_on_both_nodes_with_the_same_figures(node_procs, cluster_tls,
                                                                                 tmp_path):
    # The source holds its move after the first round until a SIGTERM (or 120 s).
    edge = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_PAUSE_AT": "source:after-round",
                                                   "MIGRATE_NODE_PAUSE_S": "120"})
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    tls = cluster_tls.issue("ops", "client")
    module = tmp_path / "dirtier.wasm"
    module.write_bytes(workloads.load("dirtier"))

    def cli(*args, node=edge):
        return subprocess.run([*migrate_node_command(), *args, "--node", str(node.address), "--tls-dir", str(tls)],
                              capture_output=True, text=True, env=clean_env(), timeout=120)

    assert cli("deploy", str(module), "--id", "d1").returncode == 0
    cli("call", "d1", "dt_init", "8")
    mover = subprocess.Popen([*migrate_node_command(), "migrate", "d1", "--to", str(cloud.address), "--node",
                              str(edge.address), "--tls-dir", str(tls)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        await edge.wait_for_log("paused at source:after-round")
        async with await edge.client(tls) as at_edge, await cloud.client(tls) as at_cloud:
            out = next(m for m in (await at_edge.status()).migrations if m["state"] == "outgoing")
            into = next(m for m in (await at_cloud.status()).migrations if m["state"] == "incoming")
        assert (out["workload"], out["phase"], out["round"], out["rounds"]) == ("d1", "send", 2, 1)
        assert out["bytes_sent"] > 0 and out["remaining_bytes"] is None and out["rate_bps"] > 0
        assert (into["workload"], into["rounds"], into["bytes_received"]) == ("d1", 1, out["bytes_sent"])
        text = cli("status").stdout
        assert f"migration d1 outgoing -> {cloud.address}: strategy precopy, phase send, rounds 1, bytes_sent " in text
        assert "migration d1 incoming <- edge-1: rounds 1, bytes_received " in cli("status", node=cloud).stdout
        edge.proc.send_signal(signal.SIGTERM)  # ends the pause: the move finishes, then the node stops
    finally:
        stdout, stderr = mover.communicate(timeout=60)
    assert mover.returncode == 0, stderr
    assert stdout.startswith("d1 edge-1 -> cloud-1 (precopy): ")
    # The paused round shows as the mover polled: its bytes are the first round's.
    assert f"progress: d1 send round 2: {out['bytes_sent'] / MIB:.1f} MiB sent" in stderr
