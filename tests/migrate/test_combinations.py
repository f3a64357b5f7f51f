"""Restarts, protection and moves together, with real node processes stopped and killed.

Each scenario mixes what other tests check one at a time: a SIGTERM
restart (the node saves and restores its workloads with epoch and call
ledger), protection (checkpoint or standby) and moves, then a SIGKILL.
State is checked byte for byte with the model of ``test_protect.Bench``
(kvstore written with ``call_with_bytes`` and ``write_memory``, a counter
whose increments must come back 1..n), and ownership by asking every
node with MLocate.
"""

from __future__ import annotations

import json
import os

import pytest
import trio

import migrate
import workloads
from migrate._messages import MCall, MLocate
from nodes import NodeClient
from nodeproc import run_cli
from test_protect import Bench, _failed_over

pytestmark = pytest.mark.trio

COUNTER = workloads.load("counter")


def _connect(node_procs, cluster_tls, **kwargs):
    """An application connected to every node the test started."""
    return migrate.connect(*(str(n.address) for n in node_procs.nodes), tls=cluster_tls.issue("app-1", "node"),
                           **kwargs)


async def _restart(node) -> None:
    """SIGTERM the node, wait for its exit (status 0), and start it again on the same port and data dir."""
    assert await trio.to_thread.run_sync(node.terminate) == 0
    await trio.to_thread.run_sync(node.restart)


async def _where(cluster, node: str, workload: str):
    """MLocate on ``node`` (a name, or "local"), on a fresh connection."""
    async with await NodeClient.connect(cluster.address_of(node), tls=cluster._tls) as client:
        return await client.request(MLocate, workload=workload)


async def _owners(cluster, nodes: list[str], workload: str) -> list[str]:
    """The nodes among ``nodes`` that say they own ``workload``."""
    return [n for n in nodes if (await _where(cluster, n, workload)).status == "owner"]


async def _raw_call(cluster, node: str, workload: str, caller: str, seq: int, *args):
    """One MCall ``incr`` straight to ``node``, as a handle retrying (caller, seq) would send it."""
    async with await NodeClient.connect(cluster.address_of(node), tls=cluster._tls) as client:
        return await client.request(MCall, workload=workload, op="call", caller=caller, seq=seq,
                                    export="incr", args=args)


def _status(address: str, tls) -> dict:
    """``migrate-node status --json`` of the node at ``address``."""
    return json.loads(run_cli("status", "--node", address, "--tls-dir", str(tls), "--json").stdout)


async def _restart_while_calling(bench: Bench, node, calls: int = 10) -> None:
    """Restart ``node`` with SIGTERM while a task keeps incrementing; ``calls`` more once it is back."""
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def hammer():
            while not done.is_set():
                await bench.increment()

        nursery.start_soon(hammer)
        await trio.sleep(0.05)
        await _restart(node)
        target = len(bench.increments) + calls
        while len(bench.increments) < target:
            await trio.sleep(0.01)
        done.set()


async def _wait_for_standby(cluster, standby: str, owner: str, workload: str) -> None:
    """Wait until ``standby`` holds a hot copy of ``workload`` that has replayed all the owner ran."""
    with trio.fail_after(20):
        while True:
            copy = await _where(cluster, standby, workload)
            at = await _where(cluster, owner, workload)
            if copy.status == "incoming" and copy.standby and at.status == "owner" and copy.index == at.index:
                return
            await trio.sleep(0.05)


async def test_standby_is_back_after_the_owner_restarts_and_takes_over_after_a_kill(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    node_procs.start("cloud-1", "cloud")
    async with _connect(node_procs, cluster_tls) as c:
        events = c.events()
        bench = await Bench.start(c, on="edge-1", mode="standby", to="cloud-1", interval_s=0.1)
        await bench.steps(8)
        assert await trio.to_thread.run_sync(edge.terminate) == 0
        for h in (bench.kv, bench.counter):  # the stopped owner left its standby's copy in place
            copy = await _where(c, "cloud-1", h.workload)
            assert copy.status == "incoming" and copy.standby
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bench.steps, 3)  # waits for the owner to come back
            await trio.sleep(0.2)
            await trio.to_thread.run_sync(edge.restart)
        await _restart_while_calling(bench, edge)
        await bench.steps(8)
        assert bench.kv.node == "edge-1" and bench.counter.node == "edge-1"
        assert not _failed_over(events), "a restart announced with SIGTERM is waited for, not failed over"
        for h in (bench.kv, bench.counter):
            await _wait_for_standby(c, "cloud-1", "edge-1", h.workload)
        await bench.kill_and_take_over(edge, events, "cloud-1", before=4, after=6)


