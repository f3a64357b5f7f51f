"""Handles and pre-copy migration across real node processes, with TLS."""

import functools

import pytest
import trio

import migrate
import nodes
import workloads
from migrate._messages import MCall


@pytest.fixture
def three_nodes(node_procs):
    edge = node_procs.start("edge-1", "edge")
    cloud = node_procs.start("cloud-1", "cloud", join=[edge])
    return node_procs, edge, cloud


async def _hammer(done: trio.Event, results: list[int], h) -> None:
    """Call ``incr`` through ``h`` until ``done``, keeping each result."""
    while not done.is_set():
        results.append(await h.call("incr", 1))


async def test_workload_moves_local_edge_cloud_and_back_keeping_state(three_nodes, cluster_tls):
    launcher, edge, cloud = three_nodes
    app_tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=app_tls) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="local")
        assert h.node == "local"
        assert await h.call("incr", 5) == 5
        for target, strategy in (("edge-1", "precopy"), ("cloud-1", "precopy"), ("local", "stop-copy"),
                                 ("cloud-1", "stop-copy")):
            report = await h.migrate(target, strategy=strategy)
            assert (report.target, h.node, report.strategy) == (target, target, strategy)
            assert report.rounds >= 1 and report.bytes_sent > 0 and report.frozen_s >= 0
        assert await h.call("incr", 1) == 6
        assert await h.call("get") == 6
        names = {n.name for n in await cluster.nodes()}
        assert {"local", "edge-1", "cloud-1"} <= names


async def test_bytes_convention_and_memory_access(three_nodes, cluster_tls):
    _, edge, cloud = three_nodes
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("kvstore"), on="edge-1")
        assert await h.call_with_bytes("kv_put", b"key", b"value") == 1
        await h.migrate("local")
        ptr = await h.call_with_bytes("kv_get", b"key")
        assert await h.read_prefixed(ptr) == b"value"


async def test_unknown_node_is_a_clear_error(three_nodes, cluster_tls):
    _, edge, _ = three_nodes
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        with pytest.raises(migrate.UnknownNode, match="mars-1"):
            await h.migrate("mars-1")
        with pytest.raises(migrate.UnknownNode):
            await cluster.spawn(workloads.load("counter"), on="mars-1")


async def test_workload_errors_keep_their_types_through_a_handle(three_nodes, cluster_tls):
    _, edge, _ = three_nodes
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("trap"), on="edge-1")
        with pytest.raises(nodes.WorkloadTrap):
            await h.call("boom")
        with pytest.raises(nodes.UnknownExport):
            await h.call("nope")
        assert await h.call("hog", 1) == 1  # still serving after the trap


async def test_concurrent_callers_through_twenty_moves_exactly_once(three_nodes, cluster_tls):
    """Several callers hammer a counter while it moves 24 times among local,
    edge and cloud: every call's result is unique, none fails, and the final
    count is exact."""
    _, edge, cloud = three_nodes
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        mover = await cluster.spawn(workloads.load("counter"), on="local")
        callers = [mover] + [await cluster.attach(mover.workload) for _ in range(3)]
        results: list[int] = []
        moves_done = trio.Event()
        hammer = functools.partial(_hammer, moves_done, results)

        reports = []
        async with trio.open_nursery() as nursery:
            for h in callers:
                nursery.start_soon(hammer, h)
            route = ["edge-1", "cloud-1", "local"] * 8
            for i, target in enumerate(route):
                await trio.sleep(0.01)
                reports.append(await mover.migrate(target, strategy="precopy" if i % 2 else "stop-copy"))
            moves_done.set()
        assert len(reports) == 24 and [r.target for r in reports] == route
        assert len(results) > 100, f"only {len(results)} calls: the callers barely ran"
        assert len(results) == len(set(results)), "a call ran twice or a result was replayed to two calls"
        assert sorted(results) == list(range(1, len(results) + 1)), "a call was lost"
        assert await mover.call("get") == len(results)
        assert all(h.node == "local" for h in callers[:1])


