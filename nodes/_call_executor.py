"""The node's bounded, fair executor for guest calls: a ``FairQueue`` driving worker threads.

A node runs calls and memory reads and writes through ``CallExecutor.run``,
keyed by workload.  A call waits in its workload's queue in the event loop,
not in a thread; ``nodes._fair_queue`` decides which workload's call gets
the next of ``workers`` threads.  So one workload's many concurrent long
calls hold one worker between them, and a neighbour's call starts within
about one call's time.

A call crosses threads once each way: the event loop hands the function to
a thread of trio's thread cache (``trio.lowlevel.start_thread_soon``) the
moment ``FairQueue`` starts it, and the thread hands the outcome back with
one ``run_sync_soon`` callback, which starts the next waiting calls and
wakes the caller.  The caller parks once (``wait_task_rescheduled``) for
both the wait for its turn and the call.  Before, a call took a ticket
(``trio.Event``, one scheduler pass) and then ``trio.to_thread.run_sync``
(a limiter, a context copy and its own wake-up): about 68 + 80 µs a call
on the 2-CPU benchmark machine, against a p50 of about 600 µs for a no-op
call through a handle over TLS (benchmarks/bench_node.py).

Only calls that provably finish fast run on the event-loop thread
(``now``, with ``Host.call_now``): an export with no loop, no indirect or
host call and no recursion, at most 10,000 instructions in all
(``snapshot.bounded_exports``), and only when nothing else of its workload
runs or waits.  That saves both thread hops, about 125 µs of a 365 µs
no-op call through a handle over TLS.  Any other call goes to a worker:
wasmtime-py 50 has no epoch deadline callback, so a call started on the
event loop could not be moved to a worker when it runs long, and a deadline
that traps it there would fail a call that a worker would have finished.
A call's outcome must not depend on where it ran, and a long call must not
stall the other workloads' calls.

Other blocking host work (deploys, checkpoints, a migration's host steps
through ``Host.hold``) does not use these workers: it runs on trio's own
thread limiter (``Node.run_host``).  That keeps a migration's ``thaw`` from
waiting behind a call that waits for that very thaw: a call into a paused
workload holds its worker until the pause ends (``nodes._in_use.InUse``),
and only the migration step that ends the pause can free it.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Hashable
from typing import Any, ParamSpec, TypeVar

import outcome
import trio

from ._fair_queue import FairQueue
from ._in_use import NOT_NOW, NotNow

__all__ = ["CallExecutor"]

#: A function's parameters and result, for the methods that run one (here and ``Node.run_host``).
P = ParamSpec("P")
T = TypeVar("T")


class _Job:
    """One call: what to run, who waits for it, and whether a worker took it."""

    __slots__ = ("key", "func", "task", "token", "started")

    def __init__(self, key: Hashable, func: Callable[[], Any]) -> None:
        self.key = key
        self.func = func
        self.task = trio.lowlevel.current_task()
        self.token = trio.lowlevel.current_trio_token()
        self.started = False


class CallExecutor:
    """Runs blocking functions on ``workers`` threads, one at a time per key, keys served in turn.

    Raises ``ValueError`` if ``workers`` is not positive.
    """

    def __init__(self, workers: int) -> None:
        self._queue: FairQueue[_Job] = FairQueue(workers)

    @property
    def workers(self) -> int:
        return self._queue.workers

    def busy(self) -> int:
        """How many workers run a call now."""
        return len(self._queue.running)

    def now(self, key: Hashable, func: Callable[P, T | NotNow], *args: P.args, **kwargs: P.kwargs) -> T | NotNow:
        """Run ``func`` on this thread (the event loop's) if nothing of ``key``'s runs or waits; else ``NOT_NOW``.

        ``func`` must itself return ``NOT_NOW`` at once when it cannot finish
        fast (``Host.call_now``): the event loop waits for it.  Nothing of
        ``key``'s can start meanwhile, so ``key``'s calls keep their order.
        """
        if not self._queue.idle(key):
            return NOT_NOW
        return func(*args, **kwargs)

    async def run(self, key: Hashable, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Wait for ``key``'s turn, run ``func(*args, **kwargs)`` in a worker thread, return what it returns.

        Cancelled while waiting, the call is taken out of the queue; once
        started it runs to its end and its result is returned (a thread
        cannot be stopped; the guest's deadline bounds it), and the
        cancellation is delivered at the caller's next checkpoint.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        context = contextvars.copy_context()
        job = _Job(key, functools.partial(context.run, func, *args, **kwargs))
        self._start(self._queue.submit(key, job))

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            if not job.started and self._queue.withdraw(key, job):
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED  # running: the worker's outcome wakes us

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _start(self, started: list[tuple[Hashable, _Job]]) -> None:
        for _, job in started:
            job.started = True
            # unnamed: a name costs two pthread_setname_np calls per job
            trio.lowlevel.start_thread_soon(job.func, functools.partial(_deliver, self, job))

    def _done(self, job: _Job, result: outcome.Outcome[object]) -> None:
        """In the event loop: the worker finished ``job``; start what may start, wake its caller."""
        self._start(self._queue.finish(job.key))
        trio.lowlevel.reschedule(job.task, result)


def _deliver(executor: CallExecutor, job: _Job, result: outcome.Outcome[object]) -> None:
    """In the worker thread: hand ``result`` back to the event loop (one wake-up)."""
    try:
        job.token.run_sync_soon(executor._done, job, result)
    except trio.RunFinishedError:  # the run ended under a call that outlived it: nobody waits
        pass
