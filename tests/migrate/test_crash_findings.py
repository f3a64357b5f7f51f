"""Bugs the crash matrix found, each pinned down on its own with real nodes."""

import pytest
import trio

import migrate
import workloads
from migrate._messages import MCheckpoint
from nodes import RemoteNodeError
from nodes._messages import ErrorCode

pytestmark = pytest.mark.trio


async def test_a_checkpoint_request_queued_behind_a_commit_is_told_the_workload_moved(node_procs, cluster_tls):
    """The request waits for the frozen final round; by the time it runs the workload has left.

    The node must answer NOT_OWNER (a handle then looks for the new owner),
    not UnknownWorkload from checkpointing a workload it already removed.
    """
    edge = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_PAUSE_AT": "source:frozen",
                                                    "MIGRATE_NODE_PAUSE_S": "1"})
    cloud = node_procs.start("cloud-1", "cloud")
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        assert await h.call("incr", 1) == 1
        client = await edge.client(tls)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(h.migrate, "cloud-1")
                await edge.wait_for_log("paused at source:frozen")
                with pytest.raises(RemoteNodeError) as info:
                    await client.request(MCheckpoint, workload=h.workload)
            assert info.value.code == ErrorCode.NOT_OWNER
        finally:
            await client.aclose()
        assert h.node == "cloud-1"
        assert await h.call("incr", 1) == 2


async def test_a_checkpoint_that_fails_on_the_node_does_not_end_the_application(node_procs, cluster_tls):
    """Protection fetches checkpoints in the background; one refused must not take the cluster down."""
    edge = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_PAUSE_AT": "source:frozen",
                                                    "MIGRATE_NODE_PAUSE_S": "1"})
    cloud = node_procs.start("cloud-1", "cloud")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("checkpoint", interval_s=0.05, to="local")
        assert await h.call("incr", 1) == 1
        await h.migrate("cloud-1")  # the protector's checkpoint requests queue behind the paused final round
        await trio.sleep(0.3)  # and more of them run at the new owner
        assert await h.call("incr", 1) == 2


async def test_memory_writes_since_the_last_checkpoint_survive_a_failover(node_procs, cluster_tls):
    """A failover replays the logged operations; a logged write must carry the bytes it wrote."""
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("checkpoint", interval_s=3600, to="local")  # only the first checkpoint
        ptr = await h.call("wm_alloc", 64)
        await h.write_memory(ptr, b"written after the checkpoint")
        edge.kill()
        assert await h.read_memory(ptr, 28) == b"written after the checkpoint"
        assert h.node == "local"


async def test_a_hot_standby_follows_memory_writes_and_takes_over_with_them(node_procs, cluster_tls):
    """The standby replays each logged write; the write's bytes are not its result, so no divergence."""
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("standby", interval_s=0.05, to="local")
        ptr = await h.call("wm_alloc", 64)
        await h.write_memory(ptr, b"followed by the standby")
        assert await h.call("incr", 1) == 1
        await trio.sleep(0.3)  # the owner forwards without waiting; let the standby catch up
        edge.kill()
        assert await h.read_memory(ptr, 23) == b"followed by the standby"
        assert await h.call("incr", 1) == 2
        assert h.node == "local"


async def test_a_standby_on_a_node_the_workload_once_left_can_be_promoted(node_procs, cluster_tls):
    """The node keeps a tombstone of the workload that left it; a standby placed there later must win over it."""
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on="local")
        await h.protect("standby", interval_s=0.05, to="local")
        assert await h.call("incr", 1) == 1
        await h.migrate("edge-1")  # local keeps a tombstone; edge-1 now feeds a standby on local
        assert await h.call("incr", 1) == 2
        await trio.sleep(0.3)
        edge.kill()
        assert await h.call("incr", 1) == 3
        assert h.node == "local"


async def test_a_new_owner_dying_while_it_copies_the_standby_anew_loses_nothing(node_procs, cluster_tls):
    """After a move the new owner sends the standby a fresh copy; until it is aligned the old one must serve.

    cloud-1 dies right after the move commits, while its fresh standby copy
    is announced but not sent (MIGRATE_NODE_CRASH_AT=standby:copying).  The
    application had trimmed its log to what the old standby held, so the
    standby must still be able to take over from there.
    """
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", env={"MIGRATE_NODE_CRASH_AT": "standby:copying"})
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("standby", interval_s=0.05, to="local")
        for value in range(1, 6):
            assert await h.call("incr", 1) == value
        await trio.sleep(0.3)  # the standby replayed them; the application trimmed its log
        await h.migrate("cloud-1")
        assert cloud.proc.wait(timeout=30) == 137
        assert await h.call("incr", 1) == 6
        assert h.node == "local"