async def test_an_exception_leaves_connect_as_itself(three_nodes, cluster_tls):
    _, edge, _ = three_nodes
    with pytest.raises(KeyError, match="mine"):
        async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")):
            raise KeyError("mine")


async def test_moves_under_queued_calls_with_one_call_worker(edge_and_cloud):
    """With one call worker per node, calls queue on the moving workload while
    its host steps (freeze, capture, thaw) run: nothing deadlocks, every call
    runs exactly once."""
    one = {"MIGRATE_NODE_CALL_WORKERS": "1"}
    async with edge_and_cloud(edge_env=one, cloud_env=one) as (edge, cloud, cluster):
        mover = await cluster.spawn(workloads.load("counter"), on="edge-1")
        neighbour = await cluster.spawn(workloads.load("counter"), on="edge-1")
        callers = [mover] + [await cluster.attach(mover.workload) for _ in range(5)]
        results: list[int] = []
        moves_done = trio.Event()
        hammer = functools.partial(_hammer, moves_done, results)

        async with trio.open_nursery() as nursery:
            for h in callers:
                nursery.start_soon(hammer, h)
            for i, target in enumerate(["cloud-1", "edge-1"] * 3):
                await trio.sleep(0.02)
                await mover.migrate(target, strategy="precopy" if i % 2 else "stop-copy")
                assert await neighbour.call("incr", 1) == i + 1
            moves_done.set()
        assert len(results) == len(set(results)) and sorted(results) == list(range(1, len(results) + 1))
        assert await mover.call("get") == len(results)


async def test_a_runaway_call_is_answered_deadline_exceeded_once(edge_and_cloud, cluster_tls):
    """A call past its deadline raises nodes.DeadlineExceeded through a handle;
    the ledger records it, so a retry of the same call id gets the same answer
    without running it again; the workload stays usable, its neighbour untouched."""
    async with edge_and_cloud(edge_env={"MIGRATE_NODE_CALL_TIMEOUT_S": "0.3"}) as (edge, cloud, cluster):
        h = await cluster.spawn(workloads.load("trap"), on="edge-1")
        neighbour = await cluster.spawn(workloads.load("counter"), on="edge-1")
        with pytest.raises(nodes.DeadlineExceeded) as stopped:
            await h.call("spin", -1)
        assert stopped.value.timeout_s == 0.3 and stopped.value.trap_code == "interrupt"
        assert await h.call("spin", 10) == 10
        async with await edge.client(cluster_tls.issue("app-1", "node")) as client:
            answers = []
            for _ in range(2):
                with pytest.raises(nodes.DeadlineExceeded) as again:
                    await client.request(MCall, workload=h.workload, op="call", caller="retrier", seq=1,
                                         export="spin", args=(-1,))
                answers.append(str(again.value))
            status = await client.status()
        assert answers[0] == answers[1]
        assert status.counters["calls_replayed"] == 1
        spun = next(w for w in status.workloads if w.workload_id == h.workload)
        assert (spun.timeouts, spun.calls) == (2, 3)  # the retry did not run
        assert await neighbour.call("incr", 1) == 1


async def test_a_handle_calls_exactly_once_after_the_node_closed_its_idle_connection(node_procs, cluster_tls):
    edge = node_procs.start("edge-1", "edge", args=["--idle-timeout-s", "1.5"])
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("app-1", "node")) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        assert await h.call("incr", 1) == 1
        for expected in (2, 3):
            await trio.sleep(2.5)  # edge-1 closes the application's idle connection meanwhile
            assert await h.call("incr", 1) == expected
        assert await h.call("get") == 3
        await h.migrate("local")  # and the node-to-node connections stay usable
        assert await h.call("incr", 1) == 4
    closed = [line for line in edge.log_lines() if line.get("msg") == "connection closed"]
    assert any("sent nothing for 1.5 s" in line.get("reason", "") for line in closed)


