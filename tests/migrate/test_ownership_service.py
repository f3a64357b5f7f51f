"""The ownership table at work in real nodes: the behaviour it changed, each pinned down.

* A move that fails before the target was asked to commit leaves the
  source's epoch as it was; one that fails after it fences the source
  above the move's epoch (the target may have committed unseen).
* An MIncoming for a workload this node is moving away is refused with
  MIGRATION_BUSY (it used to be accepted, dropping the workload from the
  node's owned table in the middle of the move).
"""

import pytest
import trio

import migrate
import workloads
from migrate._messages import MCheckpoint, MIncoming, MLocate
from migrate.wire import MigrationCode
from nodes import RemoteNodeError

pytestmark = pytest.mark.trio


@pytest.mark.parametrize(("phase", "epoch"), [("target:chunk", 1), ("target:before-commit", 3)])
async def test_an_aborted_move_fences_the_source_only_once_the_commit_was_asked(node_procs, cluster_tls,
                                                                               phase, epoch):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", env={"MIGRATE_NODE_CRASH_AT": phase})
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        assert await h.call("incr", 1) == 1
        with pytest.raises(migrate.MigrationFailed, match="aborted"):
            await h.migrate("cloud-1", strategy="precopy")
        assert cloud.proc.wait(timeout=10) == 137
        client = await edge.client(tls)
        try:
            where = await client.request(MLocate, workload=h.workload)
        finally:
            await client.aclose()
        assert (where.status, where.epoch) == ("owner", epoch)
        assert await h.call("incr", 1) == 2


async def test_a_copy_offered_for_a_workload_being_moved_away_is_refused_busy(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_PAUSE_AT": "source:frozen",
                                                    "MIGRATE_NODE_PAUSE_S": "1"})
    cloud = node_procs.start("cloud-1", "cloud")
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        assert await h.call("incr", 1) == 1
        client = await edge.client(tls)
        try:
            meta = await client.request(MCheckpoint, workload=h.workload)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(h.migrate, "cloud-1")
                await edge.wait_for_log("paused at source:frozen")
                with pytest.raises(RemoteNodeError) as info:
                    await client.request(MIncoming, workload=h.workload, module_sha256=meta.module_sha256,
                                         app=meta.app, epoch=10, source="cloud-1")
            assert info.value.code == MigrationCode.MIGRATION_BUSY
        finally:
            await client.aclose()
        assert h.node == "cloud-1"
        assert await h.call("incr", 1) == 2
