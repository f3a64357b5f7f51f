"""Bugs the crash matrix found, each pinned down on its own with real nodes."""

import contextlib
import hashlib

import pytest
import trio

import migrate
import workloads
from migrate._chunks import chunk_bytes, recut
from migrate._messages import MAbort, MAlign, MCheckpoint, MCheckpointPart, MChunk, MIncoming, MLocate
from migrate.wire import MigrationCode
from nodes import NodeClient, RemoteNodeError

pytestmark = pytest.mark.trio


@contextlib.asynccontextmanager
async def _protected_counter(node_procs, cluster_tls, mode: str, interval_s: float, *, on: str = "edge-1"):
    """edge-1 and an application connected to it, with a counter protected by ``mode`` to the local node.

    The counter is spawned on node ``on``; yields edge-1's process and the counter's handle.
    """
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(workloads.load("counter"), on=on)
        await h.protect(mode, interval_s=interval_s, to="local")
        yield edge, h


@contextlib.asynccontextmanager
async def _paused_move(node_procs, cluster_tls):
    """A counter moving edge-1 -> cloud-1, edge-1 paused 1 s at source:frozen; yields (handle, edge-1 client).

    The body runs while the source is paused; afterwards the move has
    ended on cloud-1 and a call there counts on from 1.
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
                yield h, client
        finally:
            await client.aclose()
        assert h.node == "cloud-1"
        assert await h.call("incr", 1) == 2


async def test_a_checkpoint_request_queued_behind_a_commit_is_told_the_workload_moved(node_procs, cluster_tls):
    """The request waits for the frozen final round; by the time it runs the workload has left.

    The node must answer NOT_OWNER (a handle then looks for the new owner),
    not UnknownWorkload from checkpointing a workload it already removed.
    """
    async with _paused_move(node_procs, cluster_tls) as (h, client):
        with pytest.raises(RemoteNodeError) as info:
            await client.request(MCheckpoint, workload=h.workload)
    assert info.value.code == MigrationCode.NOT_OWNER


async def test_a_copy_offered_for_a_workload_being_moved_away_is_refused_busy(node_procs, cluster_tls):
    """An MIncoming for a workload the node is moving away is refused MIGRATION_BUSY by the ownership table.

    It used to be accepted, dropping the workload from the owned table in
    the middle of its move.
    """
    async with _paused_move(node_procs, cluster_tls) as (h, client):
        with pytest.raises(RemoteNodeError) as info:
            await client.request(MIncoming, workload=h.workload, app="counter", epoch=10, source="cloud-1",
                                 module_sha256=hashlib.sha256(workloads.load("counter")).hexdigest())
    assert info.value.code == MigrationCode.MIGRATION_BUSY


async def test_a_checkpoint_that_fails_on_the_node_does_not_end_the_application(edge_and_cloud):
    """Protection fetches checkpoints in the background; one refused must not take the cluster down."""
    pause = {"MIGRATE_NODE_PAUSE_AT": "source:frozen", "MIGRATE_NODE_PAUSE_S": "1"}
    async with edge_and_cloud(edge_env=pause) as (edge, cloud, c):
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("checkpoint", interval_s=0.05, to="local")
        assert await h.call("incr", 1) == 1
        await h.migrate("cloud-1")  # the protector's checkpoint requests queue behind the paused final round
        await trio.sleep(0.3)  # and more of them run at the new owner
        assert await h.call("incr", 1) == 2


async def test_memory_writes_since_the_last_checkpoint_survive_a_failover(node_procs, cluster_tls):
    """A failover replays the logged operations; a logged write must carry the bytes it wrote."""
    # interval 3600 s: only the first checkpoint
    async with _protected_counter(node_procs, cluster_tls, "checkpoint", 3600) as (edge, h):
        ptr = await h.call("wm_alloc", 64)
        await h.write_memory(ptr, b"written after the checkpoint")
        edge.kill()
        assert await h.read_memory(ptr, 28) == b"written after the checkpoint"
        assert h.node == "local"


async def test_a_hot_standby_follows_memory_writes_and_takes_over_with_them(node_procs, cluster_tls):
    """The standby replays each logged write; the write's bytes are not its result, so no divergence."""
    async with _protected_counter(node_procs, cluster_tls, "standby", 0.05) as (edge, h):
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
    async with _protected_counter(node_procs, cluster_tls, "standby", 0.05, on="local") as (edge, h):
        assert await h.call("incr", 1) == 1
        await h.migrate("edge-1")  # local keeps a tombstone; edge-1 now feeds a standby on local
        assert await h.call("incr", 1) == 2
        await trio.sleep(0.3)
        edge.kill()
        assert await h.call("incr", 1) == 3
        assert h.node == "local"


