"""A node restarted with SIGTERM gives its workloads back with their epoch and call ledger.

Real nodes, stopped with SIGTERM and started again on the same port and
data directory.  A handle rides the restart out: its call waits for the
node and then runs exactly once.
"""

import pytest
import trio

import migrate
import workloads
from migrate._messages import MCall, MLocate, MSpawn
from nodes import NodeClient

from moves import interrupted_move

pytestmark = pytest.mark.trio

COUNTER = workloads.load("counter")


async def raw_call(node, tls, workload: str, caller: str, seq: int, *args):
    """One MCall straight to the node, as a handle would send it."""
    async with await NodeClient.connect(node.address, tls=tls) as client:
        return await client.request(MCall, workload=workload, op="call", caller=caller, seq=seq,
                                    export="incr", args=args)


async def where(node, tls, workload: str):
    async with await NodeClient.connect(node.address, tls=tls) as client:
        return await client.request(MLocate, workload=workload)


async def restart(node) -> None:
    """SIGTERM the node, wait for its exit (status 0), and start it again on the same port."""
    assert await trio.to_thread.run_sync(node.terminate) == 0
    await trio.to_thread.run_sync(node.restart)


async def test_a_restart_keeps_state_epoch_and_ledger_and_a_retry_does_not_run_again(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=tls) as c:
        h = await c.spawn(COUNTER, on="local")
        assert await h.call("incr", 1) == 1
        await h.migrate("edge-1", strategy="stop-copy")  # epoch 2 on edge-1
        assert h.node == "edge-1" and h.epoch == 2
        first = await raw_call(edge, tls, h.workload, "raw-caller", 7, 10)
        assert first.values == (11,) and not first.replayed
        before = await where(edge, tls, h.workload)
        assert (before.status, before.epoch) == ("owner", 2)

        await restart(edge)

        after = await where(edge, tls, h.workload)
        assert (after.status, after.epoch, after.index) == ("owner", 2, before.index)
        again = await raw_call(edge, tls, h.workload, "raw-caller", 7, 10)
        assert again.replayed and again.values == (11,) and again.epoch == 2  # the recorded outcome
        assert await h.call("get") == 11  # ... and the retry did not add 10 again
        assert await h.call("incr", 1) == 12 and h.epoch == 2
        assert any(line.get("msg") == "restored 1 workloads" for line in edge.log_lines())


