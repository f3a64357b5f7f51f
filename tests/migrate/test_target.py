"""The target side of a move: an incoming move that would pass a quota is refused before any chunk comes.

Real nodes: edge-1 holds the workload, cloud-1 is the target, with small
per-workload caps so that a second workload passes the target's tenant
budget (``--app-memory-bytes``) or its node-wide workload memory limit
(``--workloads-memory-bytes``).  The move fails cleanly: the workload stays
on its source with its state and keeps serving, and the target holds
nothing of it (no workload, no incoming record, nothing restored).
"""

from pathlib import Path

import pytest
import trio

import migrate
import snapshot
import workloads
from migrate._messages import MAbort, MChunk, MIncoming, MLocate
from migrate.wire import MigrationCode
from nodes import Host, RemoteNodeError

pytestmark = pytest.mark.trio

MiB = 2**20
COUNTER = workloads.load("counter")


async def refused_move(c, app=""):
    """Spawn a counter on edge-1, count to 5, and have its move to cloud-1 refused: (handle, the refusal)."""
    h = await c.spawn(COUNTER, on="edge-1", app=app)
    for _ in range(5):
        await h.call("incr", 1)
    with trio.fail_after(60):
        with pytest.raises(migrate.MigrationFailed) as refused:
            await h.migrate("cloud-1", strategy="precopy")
    return h, refused.value


@pytest.mark.parametrize(("limit", "flag", "neighbour_app"), [
    ("app_memory_bytes", "--app-memory-bytes", "shop/other"),  # the same tenant's budget
    ("workloads_memory_bytes", "--workloads-memory-bytes", "someone-else"),  # every tenant's
])
async def test_a_move_over_the_targets_limit_is_refused_before_any_chunk(edge_and_cloud, limit, flag,
                                                                         neighbour_app):
    args = ["--workload-memory-bytes", str(16 * MiB), flag, str(20 * MiB)]
    async with edge_and_cloud(args=args) as (edge, cloud, c):
        neighbour = await c.spawn(COUNTER, on="cloud-1", app=neighbour_app)  # 16 MiB of 20 reserved there
        h, refused = await refused_move(c, app="shop/cart")
        assert f"{limit} exceeded: {32 * MiB} requested, {20 * MiB} allowed" in str(refused)

        # the workload stays on its source, with its state, and keeps serving
        assert h.node == "edge-1"
        assert await h.call("get") == 5
        assert await h.call("incr", 1) == 6
        # the target holds nothing of it, and received nothing
        target = await c.client(c.address_of("cloud-1"))
        status = await target.status()
        assert [w.workload_id for w in status.workloads] == [neighbour.workload]
        assert [m for m in status.migrations if m["workload"] == h.workload] == []
        assert (await target.request(MLocate, workload=h.workload)).status == "unknown"
        assert not [line for line in cloud.log_lines() if line.get("workload") == h.workload]
        [aborted] = (await (await c.client(c.address_of("edge-1"))).status()).migrations
        assert (aborted["workload"], aborted["state"], aborted["app"]) == (h.workload, "aborted", "shop/cart")
        assert limit in aborted["reason"]

        # with room made, the same move goes through
        await neighbour.remove()
        await h.migrate("cloud-1", strategy="precopy")
        assert h.node == "cloud-1" and await h.call("get") == 6
        assert [line for line in cloud.log_lines() if line.get("workload") == h.workload]  # now it logs it


async def test_an_oversized_move_is_refused_in_its_first_message(node_procs, cluster_tls):
    """cloud-1 caps each workload at 16 MiB; the workload on edge-1 has edge-1's 64 MiB cap, which travels.

    cloud-1 refuses in MIncoming, the move's first message: neither the
    module nor any chunk reaches it, and the workload serves on at its
    source, each call counted once.
    """
    edge = node_procs.start("edge-1", "edge", args=["--workload-memory-bytes", str(64 * MiB)])
    cloud = node_procs.start("cloud-1", "cloud", args=["--workload-memory-bytes", str(16 * MiB)])
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h, refused = await refused_move(c)
        assert f"memory_bytes exceeded: {64 * MiB} requested, {16 * MiB} allowed" in str(refused)
        assert h.node == "edge-1"
        assert await h.call("incr", 1) == 6 and await h.call("get") == 6
        counters = (await (await c.client(c.address_of("cloud-1"))).status()).counters
        assert counters.get("copy_chunks_received", 0) == 0
        assert counters.get("modules_received", 0) == 0  # refused before the module was sent

        # a target with room gets the module after its first answer, then the copy
        roomy = node_procs.start("cloud-2", "cloud", args=["--workload-memory-bytes", str(64 * MiB)])
        await c.client(str(roomy.address))
        await h.migrate("cloud-2", strategy="precopy")
        assert h.node == "cloud-2" and await h.call("incr", 1) == 7
        counters = (await (await c.client(str(roomy.address))).status()).counters
        assert counters["modules_received"] == 1 and counters["copy_chunks_received"] >= 1


