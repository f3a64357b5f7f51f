"""The fair call executor against a real node: a neighbour's call is not queued behind a busy workload's calls."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_hosting import WASI_PROBE
from test_integration import wait_for

# WASI_PROBE's "sleep" sleeps in WASI (poll_oneoff on a relative clock) for `ns` nanoseconds;
# its "arg_count" returns 1 at once (argv is the workload id).
LONG_CALLS = 50  # more than trio's 40 default worker threads
NAP_NS = 500_000_000


async def test_a_neighbour_is_served_while_one_workload_has_many_long_calls(node_procs, cluster_tls):
    node = node_procs.start("edge-1", "edge", env={"MIGRATE_NODE_CALL_WORKERS": "2",
                                                   "MIGRATE_NODE_MAX_IN_FLIGHT": "64"})
    async with await node.client(cluster_tls.app) as client, await node.client(cluster_tls.app) as other:
        await client.deploy(WASI_PROBE, workload_id="busy")
        await client.deploy(WASI_PROBE, workload_id="b")
        await client.deploy(WASI_PROBE, workload_id="c")

        async def calls_of(workload):
            return next(w.calls for w in await client.workloads() if w.workload_id == workload)

        async def napping():
            return any(w.state == "busy" for w in await client.workloads() if w.workload_id == "busy")

        answered = []
        async with trio.open_nursery() as nursery:
            for _ in range(LONG_CALLS):
                nursery.start_soon(other.call, "busy", "sleep", NAP_NS)
            await wait_for(napping, what="the long calls to start")
            for _ in range(3):
                before = await calls_of("busy")
                # b and c at once: with two workers, "busy" holds one and b, c share the other in turn
                async with trio.open_nursery() as short:
                    for workload in ("b", "c"):
                        short.start_soon(lambda w: _record(answered, client.call(w, "arg_count"), w), workload)
                # Each short call started at once or after the other's (a no-op): never behind "busy"'s
                # queue.  Each long call takes NAP_NS, so at most one of them can have ended since.
                assert await calls_of("busy") - before <= 1
            nursery.cancel_scope.cancel()
        assert sorted(answered) == [("b", 1)] * 3 + [("c", 1)] * 3
        status = await client.status()
    assert status.counters.get("internal_errors", 0) == 0
    assert node.proc.poll() is None
    workers = [line["call_workers"] for line in node.log_lines() if line.get("msg") == "listening"]
    assert workers == [2]


async def _record(answered, call, workload):
    answered.append((workload, await call))


async def test_a_call_cancelled_while_queued_leaves_the_queue_and_the_next_one_runs():
    """In process, with real worker threads: cancelling a waiting call frees its place; order is kept."""
    import threading

    from nodes._call_executor import CallExecutor

    executor = CallExecutor(1)
    release = threading.Event()
    ran: list[str] = []

    def blocking(name):
        release.wait()
        ran.append(name)

    def quick(name):
        ran.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run, "a", blocking, "a1")
        await trio.testing.wait_all_tasks_blocked()
        waiting = await nursery.start(_queued, executor)
        await trio.testing.wait_all_tasks_blocked()
        waiting.cancel()  # while it waits in "c"'s queue for the one worker
        nursery.start_soon(executor.run, "b", quick, "b1")
        nursery.start_soon(executor.run, "a", quick, "a2")
        await trio.testing.wait_all_tasks_blocked()
        assert executor.busy() == 1 and ran == []
        release.set()
    assert ran == ["a1", "b1", "a2"] and executor.busy() == 0


async def _queued(executor, task_status=trio.TASK_STATUS_IGNORED):
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await executor.run("c", lambda: pytest.fail("a cancelled call ran"))


async def test_a_long_call_on_one_workload_does_not_stop_another_workloads_calls():
    """In process: while "a"'s call is blocked in its worker thread, "b"'s calls run and return; then "a"'s does."""
    import threading

    from nodes._call_executor import CallExecutor

    executor = CallExecutor(2)
    release = threading.Event()
    order: list[str] = []

    def long_call():
        release.wait()
        order.append("a done")
        return "a"

    async def run_a():
        assert await executor.run("a", long_call) == "a"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_a)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):
            assert await executor.run("b", lambda i=i: order.append(f"b{i}") or i) == i
        assert executor.busy() == 1  # "a"'s call still holds its worker
        release.set()
    assert order == ["b0", "b1", "b2", "b3", "b4", "a done"]


async def test_a_started_call_runs_to_its_end_when_cancelled_and_returns_its_result():
    import threading

    from nodes._call_executor import CallExecutor

    executor = CallExecutor(1)
    started, release = threading.Event(), threading.Event()
    got = []

    def call():
        started.set()
        release.wait()
        return 42

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            task_status.started(scope)
            got.append(await executor.run("a", call))

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(run)
        await trio.to_thread.run_sync(started.wait)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and executor.busy() == 1  # still running: a thread cannot be stopped
        release.set()
    assert got == [42]  # the outcome comes back; the cancellation lands at the next checkpoint
    assert executor.busy() == 0
    assert await executor.run("a", lambda: "next") == "next"


async def test_a_call_that_raises_raises_in_the_caller_and_frees_its_worker():
    from nodes._call_executor import CallExecutor

    executor = CallExecutor(1)

    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await executor.run("a", boom)
    assert executor.busy() == 0
    assert await executor.run("a", lambda x, y=0: x + y, 1, y=2) == 3


async def test_a_cancelled_caller_does_not_start_its_call():
    from nodes._call_executor import CallExecutor

    executor = CallExecutor(1)
    ran = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await executor.run("a", ran.append, 1)
    assert ran == [] and executor.busy() == 0


async def test_now_runs_on_this_thread_only_while_nothing_of_the_key_runs_or_waits():
    """In process: ``now`` keeps a key's order: NOT_NOW while one of its calls runs or waits, even
    for a function that would run; another key runs at once, on the event loop's thread."""
    import threading

    from nodes import NOT_NOW
    from nodes._call_executor import CallExecutor

    executor = CallExecutor(1)
    release = threading.Event()
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def here(value):
        threads.append(threading.get_ident())
        return value

    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run, "a", release.wait)
        await trio.testing.wait_all_tasks_blocked()
        assert executor.now("a", here, 1) is NOT_NOW  # "a" runs
        nursery.start_soon(executor.run, "b", here, 2)  # waits for the one worker
        await trio.testing.wait_all_tasks_blocked()
        assert executor.now("b", here, 3) is NOT_NOW  # "b" waits
        assert executor.now("c", here, 4) == 4
        assert executor.now("c", lambda: NOT_NOW) is NOT_NOW  # the function's own refusal passes through
        release.set()
    assert executor.now("a", here, 5) == 5
    assert threads[0] == loop_thread and threads[-1] == loop_thread and len(threads) == 3
