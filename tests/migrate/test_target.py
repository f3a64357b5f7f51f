"""The target side of a move: an incoming move that would pass a quota is refused before any chunk comes.

Real nodes: edge-1 holds the workload, cloud-1 is the target, with small
per-workload caps so that a second workload passes the target's tenant
budget (``--app-memory-bytes``) or its node-wide workload memory limit
(``--workloads-memory-bytes``).  The move fails cleanly: the workload stays
on its source with its state and keeps serving, and the target holds
nothing of it (no workload, no incoming record, nothing restored).
"""

import pytest
import trio

import migrate
import workloads
from migrate._messages import MLocate

pytestmark = pytest.mark.trio

MiB = 2**20
COUNTER = workloads.load("counter")


@pytest.mark.parametrize(("limit", "flag", "neighbour_app"), [
    ("app_memory_bytes", "--app-memory-bytes", "shop/other"),  # the same tenant's budget
    ("workloads_memory_bytes", "--workloads-memory-bytes", "someone-else"),  # every tenant's
])
async def test_a_move_over_the_targets_limit_is_refused_before_any_chunk(edge_and_cloud, limit, flag,
                                                                         neighbour_app):
    args = ["--workload-memory-bytes", str(16 * MiB), flag, str(20 * MiB)]
    async with edge_and_cloud(args=args) as (edge, cloud, c):
        neighbour = await c.spawn(COUNTER, on="cloud-1", app=neighbour_app)  # 16 MiB of 20 reserved there
        h = await c.spawn(COUNTER, on="edge-1", app="shop/cart")
        for _ in range(5):
            await h.call("incr", 1)
        with trio.fail_after(60):
            with pytest.raises(migrate.MigrationFailed) as refused:
                await h.migrate("cloud-1", strategy="precopy")
        assert f"{limit} exceeded: {32 * MiB} requested, {20 * MiB} allowed" in str(refused.value)

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