async def test_a_first_round_that_goes_bad_midway_leaves_nothing_and_frees_its_id(edge_and_cloud, tmp_path):
    """A first round is decoded into an unpublished workload as its chunks arrive (``Host.restore_fed``).

    A chunk that does not decode drops the copy and gives that workload up:
    nothing is listed, and a new copy under the same id is received whole
    (a leaked claim would refuse it: the id would still be taken).  So does
    a copy aborted or replaced halfway.  A real move to the same node then
    lands.
    """
    with Host(tmp_path / "local") as local:
        sha = local.add_module(COUNTER)
        local.deploy(sha, workload_id="ghost")
        for _ in range(7):
            local.call("ghost", "incr", [1])
        data = b"".join(snapshot.SnapshotEncoder(batch_pages=1).encode(local.checkpoint("ghost")))
    pieces = [data[i:i + 64] for i in range(0, len(data), 64)]
    assert len(pieces) >= 4
    bad = bytearray(pieces[-2])
    bad[10] ^= 0xFF
    async with edge_and_cloud() as (edge, cloud, c):
        target = await c.client(c.address_of("cloud-1"))
        await target.ensure_module(COUNTER)

        async def offer(epoch, chunks):
            await target.request(MIncoming, workload="ghost", module_sha256=sha, app="counter", epoch=epoch,
                                 source="edge-1")
            for seq, piece in enumerate(chunks):
                await target.request(MChunk, workload="ghost", epoch=epoch, data=piece, seq=seq)

        with pytest.raises(RemoteNodeError, match="bad snapshot stream") as refused:
            await offer(50, [*pieces[:-2], bytes(bad), pieces[-1]])
        assert refused.value.code == MigrationCode.MIGRATION_FAILED
        status = await target.status()
        assert not status.workloads and [m for m in status.migrations if m["workload"] == "ghost"] == []
        await offer(51, pieces)  # the whole round, under the same id: received
        assert (await target.request(MLocate, workload="ghost")).status != "unknown"
        await target.request(MAbort, workload="ghost", epoch=51)
        # a copy aborted, or replaced by a newer one, halfway through its first round frees the id too
        await offer(52, pieces[:2])
        await target.request(MAbort, workload="ghost", epoch=52)
        await offer(53, pieces[:2])
        await offer(54, pieces)
        await target.request(MAbort, workload="ghost", epoch=54)
        assert not (await target.status()).workloads

        h = await c.spawn(COUNTER, on="edge-1")
        await h.call("incr", 4)
        with trio.fail_after(60):
            await h.migrate("cloud-1", strategy="precopy")
        assert h.node == "cloud-1" and await h.call("get") == 4


def _threads(pid: int) -> list[str]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append((task / "comm").read_text().strip())
        except OSError:
            continue
    return out


@pytest.mark.parametrize("strategy, on_bulk", [("stop-copy", False), ("precopy", True)])
async def test_a_first_round_that_comes_while_the_workload_runs_is_decoded_at_the_bulk_priority(
        edge_and_cloud, strategy, on_bulk):
    """The target decodes a first round on its bulk thread (nice 10) when calls do not wait for it.

    Pre-copy and dual send the first round while the workload serves calls
    at the source, and the target's decoding competes with those calls
    for the CPU.  A stop-copy round is the frozen one: calls wait for it,
    and it keeps the usual priority.  A fresh target has no bulk thread
    until a job needs it.
    """
    async with edge_and_cloud() as (edge, cloud, c):
        h = await c.spawn(workloads.load("dirtier"), on="edge-1")
        await h.call("dt_init", 4)
        assert "wm-bulk" not in _threads(cloud.pid)
        with trio.fail_after(60):
            await h.migrate("cloud-1", strategy=strategy)
        assert h.node == "cloud-1"
        assert ("wm-bulk" in _threads(cloud.pid)) is on_bulk
