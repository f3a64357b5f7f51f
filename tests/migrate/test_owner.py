"""The owner's call path: a call that waited for its workload's lock runs only on the workload it was authorized for.

A real node and a client certificate: calls are pipelined on one
connection behind a long call, so they queue on the workload's FIFO lock;
the remove before the last one takes the workload away.  The queued call
must not reach the host (where the id may already name another workload,
perhaps another tenant's): it is answered ``not_owner``.
"""

import pytest
import trio

import workloads
from migrate._codes import MigrationCode
from migrate._messages import MCall, MSpawn
from nodes import NodeClient, RemoteNodeError, ResourceLimitExceeded

pytestmark = pytest.mark.trio


async def test_a_call_queued_behind_a_remove_does_not_run(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge")
    async with await NodeClient.connect(node.address, tls=cluster_tls.issue("app-b", "client")) as b:
        sha256 = await b.ensure_module(workloads.load("trap"))
        await b.request(MSpawn, module_sha256=sha256, workload="w")
        with trio.fail_after(60):
            spin = await b.send_request(MCall, workload="w", op="call", caller="b", seq=0, export="spin",
                                        args=(30_000_000,))
            remove = await b.send_request(MCall, workload="w", op="remove", caller="b", seq=1)
            queued = await b.send_request(MCall, workload="w", op="call", caller="b", seq=2, export="spin",
                                          args=(1,))
            assert (await spin.reply()).values == (30_000_000,)
            await remove.reply()
            with pytest.raises(RemoteNodeError) as refused:
                await queued.reply()
        assert refused.value.code == MigrationCode.NOT_OWNER
        assert "does not own workload 'w'" in str(refused.value)
        status = await b.status()
    assert status.workloads == ()


async def test_a_workload_remembers_a_bounded_number_of_callers(node_procs, cluster_tls):
    """A client minting caller ids fills the ledger to ``MAX_CALLERS``; the next new caller is refused unrun
    (``resource_limit``, started false), while a caller it knows goes on calling, exactly once."""
    from migrate._ledger import MAX_CALLERS
    node = node_procs.start("edge-1", "edge")
    async with await NodeClient.connect(node.address, tls=cluster_tls.issue("app-b", "client")) as b:
        sha256 = await b.ensure_module(workloads.load("counter"))
        await b.request(MSpawn, module_sha256=sha256, workload="w")
        with trio.fail_after(240):
            pending = []
            for n in range(MAX_CALLERS):
                pending.append(await b.send_request(MCall, workload="w", op="call", caller=f"minted-{n}", seq=0,
                                                    export="incr", args=(1,)))
                if len(pending) >= 64:
                    for request in pending:
                        await request.reply()
                    pending.clear()
            for request in pending:
                await request.reply()
            with pytest.raises(ResourceLimitExceeded) as refused:
                await b.request(MCall, workload="w", op="call", caller="one-too-many", seq=0, export="incr", args=(1,))
            known = await b.request(MCall, workload="w", op="call", caller="minted-7", seq=1, export="incr", args=(1,))
            again = await b.request(MCall, workload="w", op="call", caller="minted-7", seq=1, export="incr", args=(1,))
    assert refused.value.limit == "ledger_callers" and refused.value.started is False
    assert known.values == (MAX_CALLERS + 1,) and again.values == known.values  # the refused call never ran
