"""Bugs the node fuzz campaign (``benchmarks.fuzz_node``) found in the migration handlers, pinned down with real nodes."""

import pytest

import migrate
import workloads
from migrate.wire import (MCheckpoint, MChunk, MCommit, MFollow, MIncoming, MLocate, MMigrate, chunk_bytes, fetch_parts,
                          recut)
from nodes import BadArguments

pytestmark = pytest.mark.trio

NOT_ADDRESSES = ["fuzz", "127.0.0.1:46'17", "127.0.0.1:99999", "é\u202e"]


async def _incoming_copy(edge_client, cloud_client, workload: str, epoch: int):
    """Give cloud a complete incoming move of ``workload`` (checkpointed on edge) at ``epoch``; return the checkpoint."""
    meta = await edge_client.request(MCheckpoint, workload=workload)
    parts = await fetch_parts(edge_client, workload, meta.token)
    settings = dict(meta.settings)
    await cloud_client.request(MIncoming, workload=workload, module_sha256=meta.module_sha256, app=meta.app,
                               epoch=epoch, source="edge-1", args=tuple(settings["args"]), env=settings["env"],
                               memory_limit_bytes=settings["memory_limit_bytes"])
    for seq, part in enumerate(recut(parts, chunk_bytes(cloud_client.peer_max_frame_bytes))):
        await cloud_client.request(MChunk, workload=workload, epoch=epoch, data=part, seq=seq)
    return meta


async def test_an_address_field_that_is_no_address_is_bad_arguments_and_changes_nothing(node_procs, cluster_tls):
    """``m_migrate``'s target, ``m_follow``'s and ``m_commit``'s standby were parsed with no handling.

    The node answered ``internal`` (a ConfigError escaped the handler), and
    ``m_commit`` parsed its standby after taking ownership: the commit was
    half applied.  Now each is ``bad_arguments`` before anything changes.
    """
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls, local=False) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        assert await h.call("incr", 5) == 5
        async with await edge.client(tls) as edge_client, await cloud.client(tls) as cloud_client:
            await cloud_client.ensure_module(workloads.load("counter"))
            for text in NOT_ADDRESSES:
                with pytest.raises(BadArguments, match="not a node address"):
                    await edge_client.request(MMigrate, workload=h.workload, target=text)
                with pytest.raises(BadArguments, match="not a node address"):
                    await edge_client.request(MFollow, workload=h.workload, standby=text)
            assert (await edge_client.request(MLocate, workload=h.workload)).status == "owner"
            assert await h.call("incr", 1) == 6

            meta = await _incoming_copy(edge_client, cloud_client, h.workload, epoch=7)
            for text in NOT_ADDRESSES:
                with pytest.raises(BadArguments, match="not a node address"):
                    await cloud_client.request(MCommit, workload=h.workload, epoch=7, ledger=meta.ledger,
                                               calls=meta.calls, index=meta.index, standby=text)
            where = await cloud_client.request(MLocate, workload=h.workload)
            assert (where.status, where.epoch) == ("incoming", 7)  # not committed, not half taken over
            committed = await cloud_client.request(MCommit, workload=h.workload, epoch=7, ledger=meta.ledger,
                                                   calls=meta.calls, index=meta.index)
            assert committed.epoch == 7
            assert (await cloud_client.request(MLocate, workload=h.workload)).status == "owner"
