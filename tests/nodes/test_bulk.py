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