async def test_standby_takes_over_an_owner_stopped_with_sigterm_that_comes_back_late(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    node_procs.start("cloud-1", "cloud")
    async with _connect(node_procs, cluster_tls, reconnect_timeout_s=1.0) as c:
        events = c.events()
        bench = await Bench.start(c, on="edge-1", mode="standby", to="cloud-1", interval_s=0.1)
        await bench.steps(8)
        assert await trio.to_thread.run_sync(edge.terminate) == 0
        await bench.steps(6)  # the first call waits reconnect_timeout_s, then the standby takes over
        assert bench.kv.node == "cloud-1" and bench.counter.node == "cloud-1"
        assert {e.workload for e in _failed_over(events)} == {bench.kv.workload, bench.counter.workload}

        # edge-1 comes back with its saved copies: fenced off, they only redirect.
        await trio.to_thread.run_sync(edge.restart)
        for h in (bench.kv, bench.counter):
            assert await _owners(c, ["local", "edge-1", "cloud-1"], h.workload) == ["cloud-1"]
            stone = await _where(c, "edge-1", h.workload)
            assert (stone.status, stone.to_name) == ("moved", "cloud-1") and stone.epoch == h.epoch
        stale = await c.attach(bench.counter.workload)  # a handle that missed the takeover
        stale._node, stale._address, stale.epoch = "edge-1", str(edge.address), 1
        bench.increments.append(await stale.call("incr", 1))
        assert stale.node == "cloud-1"
        await bench.steps(2)
        await bench.verify()


async def test_checkpoint_protection_waits_for_a_restart_then_fails_over_after_a_kill(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    async with _connect(node_procs, cluster_tls) as c:
        events = c.events()
        bench = await Bench.start(c, on="edge-1", mode="checkpoint", to="local", interval_s=0.05)
        await bench.steps(8)
        before = c.protection(bench.kv.workload).checkpoint_index
        assert before is not None

        # Stopped while the application is idle; calls are made while it is down.
        assert await trio.to_thread.run_sync(edge.terminate) == 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bench.steps, 3)
            await trio.sleep(0.5)  # ten checkpoint intervals with the owner away
            for h in (bench.kv, bench.counter):
                assert (await _where(c, "local", h.workload)).status == "unknown", "failed over during a restart"
            await trio.to_thread.run_sync(edge.restart)
        assert not _failed_over(events)
        assert bench.kv.node == "edge-1" and bench.counter.node == "edge-1"
        raw = await _where(c, "edge-1", bench.kv.workload)
        assert raw.epoch == 1 and raw.index > before

        # Protection goes on: a checkpoint of the restarted node's state comes in.
        with trio.fail_after(20):
            while c.protection(bench.kv.workload).checkpoint_index < raw.index:
                await trio.sleep(0.05)
        await bench.kill_and_take_over(edge, events, "local", before=4, after=6)


async def test_move_restart_of_each_node_and_move_back(node_procs, cluster_tls):
    edge1 = node_procs.start("edge-1", "edge")
    edge2 = node_procs.start("edge-2", "edge")
    async with _connect(node_procs, cluster_tls) as c:
        bench = await Bench.start(c, on="edge-1", mode="off", to="local")
        await bench.steps(5)
        await bench.migrate("edge-2", strategy="precopy")
        await bench.steps(3)
        await _restart(edge1)  # the old owner: its tombstone must come back
        stone = await _where(c, "edge-1", bench.counter.workload)
        assert (stone.status, stone.to_name, stone.epoch) == ("moved", "edge-2", 2)
        late = await _raw_call(c, "edge-1", bench.counter.workload, "late", 0, 1)
        assert (late.moved_to, late.epoch) == ("edge-2", 2) and not late.values

        await _restart_while_calling(bench, edge2)  # the new owner
        await bench.steps(3)
        assert bench.kv.node == "edge-2" and bench.kv.epoch == 2
        await bench.migrate("edge-1", strategy="stop-copy")
        await bench.steps(3)
        assert bench.kv.node == "edge-1" and bench.kv.epoch == 3
        await _restart(edge1)  # now the owner again
        await _restart(edge2)  # now the old owner
        for h in (bench.kv, bench.counter):
            stone = await _where(c, "edge-2", h.workload)
            assert (stone.status, stone.to_name, stone.epoch) == ("moved", "edge-1", 3)
            assert await _owners(c, ["local", "edge-1", "edge-2"], h.workload) == ["edge-1"]
        late = await _raw_call(c, "edge-2", bench.counter.workload, "late", 0, 1)
        assert (late.moved_to, late.epoch) == ("edge-1", 3)
        # A handle that still believes the workload is on edge-2 follows the tombstone.
        stale = await c.attach(bench.counter.workload)
        stale._node, stale._address, stale.epoch = "edge-2", str(edge2.address), 2
        await bench.steps(3)
        bench.increments.append(await stale.call("incr", 1))
        assert stale.node == "edge-1" and stale.epoch == 3
        await bench.verify()


async def test_several_workloads_on_a_node_restarted_while_some_move(node_procs, cluster_tls):
    """edge-1 holds four workloads; SIGTERM arrives while one moves out to edge-2 and one moves in."""
    edge1 = node_procs.start("edge-1", "edge")
    edge2 = node_procs.start("edge-2", "edge")
    nodes = ["local", "edge-1", "edge-2"]
    async with _connect(node_procs, cluster_tls, reconnect_timeout_s=30.0) as c:
        events = c.events()
        kv = workloads.load("kvstore")
        protected = await c.spawn(COUNTER, on="edge-1")
        await protected.protect("checkpoint", interval_s=0.05, to="local")
        plain = await c.spawn(COUNTER, on="edge-1")
        outgoing = await c.spawn(kv, on="edge-1")     # unprotected, moves edge-1 -> edge-2
        incoming = await c.spawn(kv, on="edge-2")     # protected, moves edge-2 -> edge-1
        await incoming.protect("checkpoint", interval_s=0.05, to="local")
        counts = {protected.workload: 0, plain.workload: 0}
        blobs = {}
        # 12 MiB of random bytes each: the moves last long enough to be caught under way.
        for h in (outgoing, incoming):
            blob = os.urandom(12 * 2**20)
            ptr = await h.call("wm_alloc", len(blob))
            for off in range(0, len(blob), 2**20):
                await h.write_memory(ptr + off, blob[off:off + 2**20])
            blobs[h.workload] = (ptr, blob)
        for h in (protected, plain):
            for _ in range(5):
                counts[h.workload] += 1
                assert await h.call("incr", 1) == counts[h.workload]

        outcome: dict[str, str] = {}

        async def move(h, to: str):
            try:
                await h.migrate(to, strategy="precopy")
                outcome[h.workload] = "moved"
            except migrate.MigrationFailed:
                outcome[h.workload] = "stayed"

        async def under_way(node: str, workload: str):
            """Until ``node`` receives ``workload`` (or, on a fast machine, the move is over)."""
            with trio.fail_after(30):
                while workload not in outcome and (await _where(c, node, workload)).status != "incoming":
                    await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(move, outgoing, "edge-2")
            nursery.start_soon(move, incoming, "edge-1")
            await under_way("edge-2", outgoing.workload)
            assert await trio.to_thread.run_sync(edge1.terminate) == 0
        # The move out was under way when the node began to stop: it finishes
        # first.  The move in is refused by the stopping node (or had committed).
        assert outcome[outgoing.workload] == "moved"
        await trio.to_thread.run_sync(edge1.restart)

        expected = {protected.workload: "edge-1", plain.workload: "edge-1", outgoing.workload: "edge-2",
                    incoming.workload: "edge-1" if outcome[incoming.workload] == "moved" else "edge-2"}
        for h in (protected, plain, outgoing, incoming):
            assert await _owners(c, nodes, h.workload) == [expected[h.workload]], h.workload
            for _ in range(3):
                if h.workload in counts:
                    counts[h.workload] += 1
                    assert await h.call("incr", 1) == counts[h.workload]
            assert h.node == expected[h.workload]
        for h in (protected, plain):
            assert await h.call("get") == counts[h.workload]
        for h in (outgoing, incoming):
            ptr, blob = blobs[h.workload]
            got = b"".join([await h.read_memory(ptr + off, 2**20) for off in range(0, len(blob), 2**20)])
            assert got == blob
        # `migrate-node status` on every node: no second copy (an incoming or
        # a frozen leftover) of any of them, and no move still under way.  The
        # application's own (node) certificate: a client one sees its own tenant's only.
        held = {}
        for name in nodes:
            report = await trio.to_thread.run_sync(_status, c.address_of(name), cluster_tls.issue("app-1", "node"))
            for w in report["workloads"]:
                held.setdefault(w["workload_id"], []).append(name)
            assert not [m for m in report["migrations"] if m["state"] in ("incoming", "outgoing")], name
        for h in (protected, plain, outgoing, incoming):
            assert held[h.workload] == [expected[h.workload]]
        assert not _failed_over(events)


async def test_a_retried_call_gets_its_recorded_outcome_through_move_restart_and_failover(node_procs, cluster_tls):
    node_procs.start("edge-1", "edge")
    edge2 = node_procs.start("edge-2", "edge")
    async with _connect(node_procs, cluster_tls) as c:
        h = await c.spawn(COUNTER, on="edge-1")
        await h.protect("checkpoint", interval_s=0.05, to="local")
        assert await h.call("incr", 5) == 5
        first = await _raw_call(c, "edge-1", h.workload, "retrier", 0, 100)
        assert first.values == (105,) and not first.replayed
        with trio.fail_after(20):  # a checkpoint that includes the raw call (not in the application's log)
            while c.protection(h.workload).checkpoint_index < first.index:
                await trio.sleep(0.02)

        async def retry(node: str) -> None:
            again = await _raw_call(c, node, h.workload, "retrier", 0, 100)
            assert again.replayed and again.values == (105,) and again.index == first.index, node

        await h.migrate("edge-2")
        await retry("edge-2")
        await _restart(edge2)
        await retry("edge-2")
        assert await h.call("incr", 1) == 106
        edge2.kill()
        assert await h.call("incr", 1) == 107  # failed over to local
        assert h.node == "local"
        await retry("local")
        await h.migrate("edge-1")
        await retry("edge-1")
        assert await h.call("get") == 107


async def test_standby_node_restarted_while_idle_then_owner_killed(node_procs, cluster_tls):
    """The standby's node restarts (SIGTERM) while no call feeds the standby; the feed starts over."""
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    async with _connect(node_procs, cluster_tls) as c:
        events = c.events()
        bench = await Bench.start(c, on="edge-1", mode="standby", to="cloud-1", interval_s=0.05)
        await bench.steps(6)
        await _restart(cloud)
        for h in (bench.kv, bench.counter):
            await _wait_for_standby(c, "cloud-1", "edge-1", h.workload)
        await bench.steps(2)
        await bench.kill_and_take_over(edge, events, "cloud-1", before=4, after=6)


async def test_a_move_off_the_standby_node_keeps_its_copy_as_the_standby(node_procs, cluster_tls):
    """The soak's lost workload: failed over to its standby node, moved off it, owner killed at once.

    The node that held the standby owned the workload, so it had no
    standby; the copy the move leaves there is one (exact at the commit),
    so the new owner is protected from its first call.  edge-2 dies if it
    ever starts a fresh standby copy: the kept one must make that needless.
    """
    node_procs.start("edge-1", "edge")
    node_procs.start("cloud-1", "cloud")
    edge2 = node_procs.start("edge-2", "edge", env={"MIGRATE_NODE_CRASH_AT": "standby:copying"})
    async with _connect(node_procs, cluster_tls) as c:
        events = c.events()
        bench = await Bench.start(c, on="edge-1", mode="standby", to="cloud-1", interval_s=0.1)
        await bench.steps(4)
        await bench.migrate("cloud-1")  # onto the standby node: it owns both now, with no standby
        await bench.steps(4)
        await bench.migrate("edge-2")
        for h in (bench.kv, bench.counter):
            copy = await _where(c, "cloud-1", h.workload)
            assert (copy.status, copy.standby, copy.epoch) == ("incoming", True, h.epoch + 1)
        await bench.kill_and_take_over(edge2, events, "cloud-1", before=4, after=6)
        assert await _owners(c, ["edge-1", "cloud-1"], bench.kv.workload) == ["cloud-1"]