SPIN = (b'(module (global $n (mut i32) (i32.const 0)) (func (export "spin") (loop (br 0)))'
        b' (func (export "incr") (result i32)'
        b' (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n)))')


#: A module whose wm_alloc returns an f64, not an address.
FLOAT_ALLOC = (b'(module (memory (export "memory") 1)'
               b' (func (export "wm_alloc") (param i32) (result f64) (f64.const 1024))'
               b' (func (export "wm_free") (param i32))'
               b' (func (export "take") (param i32 i32) (result i32) (local.get 1)))')


async def _summary(address, tls, workload):
    async with await nodes.NodeClient.connect(address, tls=tls) as client:
        return next(w for w in await client.workloads() if w.workload_id == workload)


async def test_a_call_past_its_timeout_is_stopped_on_the_node(three_nodes, cluster_tls):
    """The node's per-call deadline is 30 s: only a cancel ends the spin at once, as a trap, not a timeout."""
    import wasmtime
    _, edge, _ = three_nodes
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=tls) as cluster:
        h = await cluster.spawn(wasmtime.wat2wasm(SPIN), on="edge-1")
        with pytest.raises(trio.TooSlowError):
            await h.call("spin", timeout=0.3)
        assert await h.call("incr") == 1  # calls on a workload run one at a time: the spin ended
        summary = await _summary(str(edge.address), tls, h.workload)
        assert (summary.traps, summary.timeouts) == (1, 0)


async def test_a_cancelled_call_that_waits_its_turn_never_runs(three_nodes, cluster_tls):
    import wasmtime
    _, edge, _ = three_nodes
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=tls) as cluster:
        h = await cluster.spawn(wasmtime.wat2wasm(SPIN), on="edge-1")
        async with trio.open_nursery() as nursery:
            spinning = trio.CancelScope()

            async def spin() -> None:
                with spinning:
                    await h.call("spin")

            nursery.start_soon(spin)
            await trio.sleep(0.2)
            with trio.move_on_after(0.3) as waited:
                await h.call("incr")  # queued behind the spin, then cancelled
            assert waited.cancelled_caught
            spinning.cancel()
        assert await h.call("incr") == 1  # the cancelled incr never ran
        summary = await _summary(str(edge.address), tls, h.workload)
        assert (summary.calls, summary.traps, summary.timeouts) == (2, 1, 0)


WORK = (b'(module (global $g (mut i32) (i32.const 0))'
        b' (func (export "work") (param $n i32) (result i32) (local $i i32)'
        b'  (loop (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if 0 (i32.lt_u (local.get $i) (local.get $n))))'
        b'  (global.set $g (i32.add (global.get $g) (i32.const 1))) (global.get $g))'
        b' (func (export "get") (result i32) (global.get $g)))')


async def test_a_cancelled_call_on_a_protected_workload_finishes(three_nodes, cluster_tls):
    """Replayed elsewhere on a failover, a call is not stopped midway: it finishes, once, and is not a trap."""
    import wasmtime
    _, edge, _ = three_nodes
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), tls=tls) as cluster:
        h = await cluster.spawn(wasmtime.wat2wasm(WORK), on="edge-1")
        await h.protect("checkpoint", interval_s=60)
        with pytest.raises(trio.TooSlowError):
            await h.call("work", 1_500_000_000, timeout=0.05)
        assert await h.call("get") == 1  # waited for the cancelled call, which finished
        summary = await _summary(str(edge.address), tls, h.workload)
        assert (summary.traps, summary.timeouts) == (0, 0)