async def test_a_new_owner_dying_while_it_copies_the_standby_anew_loses_nothing(edge_and_cloud):
    """After a move the new owner sends the standby a fresh copy; until it is aligned the old one must serve.

    cloud-1 dies right after the move commits, while its fresh standby copy
    is announced but not sent (MIGRATE_NODE_CRASH_AT=standby:copying).  The
    application had trimmed its log to what the old standby held, so the
    standby must still be able to take over from there.
    """
    async with edge_and_cloud(cloud_env={"MIGRATE_NODE_CRASH_AT": "standby:copying"}) as (edge, cloud, c):
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("standby", interval_s=0.05, to="local")
        for value in range(1, 6):
            assert await h.call("incr", 1) == value
        await trio.sleep(0.3)  # the standby replayed them; the application trimmed its log
        await h.migrate("cloud-1")
        assert cloud.proc.wait(timeout=30) == 137
        assert await h.call("incr", 1) == 6
        assert h.node == "local"


async def _standby_at(client, workload: str) -> tuple:
    """(status, standby, epoch, index) of ``workload`` on ``client``'s node."""
    where = await client.request(MLocate, workload=workload)
    return where.status, where.standby, where.epoch, where.index


async def _send_staging_copy(client, edge_client, workload: str, epoch: int) -> None:
    """Send ``client``'s node a new standby copy of ``workload`` at ``epoch``, as a new owner would, unaligned."""
    meta = await edge_client.request(MCheckpoint, workload=workload)
    parts, last = [], False
    while not last:
        piece = await edge_client.request(MCheckpointPart, workload=workload, token=meta.token, part=len(parts))
        parts.append(piece.data)
        last = piece.last
    settings = dict(meta.settings)
    await client.request(MIncoming, workload=workload, module_sha256=meta.module_sha256, app=meta.app,
                         epoch=epoch, source="edge-1", standby=True, args=tuple(settings["args"]),
                         env=settings["env"], memory_limit_bytes=settings["memory_limit_bytes"])
    for seq, part in enumerate(recut(parts, chunk_bytes(client.peer_max_frame_bytes))):
        await client.request(MChunk, workload=workload, epoch=epoch, data=part, seq=seq, standby=True)
    return meta


async def test_a_new_standby_copy_stays_staged_until_aligned_and_never_outlives_a_restart(node_procs, cluster_tls):
    """A copy being received under a staging id leaves the aligned standby in place.

    MLocate reports the standby that can be promoted; MAbort drops only the
    staged copy; MAlign puts the staged copy in its place; and SIGTERM's
    checkpoint leaves a staged copy out (it is no workload of its own).
    """
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        await h.protect("standby", interval_s=3600, to="cloud-1")
        for value in range(1, 4):
            assert await h.call("incr", 1) == value
        edge_client, client = await edge.client(tls), await cloud.client(tls)
        try:
            await client.ensure_module(workloads.load("counter"))
            with trio.fail_after(10):
                while (before := await _standby_at(client, h.workload))[3] < 3:
                    await trio.sleep(0.05)
            epoch = before[2]
            ids = {w.workload_id for w in await client.workloads()}

            # Staged, then aborted: the standby is untouched.
            await _send_staging_copy(client, edge_client, h.workload, epoch + 5)
            staged = {w.workload_id for w in await client.workloads()} - ids
            assert len(staged) == 1 and await _standby_at(client, h.workload) == before
            await client.request(MAbort, workload=h.workload, epoch=epoch + 5, standby=True)
            assert {w.workload_id for w in await client.workloads()} == ids
            assert await _standby_at(client, h.workload) == before

            # Staged, then aligned: it takes the standby's place.
            meta = await _send_staging_copy(client, edge_client, h.workload, epoch + 6)
            assert await _standby_at(client, h.workload) == before
            await client.request(MAlign, workload=h.workload, epoch=epoch + 6, calls=meta.calls,
                                 index=meta.index, ledger=meta.ledger, monotonic_ns=meta.monotonic_ns,
                                 standby=True)
            assert await _standby_at(client, h.workload) == ("incoming", True, epoch + 6, meta.index)
            assert {w.workload_id for w in await client.workloads()} == ids

            # Staged at SIGTERM: neither copy comes back.
            await _send_staging_copy(client, edge_client, h.workload, epoch + 7)
            staged = {w.workload_id for w in await client.workloads()} - ids
        finally:
            await client.aclose()
            await edge_client.aclose()
        assert await trio.to_thread.run_sync(cloud.terminate) == 0
        skipped = {line.get("workload") for line in cloud.log_lines()
                   if line.get("msg") == "not checkpointed: this node does not own it"}
        assert skipped >= staged | {h.workload}
        await trio.to_thread.run_sync(cloud.restart)
        async with await NodeClient.connect(cloud.address, tls=tls) as client:
            assert [w.workload_id for w in await client.workloads()] == []
