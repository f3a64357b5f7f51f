"""run_bulk: bulk work on one lower-priority thread, in order, with results and errors handed back."""

from __future__ import annotations

import os
import threading

import pytest
import trio
import trio.testing

from nodes import BULK_NICE, run_bulk

pytestmark = pytest.mark.trio


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_a_job_runs_on_a_lower_priority_thread_and_returns_its_result():
    mine = _nice()
    where = await run_bulk(lambda a, b: (threading.get_ident(), _nice(), a + b), 2, 3)
    assert where[0] != threading.get_ident()
    assert where[1] == max(mine, BULK_NICE)
    assert where[2] == 5
    assert _nice() == mine  # the event loop's thread keeps its priority
    assert (await run_bulk(threading.get_ident)) == where[0]  # one thread, kept


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="thread names in /proc are Linux's")
async def test_the_thread_is_named_for_operators_in_the_kernel_too():
    tid = await run_bulk(threading.get_native_id)
    with open(f"/proc/self/task/{tid}/comm") as comm:
        assert comm.read().strip() == "wm-bulk"


async def test_an_error_is_raised_to_the_caller_and_the_thread_goes_on():
    def boom() -> None:
        raise ValueError("bad round")

    with pytest.raises(ValueError, match="bad round"):
        await run_bulk(boom)
    assert await run_bulk(lambda: 7) == 7


async def test_jobs_run_one_at_a_time_in_order():
    release = threading.Event()
    order: list[str] = []

    def first() -> str:
        release.wait()
        order.append("first")
        return "first"

    results: list[str] = []

    async def submit(func) -> None:
        results.append(await run_bulk(func))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(submit, lambda: order.append("second") or "second")
        await trio.testing.wait_all_tasks_blocked()
        assert order == []  # the second waits behind the first
        release.set()
    assert order == ["first", "second"] and sorted(results) == ["first", "second"]


async def test_a_cancelled_caller_gets_its_jobs_result_and_then_the_cancellation():
    release = threading.Event()
    got: list[str] = []

    def job() -> str:
        release.wait()
        return "done"

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            async def caller() -> None:
                got.append(await run_bulk(job))  # the job ran to its end: its result is not lost
                await trio.sleep(0)  # the cancellation arrives here
                got.append("not reached")

            nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            release.set()
    assert scope.cancelled_caught and got == ["done"]


async def test_a_jobs_end_takes_no_lock_of_the_run(monkeypatch):
    # The thread runs at nice 10: taking the run's entry-queue lock
    # (``run_sync_soon``) and losing the CPU before letting it go blocked
    # every other thread reporting back to the run, a call's worker among
    # them.  Its jobs end through their own pipes instead.
    entry_queue = type(trio.lowlevel.current_trio_token()._reentry_queue)
    entered: list[str] = []
    original = entry_queue.run_sync_soon

    def watched(self, *args, **kwargs):
        entered.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(entry_queue, "run_sync_soon", watched)
    assert [await run_bulk(lambda i=i: i * i) for i in range(5)] == [0, 1, 4, 9, 16]
    await trio.to_thread.run_sync(lambda: None)  # a thread that does report through the run's queue
    assert entered and "wm-bulk" not in entered


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="open files are listed in /proc on Linux")
async def test_jobs_leave_no_file_open():
    # Counted on the thread, inside a job: the jobs before it have closed their
    # pipes by then (the thread closes one after waking its caller), and only
    # this job's own pipe is open, each time.
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = await run_bulk(open_files)
    for _ in range(50):
        await run_bulk(lambda: None)
    with pytest.raises(ValueError):
        await run_bulk(int, "not a number")
    assert await run_bulk(open_files) == before