async def test_exports_bytes_and_str_arguments_and_removal_at_the_end_of_a_block(three_nodes, cluster_tls):
    import wasmtime
    _, edge, cloud = three_nodes
    tls = cluster_tls.issue("app-1", "node")
    async with migrate.connect(str(edge.address), str(cloud.address), tls=tls) as cluster:
        h = await cluster.spawn(workloads.load("kvstore"), on="edge-1")
        exports = {e.name: e for e in await h.exports()}
        assert exports["kv_put"].params == ("i32", "i32", "i32", "i32") and exports["kv_put"].results == ("i32",)
        assert not any(name.startswith("__wm_") for name in exports)
        assert await h.call("kv_put", b"key", "välue") == 1  # str goes in as UTF-8
        await h.migrate("cloud-1")
        assert await h.read_prefixed(await h.call("kv_get", "key")) == "välue".encode()
        plain = await cluster.spawn(wasmtime.wat2wasm(SPIN), on="edge-1")
        with pytest.raises(TypeError, match="no wm_alloc"):
            await plain.call("incr", b"bytes")
        with pytest.raises(TypeError):
            await plain.call("incr", [1])
        floating = await cluster.spawn(wasmtime.wat2wasm(FLOAT_ALLOC), on="edge-1")
        with pytest.raises(TypeError, match="returned 1024.0, not an address"):
            await floating.call("take", b"bytes")
        async with plain.removing():
            assert await plain.call("incr") == 1
        async with await nodes.NodeClient.connect(str(edge.address), tls=tls) as client:
            assert plain.workload not in {w.workload_id for w in await client.workloads()}


SEGMENTS = """
(module
  (memory 1) (table 1 funcref) (func $f)
  (data $p "payload") (elem $e func $f)
  (func (export "drop_data") (data.drop $p))
  (func (export "drop_elem") (elem.drop $e))
  (func (export "init_data") (param i32) (result i32)
    (memory.init $p (i32.const 0) (i32.const 0) (local.get 0)) (i32.load8_u (i32.const 0)))
  (func (export "init_elem") (param i32) (result i32)
    (table.init $e (i32.const 0) (i32.const 0) (local.get 0)) (i32.const 1)))
"""


@pytest.mark.parametrize("strategy", ["precopy", "stop-copy", "dual"])
async def test_dropped_segments_stay_dropped_after_moves(three_nodes, cluster_tls, strategy):
    """data.drop before a move and elem.drop during one: after the move, initialising
    from either segment traps (it would succeed if the segments came back)."""
    import wasmtime

    _, edge, cloud = three_nodes
    async with migrate.connect(str(edge.address), str(cloud.address), tls=cluster_tls.issue("app-1", "node")) as c:
        h = await c.spawn(wasmtime.wat2wasm(SEGMENTS), on="edge-1")
        assert await h.call("init_data", 1) == ord("p") and await h.call("init_elem", 1) == 1
        await h.call("drop_data")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(h.migrate, "cloud-1", strategy=strategy))
            await trio.sleep(0.01)
            await h.call("drop_elem")  # before, during or after the rounds: it must arrive
        assert h.node == "cloud-1"
        for name, unchanged in (("init_data", ord("p")), ("init_elem", 1)):
            with pytest.raises(nodes.WorkloadTrap) as trapped:
                await h.call(name, 1)
            assert "out_of_bounds" in trapped.value.trap_code
            assert await h.call(name, 0) == unchanged  # a zero-length init at offset 0 still succeeds
        await h.migrate("edge-1", strategy=strategy)
        with pytest.raises(nodes.WorkloadTrap):
            await h.call("init_elem", 1)


async def test_a_move_to_local_with_a_client_certificate_says_which_certificate_is_needed(three_nodes, cluster_tls):
    _, edge, _ = three_nodes
    async with migrate.connect(str(edge.address), tls=cluster_tls.issue("shop", "client")) as cluster:
        h = await cluster.spawn(workloads.load("counter"), on="edge-1")
        assert await h.call("incr", 2) == 2
        with pytest.raises(migrate.MigrationFailed, match="client certificate.*--role node"):
            await h.migrate("local")
        assert await h.call("incr", 1) == 3  # it stayed where it was
