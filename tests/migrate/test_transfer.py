"""Pipelined checkpoint transfer with real nodes: parts and chunks in flight, served in any order.

The application asks for several checkpoint parts at once and sends
several failover chunks at once (``_chunks.WINDOW_PIECES``); the node
serves one connection's requests concurrently, so the owner must hand out
each part once whatever order it serves them in, and the target must
apply chunks in the order of their numbers whatever order they reach it.
These tests send requests out of order on purpose, refuse parts
mid-stream, and check that nothing is applied twice or out of order and
that a failed fetch keeps the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import trio

import migrate
import snapshot
import workloads
from migrate import _chunks
from migrate import _protect
from migrate._ledger import CallLedger
from migrate._messages import MAlign, MCheckpoint, MCheckpointPart, MChunk, MCommit, MIncoming
from migrate._state import MAX_CHUNKS_AHEAD, MAX_PARTS_AHEAD
from nodes import NodeError
from nodes import _host_errors as he
from nodes._messages import ReadMemory, Remove

from moves import interrupted_move

#: Frames of 256 KiB make a few MiB of random memory travel in dozens of parts.
SMALL_FRAMES = ["--max-frame-bytes", str(256 * 1024)]
BLOB_BYTES = 4 * 2**20


def _connect(node_procs, cluster_tls):
    return migrate.connect(*(str(n.address) for n in node_procs.nodes), tls=cluster_tls.issue("app-1", "node"))


async def _workload_with_blob(c, on: str):
    """A kvstore on ``on`` holding BLOB_BYTES of random bytes; returns (handle, address, blob)."""
    h = await c.spawn(workloads.load("kvstore"), on=on)
    blob = os.urandom(BLOB_BYTES)
    ptr = await h.call("wm_alloc", len(blob))
    for off in range(0, len(blob), 128 * 1024):
        await h.write_memory(ptr + off, blob[off:off + 128 * 1024])
    return h, ptr, blob


@contextlib.asynccontextmanager
async def _checkpoint_on_edge(node_procs, cluster_tls):
    """edge-1 with small frames and a kvstore there holding a blob; a checkpoint of it taken over a raw client.

    Yields (handle, blob address, blob, client, the checkpoint's reply with its token).
    """
    node_procs.start("edge-1", "edge", args=SMALL_FRAMES)
    async with _connect(node_procs, cluster_tls) as c:
        h, ptr, blob = await _workload_with_blob(c, "edge-1")
        client = await c.client(h._address)
        yield h, ptr, blob, client, await client.request(MCheckpoint, workload=h.workload)


def _decodes_to(parts: list[bytes], ptr: int, blob: bytes) -> bool:
    """True if ``parts`` joined are one complete snapshot whose memory holds ``blob`` at ``ptr``."""
    decoder, assembler = snapshot.SnapshotDecoder(), snapshot.SnapshotAssembler()
    for part in parts:
        decoder.feed(part)
        while (event := decoder.next_event()) is not None:
            assembler.add(event)
    assert assembler.complete
    memory = bytearray(assembler.snapshot().memories[0].size_bytes)
    for run in assembler.snapshot().memories[0].runs:
        memory[run.first_page * snapshot.PAGE_BYTES:run.end_page * snapshot.PAGE_BYTES] = run.data
    return bytes(memory[ptr:ptr + len(blob)]) == blob


async def test_parts_asked_for_out_of_order_are_each_served_once(node_procs, cluster_tls):
    async with _checkpoint_on_edge(node_procs, cluster_tls) as (h, ptr, blob, client, meta):

        async def part(n: int):
            return await client.send_request(MCheckpointPart, workload=h.workload, token=meta.token, part=n)

        parts: dict[int, bytes] = {}
        last = None
        base = 0
        while last is None:  # 8 at a time, each group asked for in reverse order
            pending = {n: await part(n) for n in reversed(range(base, base + 8))}
            replies = {n: await reply.reply() for n, reply in pending.items()}
            for n in sorted(replies):
                if last is not None:
                    assert replies[n].data == b"" and replies[n].last, "a part past the end carries data"
                    continue
                parts[n] = replies[n].data
                if replies[n].last:
                    last = n
            base += 8
        # every part of the stream arrived, none twice, and they decode to the workload's memory
        assert sorted(parts) == list(range(last + 1))
        assert len(parts) > _chunks.WINDOW_PIECES
        assert all(parts[n] for n in parts)
        assert _decodes_to([parts[n] for n in range(last + 1)], ptr, blob)
        # a part past the end keeps saying so; a part fetched already is refused
        assert (await client.request(MCheckpointPart, workload=h.workload, token=meta.token, part=last + 3)).last
        with pytest.raises(he.RequestError, match="fetched already|holds no checkpoint"):
            await client.request(MCheckpointPart, workload=h.workload, token=meta.token, part=0)


async def test_parts_too_far_ahead_or_of_a_replaced_checkpoint_are_refused(node_procs, cluster_tls):
    async with _checkpoint_on_edge(node_procs, cluster_tls) as (h, ptr, blob, client, meta):
        with pytest.raises(he.RequestError, match="parts past the 0 fetched"):
            await client.request(MCheckpointPart, workload=h.workload, token=meta.token, part=MAX_PARTS_AHEAD + 1)
        first = await client.request(MCheckpointPart, workload=h.workload, token=meta.token, part=0)
        assert first.data and not first.last
        for _ in range(2):  # two newer checkpoints replace it mid-stream
            await client.request(MCheckpoint, workload=h.workload)
        with pytest.raises(he.RequestError, match="holds no checkpoint"):
            await client.request(MCheckpointPart, workload=h.workload, token=meta.token, part=1)


async def test_chunks_sent_out_of_order_are_applied_in_order(node_procs, cluster_tls):
    """A failover by hand to edge-2, its chunks put on the wire in scrambled order: the copy is exact."""
    node_procs.start("edge-1", "edge", args=SMALL_FRAMES)
    node_procs.start("edge-2", "edge", args=SMALL_FRAMES)
    async with _connect(node_procs, cluster_tls) as c:
        h, ptr, blob = await _workload_with_blob(c, "edge-1")
        await h.protect("checkpoint", interval_s=3600, to="local")
        ckpt = c._protectors[h.workload].checkpoint
        target = await c.client(c.address_of("edge-2"))
        await target.ensure_module(workloads.load("kvstore"))
        epoch = ckpt.epoch + 1
        await target.request(MIncoming, workload="copy-1", module_sha256=ckpt.meta.module_sha256, app="default",
                             epoch=epoch, source="test")
        chunks = list(_chunks.recut(ckpt.parts, _chunks.chunk_bytes(target.peer_max_frame_bytes)))
        assert len(chunks) > _chunks.WINDOW_PIECES
        # Each group of 8 on the wire in reverse order: the target must wait for the earlier ones.
        order = [n for base in range(0, len(chunks), 8) for n in reversed(range(base, min(base + 8, len(chunks))))]
        pending = [await target.send_request(MChunk, workload="copy-1", epoch=epoch, data=chunks[n], seq=n)
                   for n in order]
        for reply in pending:
            await reply.reply()
        # a chunk already applied, or too far ahead, is refused and changes nothing
        with pytest.raises(he.RequestError, match="out of turn"):
            await target.request(MChunk, workload="copy-1", epoch=epoch, data=chunks[0], seq=0)
        with pytest.raises(he.RequestError, match="out of turn"):
            await target.request(MChunk, workload="copy-1", epoch=epoch, data=chunks[0],
                                 seq=len(chunks) + MAX_CHUNKS_AHEAD + 1)
        await target.request(MAlign, workload="copy-1", epoch=epoch, calls=ckpt.meta.calls, index=ckpt.index)
        await target.request(MCommit, workload="copy-1", epoch=epoch, ledger=ckpt.meta.ledger,
                             calls=ckpt.meta.calls, index=ckpt.index)
        assert (await target.request(ReadMemory, workload="copy-1", offset=ptr, length=len(blob))).data == blob


async def test_a_stream_that_does_not_decode_drops_the_copy(node_procs, cluster_tls):
    node_procs.start("edge-1", "edge")
    async with _connect(node_procs, cluster_tls) as c:
        target = await c.client(c.address_of("edge-1"))
        sha = await target.ensure_module(workloads.load("kvstore"))
        await target.request(MIncoming, workload="copy-1", module_sha256=sha, app="default", epoch=1, source="test")
        with pytest.raises(NodeError, match="bad snapshot stream"):
            await _chunks.send(target, [b"not a snapshot" * 100, b"more"], workload="copy-1", epoch=1)
        with pytest.raises(NodeError, match="no incoming move"):
            await target.request(MChunk, workload="copy-1", epoch=1, data=b"x", seq=2)


async def test_a_commit_whose_copy_is_dropped_while_it_waits_is_refused_as_a_moves(node_procs, cluster_tls):
    """A commit carrying the final round's last piece waits for the chunk before it; that chunk does not
    decode, which drops the copy, so the commit is refused: for an incoming move, not a standby copy
    (an MCommit's ``standby`` names the node the new owner would feed)."""
    node_procs.start("edge-1", "edge")
    async with _connect(node_procs, cluster_tls) as c:
        target = await c.client(c.address_of("edge-1"))
        sha = await target.ensure_module(workloads.load("kvstore"))
        await target.request(MIncoming, workload="copy-1", module_sha256=sha, app="default", epoch=1, source="test")
        commit = await target.send_request(MCommit, workload="copy-1", epoch=1, ledger=CallLedger().to_wire(),
                                           calls=0, data=b"the last piece", seq=1, standby="127.0.0.1:9")
        await target.ping()  # answered after the commit was served up to its wait for chunk 0
        with pytest.raises(NodeError, match="bad snapshot stream"):
            await target.request(MChunk, workload="copy-1", epoch=1, data=b"not a snapshot" * 100, seq=0)
        with pytest.raises(NodeError, match="no incoming move of copy-1 at epoch 1"):
            await commit.reply()


async def test_a_fetch_refused_mid_stream_keeps_the_previous_checkpoint(node_procs, cluster_tls, monkeypatch):
    edge1 = node_procs.start("edge-1", "edge", args=SMALL_FRAMES)
    async with _connect(node_procs, cluster_tls) as c:
        h, ptr, blob = await _workload_with_blob(c, "edge-1")
        await h.protect("checkpoint", interval_s=3600, to="local")
        protector = c._protectors[h.workload]
        held = protector.checkpoint
        assert len(held.parts) > 2 * _chunks.WINDOW_PIECES  # larger than the window
        await h.write_memory(ptr, b"logged after the checkpoint")
        # A checkpoint over the limit is refused after a few parts, with more in flight.
        monkeypatch.setattr(_protect, "MAX_CHECKPOINT_BYTES", 3 * 256 * 1024)
        with pytest.raises(_protect.FailoverFailed, match="exceeds"):
            await protector.take_checkpoint(protector.owner)
        assert protector.checkpoint is held and c.protection(h.workload).log_entries == 1
        monkeypatch.undo()
        # The connection still works: the dropped replies went nowhere.
        assert await h.read_memory(ptr, 27) == b"logged after the checkpoint"
        edge1.kill()
        assert await h.read_memory(ptr, len(blob)) == b"logged after the checkpoint" + blob[27:]
        assert h.node == "local"


async def test_a_failover_target_dying_mid_stream_fails_cleanly(node_procs, cluster_tls):
    edge1 = node_procs.start("edge-1", "edge", args=SMALL_FRAMES)
    node_procs.start("edge-2", "edge", args=SMALL_FRAMES, env={"MIGRATE_NODE_CRASH_AT": "target:chunk"})
    async with _connect(node_procs, cluster_tls) as c:
        h, ptr, blob = await _workload_with_blob(c, "edge-1")
        await h.protect("checkpoint", interval_s=3600, to="edge-2")
        held = c._protectors[h.workload].checkpoint
        edge1.kill()
        with pytest.raises(migrate.FailoverFailed, match="edge-2"):
            await h.call("kv_count")
        status = c.protection(h.workload)
        assert c._protectors[h.workload].checkpoint is held and status.failovers == 0


async def test_the_pipeline_stops_at_the_first_failed_reply(node_procs, cluster_tls):
    """Requests are sent in order, replies taken in order; the first error ends it and nothing more is sent."""
    node_procs.start("edge-1", "edge")
    async with _connect(node_procs, cluster_tls) as c:
        h = await c.spawn(workloads.load("counter"), on="edge-1")
        client = await c.client(h._address)
        seen = []
        asks = [(ReadMemory, {"workload": h.workload, "offset": 0, "length": 8}),
                (ReadMemory, {"workload": "no-such-workload", "offset": 0, "length": 8}),
                *[(ReadMemory, {"workload": h.workload, "offset": 0, "length": 8})] * 20]
        taken = iter(asks)
        with pytest.raises(he.UnknownWorkload):
            await client.pipeline(taken, window=4, on_reply=lambda reply: seen.append(reply) or False)
        assert len(seen) == 1
        # 4 sent, the 5th sent once the 1st was answered, the 6th taken but never sent
        assert len(list(taken)) == len(asks) - 6
        with trio.fail_after(10):
            assert (await client.request(ReadMemory, workload=h.workload, offset=0, length=8)).data


async def test_a_burst_written_just_before_the_freeze_goes_in_a_round_of_its_own(edge_and_cloud):
    """The source pauses after its last pre-copy round (``source:before-freeze``); the application writes
    4 MiB meanwhile.  The source sees the burst without taking it, sends it while the workload runs,
    and the frozen round carries only what came after: the state arrives exact."""
    env = {"MIGRATE_NODE_PAUSE_AT": "source:before-freeze", "MIGRATE_NODE_PAUSE_S": "3"}
    async with edge_and_cloud(edge_env=env) as (edge, cloud, cluster):
        h = await cluster.spawn(workloads.load("dirtier"), on="edge-1")
        assert await h.call("dt_init", 16) == 4096
        reports = []

        async def move() -> None:
            reports.append(await h.migrate("cloud-1", strategy="precopy"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(move)
            await edge.wait_for_log("paused at source:before-freeze")
            await h.call("dt_dirty", 1024, 7)  # served at the source, which waits to freeze
            expected = await h.call("dt_checksum")
        report = reports[0]
        assert h.node == "cloud-1" and await h.call("dt_checksum") == expected
        bursts = [note for note in report.notes if "one more round before the freeze" in note]
        assert len(bursts) == 1 and int(bursts[0].split()[0]) >= 1024  # the burst's pages, and others
        assert report.final_round_bytes < 64 * 1024  # the burst was sent before the freeze
        assert report.rounds == len(report.bytes_per_round) >= 4


async def test_a_workload_removed_while_its_live_first_round_is_sent_ends_the_move_with_the_node_serving(
        edge_and_cloud, cluster_tls):
    """The first round is read from the live memory while it is sent.  The target pauses at its first chunk
    (``target:chunk``), so the round is in flight when the application removes the workload at the source.
    The removal waits for the round (the memory is not freed under the encoder); the move then fails with a
    typed error, the workload is gone from both nodes, and the source serves on."""
    env = {"MIGRATE_NODE_PAUSE_AT": "target:chunk", "MIGRATE_NODE_PAUSE_S": "2"}
    async with edge_and_cloud(cloud_env=env) as (edge, cloud, cluster):
        h = await cluster.spawn(workloads.load("dirtier"), on="edge-1")
        await h.call("dt_init", 64)

        async def remove_at_the_source() -> None:
            client = await cluster.client(str(edge.address))
            await client.request(Remove, workload=h.workload)  # waits for the round, then removes

        failures = await interrupted_move(h, "cloud-1", cloud, remove_at_the_source)
        assert len(failures) == 1 and "it was removed from edge-1" in str(failures[0]), failures
        for node in (edge, cloud):
            peer = await cluster.client(str(node.address))
            assert h.workload not in [w.workload_id for w in (await peer.status()).workloads]
        other = await cluster.spawn(workloads.load("counter"), on="edge-1")
        assert await other.call("incr", 2) == 2