async def test_a_call_in_flight_across_a_restart_completes_exactly_once(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(COUNTER, on="edge-1")
        assert h.reconnect_timeout_s == 30.0
        results: list[int] = []
        spans: list[tuple[float, float]] = []
        stop = trio.Event()

        async def hammer():
            while not stop.is_set():
                started = trio.current_time()
                results.append(await h.call("incr", 1))
                spans.append((started, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hammer)
            while len(results) < 20:
                await trio.sleep(0.01)
            await restart(edge)
            back = trio.current_time()
            while len(results) < 40 or spans[-1][0] < back:
                await trio.sleep(0.01)
            stop.set()
        assert any(start < back < end for start, end in spans), "no call was waiting during the restart"
        assert len(results) == len(set(results)), "a call ran twice"
        assert sorted(results) == list(range(1, len(results) + 1)), "a call was lost"
        assert await h.call("get") == len(results)
        assert h.node == "edge-1" and h.epoch == 1


async def test_copies_a_node_does_not_own_do_not_come_back_as_owned(node_procs, cluster_tls):
    """A standby copy is left out of the checkpoint; a tombstone still redirects after the restart."""
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud")
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls) as c:
        protected = await c.spawn(COUNTER, on="edge-1")
        await protected.call("incr", 3)
        await protected.protect("standby", to="cloud-1")  # cloud-1 holds an incoming standby copy
        moved = await c.spawn(COUNTER, on="cloud-1")
        await moved.migrate("edge-1", strategy="stop-copy")  # cloud-1 keeps a tombstone
        assert (await where(cloud, tls, protected.workload)).status == "incoming"

        assert await trio.to_thread.run_sync(cloud.terminate) == 0
        assert any(line.get("msg") == "not checkpointed: this node does not own it"
                   and line.get("workload") == protected.workload for line in cloud.log_lines())
        await trio.to_thread.run_sync(cloud.restart)

        # Not restored as owned: gone, or already a fresh standby copy from
        # edge-1 (the application asks for one when the copy is missing).
        after = await where(cloud, tls, protected.workload)
        assert after.status == "unknown" or (after.status, after.standby) == ("incoming", True)
        stone = await where(cloud, tls, moved.workload)
        assert (stone.status, stone.to_name, stone.epoch) == ("moved", "edge-1", 2)
        async with await NodeClient.connect(cloud.address, tls=tls) as client:
            held = {w.workload_id for w in await client.workloads()}
        assert held <= {protected.workload}  # at most the fresh standby copy
        assert await protected.call("incr", 1) == 4 and protected.node == "edge-1"


async def test_a_call_waits_for_the_node_for_reconnect_timeout_not_retry(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge")
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node"),
                               reconnect_timeout_s=60.0) as c:
        h = await c.spawn(COUNTER, on="edge-1")
        assert h.reconnect_timeout_s == 60.0
        h.retry_s = 0.5
        assert await h.call("incr", 1) == 1
        assert await trio.to_thread.run_sync(edge.terminate) == 0
        async with trio.open_nursery() as nursery:
            answer: list[int] = []

            async def call():
                answer.append(await h.call("incr", 1))

            nursery.start_soon(call)
            await trio.sleep(2 * h.retry_s)  # the node stays down longer than retry_s
            assert not answer
            await trio.to_thread.run_sync(edge.restart)
        assert answer == [2]

        h.reconnect_timeout_s = 0.5
        assert await trio.to_thread.run_sync(edge.terminate) == 0
        with pytest.raises(migrate.WorkloadUnavailable) as info:
            await h.call("incr", 1)
        assert info.value.ran is not True


@pytest.mark.parametrize("strategy,phase", [("precopy", "target:chunk"), ("dual", "target:align")])
async def test_a_node_stopped_while_its_move_waits_on_a_hung_target_aborts_it_and_saves_every_workload(
        node_procs, cluster_tls, strategy, phase):
    """The target stops answering (paused at its first chunk, or at a dual move's MAlign, after the cut);
    the source is SIGTERMed.

    Half its grace later the source aborts the move, checkpoints both its workloads, the moving one and
    a bystander, and exits 0.  Before, the move's request ran through the whole grace and the node saved
    nothing: both were lost.  After the restart both are back, owned by the source, with their state."""
    edge = node_procs.start("edge-1", "edge", args=["--shutdown-grace-s", "6"])
    cloud = node_procs.start("cloud-1", "cloud", join=[edge],
                             env={"MIGRATE_NODE_PAUSE_AT": phase, "MIGRATE_NODE_PAUSE_S": "120"})
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls, local=False) as c:
        moving = await c.spawn(workloads.load("dirtier"), on="edge-1")
        await moving.call("dt_init", 16)
        checksum = await moving.call("dt_checksum")
        bystander = await c.spawn(COUNTER, on="edge-1")
        assert await bystander.call("incr", 41) == 41

        async def stop_the_source() -> None:
            assert await trio.to_thread.run_sync(edge.terminate) == 0, edge.log_text()

        failures = await interrupted_move(moving, "cloud-1", cloud, stop_the_source, strategy=strategy, phase=phase,
                                          timeout_s=60)
        assert len(failures) == 1 and "shutting down" in str(failures[0]), failures
        assert any(line.get("msg") == "checkpointed 2 workloads" for line in edge.log_lines())
        await trio.to_thread.run_sync(edge.restart)
        for h in (moving, bystander):
            mine = await where(edge, tls, h.workload)
            assert mine.status == "owner", mine
        with trio.fail_after(30):
            assert await moving.call("dt_checksum") == checksum
            assert await bystander.call("get") == 41


async def test_a_call_still_running_after_the_grace_costs_only_its_own_workload(node_procs, cluster_tls):
    """A call that outlasts the shutdown grace (a spin stopped only by the 5 s call timeout) may be half-way
    through, so its workload is not saved, and the failure names it; the node's other workload is saved and
    comes back with its state.  Before, one running request meant nothing was saved at all."""
    edge = node_procs.start("edge-1", "edge", args=["--shutdown-grace-s", "2", "--call-timeout-s", "5"])
    tls = cluster_tls.issue("app-1", "client")
    async with await NodeClient.connect(edge.address, tls=tls) as client:
        for name, module in (("spinner", workloads.load("trap")), ("kept", COUNTER)):
            await client.request(MSpawn, module_sha256=await client.ensure_module(module), workload=name)
        kept = await client.request(MCall, workload="kept", op="call", caller="c", seq=0, export="incr", args=(41,))
        assert kept.values == (41,)
        spin = await client.send_request(MCall, workload="spinner", op="call", caller="c", seq=1, export="spin",
                                          args=(-1,))
        with trio.fail_after(30):
            await client.status()  # answered once the node has read the spin, which is running then
            status = await trio.to_thread.run_sync(edge.terminate)
        spin.discard()
    assert status != 0
    lines = edge.log_lines()
    assert any(line.get("msg", "").startswith("not checkpointed: a request on it was still running")
               and line.get("workload") == "spinner" for line in lines), edge.log_text()
    assert any("left out 1 workloads it could not capture (spinner); the other 1 are saved" in line.get("msg", "")
               for line in lines), edge.log_text()
    await trio.to_thread.run_sync(edge.restart)
    assert (await where(edge, tls, "kept")).status == "owner"
    assert (await where(edge, tls, "spinner")).status == "unknown"
    again = await raw_call(edge, tls, "kept", "c", 2, 1)
    assert again.values == (42,)
