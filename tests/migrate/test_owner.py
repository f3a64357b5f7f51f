"""The owner's call path: a call that waited for its workload's lock runs only on the workload it was authorized for.

A real node and a client certificate: calls are pipelined on one
connection behind a long call, so they queue on the workload's FIFO lock;
the remove before the last one takes the workload away.  The queued call
must not reach the host (where the id may already name another workload,
perhaps another tenant's): it is answered ``not_owner``.
"""

import pytest
import trio
import trio.testing

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


async def test_a_freeze_ends_the_idle_time_of_a_throttled_call():
    """At the top throttle step a call holds the workload idle for 19 times its run time; the move's
    ``stop_throttle`` before its freeze ends that at once, so the freeze gets the lock."""
    from migrate._owner import idle_throttled
    from migrate._state import Owned
    owned = Owned("w", epoch=1, throttle=0.95)
    idled = trio.Event()

    async def a_throttled_call() -> None:
        async with owned.lock:
            await idle_throttled(owned, took_s=60.0)  # 19 minutes of idleness
        idled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(a_throttled_call)
        await trio.testing.wait_all_tasks_blocked()
        assert owned.lock.locked() and owned.throttling is not None
        owned.stop_throttle()
        await trio.testing.wait_all_tasks_blocked()  # without the cancel, the call would idle on for 19 minutes
        assert idled.is_set() and not owned.lock.locked()
        assert owned.throttle == 0.0 and owned.throttling is None


async def test_short_calls_run_on_the_event_loop_unless_the_workload_records_them(edge_and_cloud, cluster_tls):
    """Calls of a provably short export (counter's incr) run on the owner's event loop (``calls_inline``);
    a loop (trap's spin) and the calls of a protected workload (its inputs are recorded) go to a worker.
    Through a move, every call runs once."""
    async with edge_and_cloud() as (edge, cloud, cluster):
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        looping = await cluster.spawn(workloads.load("trap"), on="edge-1")

        async def inline(node) -> int:
            async with await node.client(cluster_tls.app) as client:
                return (await client.status()).counters.get("calls_inline", 0)

        for i in range(1, 21):
            assert await h.call("incr", 1) == i
        assert await looping.call("spin", 5) == 5
        assert await inline(edge) == 20
        async with await edge.client(cluster_tls.app) as client:  # a node client's call, too
            wid = (await client.deploy(workloads.load("counter"))).workload_id
            assert await client.call(wid, "incr", 3) == 3
        assert await inline(edge) == 21

        answers = []
        moved = trio.Event()

        async def hammer() -> None:
            while not moved.is_set():
                answers.append(await h.call("incr", 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hammer)
            await h.migrate("cloud-1")
            moved.set()
        assert answers == list(range(21, 21 + len(answers)))
        assert await h.call("get") == 20 + len(answers)
        at_cloud = await inline(cloud)
        assert at_cloud >= 1

        await h.protect("standby", to="edge-1")
        for i in range(21 + len(answers), 31 + len(answers)):
            assert await h.call("incr", 1) == i
        assert await inline(cloud) == at_cloud
