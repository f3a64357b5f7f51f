"""The report of a move (``Migration.run``), from real moves between node processes: its fields and notes agree.

Structure only: these tests never compare times.
"""

import re

import pytest
import trio

import migrate
import workloads

NO_CLIENT_BLACKOUT = "no client blackout to report"


@pytest.fixture
def two_nodes(node_procs):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    return edge, cloud


def check_report(r: migrate.MigrationReport) -> None:
    """Every invariant between a report's fields and notes."""
    assert r.rounds == len(r.bytes_per_round) >= 1
    assert sum(r.bytes_per_round) == r.bytes_sent
    assert all(b > 0 for b in r.bytes_per_round)
    if r.strategy == "dual":
        assert r.final_round_bytes == 0  # the switch sends no pages
    else:
        assert r.final_round_bytes == r.bytes_per_round[-1]
    if r.strategy == "stop-copy":
        assert r.rounds == 1
    if r.strategy == "precopy":
        assert r.rounds >= 3  # the full copy, the last running delta, the frozen delta
    for spent in (r.capture_s, r.encode_s, r.send_s, r.commit_s, r.frozen_s, r.total_s):
        assert isinstance(spent, float) and spent >= 0
    for note in r.notes:  # a count of rounds in a note is the report's
        for n in re.findall(r"(\d+) rounds?\b", note):
            assert int(n) == r.rounds, (note, r.rounds)
    assert len(set(r.notes)) == len(r.notes)
    unmeasured = [n for n in r.notes if NO_CLIENT_BLACKOUT in n]
    if r.client_blackout_s is None:
        assert len(unmeasured) == 1, r.notes  # one note says why
    else:
        assert not unmeasured and r.client_blackout_s >= 0


@pytest.mark.parametrize("strategy", ["precopy", "stop-copy", "dual"])
async def test_report_fields_and_notes_agree_with_a_client_calling(two_nodes, cluster_tls, strategy):
    edge, cloud = two_nodes
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        done, results = trio.Event(), []

        async def hammer() -> None:
            while not done.is_set():
                results.append(await h.call("incr", 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hammer)
            reports = []
            for target in ("cloud-1", "edge-1", "cloud-1"):
                reports.append(await h.migrate(target, strategy=strategy))
            done.set()
        assert results == list(range(1, len(results) + 1))  # exactly once across the moves
    for r in reports:
        check_report(r)


async def test_report_without_a_client_says_there_was_no_blackout(two_nodes, cluster_tls):
    edge, cloud = two_nodes
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        assert await h.call("incr", 1) == 1
        report = await h.migrate("cloud-1", strategy="precopy")
    check_report(report)
    assert report.client_blackout_s is None
    assert any("no call was waiting at the source" in n for n in report.notes)
