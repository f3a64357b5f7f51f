"""The node's bounded, fair executor for guest calls: a ``FairQueue`` driving worker threads.

A node runs calls and memory reads and writes through ``CallExecutor.run``,
keyed by workload.  A call waits in its workload's queue in the event loop,
not in a thread; ``nodes._fair_queue`` decides which workload's call gets
the next of ``workers`` threads (trio's thread cache, behind a limiter of
the same size that is never contended).  So one workload's many concurrent
long calls hold one worker between them, and a neighbour's call starts
within about one call's time.

Other blocking host work (deploys, checkpoints, a migration's host steps
through ``Host.hold``) does not use these workers: it runs on trio's own
thread limiter (``Node.run_host``).  That keeps a migration's ``thaw`` from
waiting behind a call that waits for that very thaw: a call into a paused
workload holds its worker until the pause ends (``nodes._workload.InUse``),
and only the migration step that ends the pause can free it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any

import trio

from ._fair_queue import FairQueue

__all__ = ["CallExecutor"]


class _Ticket:
    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = trio.Event()


class CallExecutor:
    """Runs blocking functions on ``workers`` threads, one at a time per key, keys served in turn.

    Raises ``ValueError`` if ``workers`` is not positive.
    """

    def __init__(self, workers: int) -> None:
        self._queue: FairQueue[_Ticket] = FairQueue(workers)
        self._limiter = trio.CapacityLimiter(workers)

    @property
    def workers(self) -> int:
        return self._queue.workers

    def busy(self) -> int:
        """How many workers run a call now."""
        return len(self._queue.running)

    async def run(self, key: Hashable, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Wait for ``key``'s turn, run ``func(*args, **kwargs)`` in a worker thread, return what it returns.

        Cancelled while waiting, the call is taken out of the queue; once
        started it runs to its end (a thread cannot be stopped; the guest's
        deadline bounds it).
        """
        ticket = _Ticket()
        _start(self._queue.submit(key, ticket))
        try:
            await ticket.started.wait()
        except BaseException:
            if not self._queue.withdraw(key, ticket):
                _start(self._queue.finish(key))  # it had been started: give its turn on
            raise
        try:
            return await trio.to_thread.run_sync(functools.partial(func, *args, **kwargs), limiter=self._limiter)
        finally:
            _start(self._queue.finish(key))


def _start(started: list[tuple[Hashable, _Ticket]]) -> None:
    for _, ticket in started:
        ticket.started.set()
