"""Which waiting call runs next: per-workload queues served round-robin by a fixed number of workers (sans-IO).

``FairQueue`` holds no threads and does no I/O: a caller tells it that a
call was submitted (``submit``), that a running call finished (``finish``)
or that a waiting caller gave up (``withdraw``), and it answers with the
calls to start now.  ``nodes._call_executor`` runs them on worker threads.

The rules:

* at most ``workers`` calls run at once, and at most one per key (a
  workload runs one call at a time anyway: waiting for its lock in a
  thread would only take a worker from everyone else);
* each key's calls start in the order they were submitted;
* keys with waiting calls and no running call take turns (``ready``, a
  FIFO): a key whose call finishes goes to the back if it has more;
* no worker idles while a call could start.

The bound (checked by the property tests): a call submitted on a key with
nothing waiting or running starts at once if a worker is free; otherwise
it starts at the ``r + 1``-th completion after it was submitted, where
``r`` is the number of keys ahead of it in ``ready`` then, and
``r <= K - 1 - workers`` for ``K`` keys with work.  So with at most
``workers + 1`` busy workloads, it waits for one completion at most; and
a workload with many calls holds one worker, never more.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Per-key FIFO queues of waiting items, started round-robin across keys on ``workers`` workers.

    Raises ``ValueError`` if ``workers`` is not positive.
    """

    def __init__(self, workers: int) -> None:
        if not isinstance(workers, int) or workers <= 0:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.workers = workers
        self._waiting: dict[Hashable, deque[T]] = {}
        self._ready: deque[Hashable] = deque()  # keys with waiting items and none running, in turn order
        self._running: set[Hashable] = set()

    @property
    def running(self) -> frozenset[Hashable]:
        """The keys with a call running."""
        return frozenset(self._running)

    @property
    def ready(self) -> tuple[Hashable, ...]:
        """The keys waiting for a worker, next first."""
        return tuple(self._ready)

    def waiting(self, key: Hashable) -> int:
        """How many of ``key``'s items wait."""
        return len(self._waiting.get(key, ()))

    def idle(self, key: Hashable) -> bool:
        """True if ``key`` has no item running or waiting."""
        return key not in self._running and key not in self._waiting

    def submit(self, key: Hashable, item: T) -> list[tuple[Hashable, T]]:
        """Queue ``item`` behind ``key``'s other items; return the items to start now."""
        queue = self._waiting.get(key)
        if queue is None:
            queue = self._waiting[key] = deque()
            if key not in self._running:
                self._ready.append(key)
        queue.append(item)
        return self._dispatch()

    def finish(self, key: Hashable) -> list[tuple[Hashable, T]]:
        """Note that ``key``'s running item ended; return the items to start now.

        Raises ``KeyError`` if ``key`` has nothing running.
        """
        self._running.remove(key)
        if key in self._waiting:
            self._ready.append(key)
        return self._dispatch()

    def withdraw(self, key: Hashable, item: T) -> bool:
        """Take a waiting ``item`` out; False if it is not waiting (it was started, or never queued)."""
        queue = self._waiting.get(key)
        if queue is None or item not in queue:
            return False
        queue.remove(item)
        if not queue:
            del self._waiting[key]
            if key not in self._running:
                self._ready.remove(key)
        return True

    def _dispatch(self) -> list[tuple[Hashable, T]]:
        started = []
        while self._ready and len(self._running) < self.workers:
            key = self._ready.popleft()
            queue = self._waiting[key]
            started.append((key, queue.popleft()))
            if not queue:
                del self._waiting[key]
            self._running.add(key)
        return started
