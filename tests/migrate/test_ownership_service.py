"""The ownership table at work in real nodes: the behaviour it changed, each pinned down.

A move that fails before the target was asked to commit leaves the
source's epoch as it was; one that fails after it fences the source
above the move's epoch (the target may have committed unseen).  (An
MIncoming for a workload moving away, refused MIGRATION_BUSY: in
test_crash_findings.)
"""

import pytest
import migrate
import workloads
from migrate._messages import MLocate

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
