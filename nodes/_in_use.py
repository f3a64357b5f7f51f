"""Guards on a workload's use: ``InUse`` holds its lock, waits out a pause and wakes it; ``Copying`` keeps its memory."""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable

from ._host_errors import UnknownWorkload
from ._workload import Workload


class NotNow(enum.Enum):
    """The type of ``NOT_NOW``."""

    NOT_NOW = "not now"


#: What ``Host.call_now`` returns when the call cannot run at once on the calling thread.
NOT_NOW = NotNow.NOT_NOW


class InUse:
    """Holds a workload's lock and marks it busy; refuses a removed one.

    With ``guest=True`` (calls and memory access) it also waits out a
    pause, checking under the lock, so nothing runs between a migration's
    final capture and the commit.  ``check_open`` raises ``HostClosed`` if
    the host closed (a removed workload is then reported as that).
    """

    def __init__(self, check_open: Callable[[], None], w: Workload, guest: bool = False) -> None:
        self._check_open = check_open
        self._w = w
        self._guest = guest

    def __enter__(self) -> Workload:
        w = self._w
        w.lock.acquire()
        while self._guest and not w.thawed.is_set() and not w.removed:
            w.lock.release()
            w.thawed.wait()
            w.lock.acquire()
        if w.removed:
            w.lock.release()
            self._check_open()
            raise UnknownWorkload(f"no workload {w.workload_id!r} on this host")
        if w.sleep is not None:
            try:
                w.sleep.wake(w)
            except BaseException:
                w.lock.release()
                raise
        w.busy = True
        return w

    def enter_now(self) -> bool:
        """``__enter__`` without waiting or waking: False, holding nothing, unless it can start at once.

        It cannot if another thread holds the lock, or the workload is
        paused, removed or hibernated (waking it reads a file).  Leave with
        ``__exit__`` after True.
        """
        w = self._w
        if not w.lock.acquire(blocking=False):
            return False
        if not (w.thawed.is_set() and not w.removed and w.sleep is None):
            w.lock.release()
            return False
        w.busy = True
        return True

    def __exit__(self, *exc_info: object) -> None:
        self._w.busy = False
        self._w.last_used = time.monotonic()
        self._w.lock.release()


class Copying:
    """The workload's memory kept from being freed (``Workload.copying_outside``) until ``done``, from any thread."""

    def __init__(self, w: Workload) -> None:
        self._ends: contextlib.AbstractContextManager[None] | None = w.copying_outside()
        self._ends.__enter__()

    def done(self) -> None:
        ends, self._ends = self._ends, None
        if ends is not None:
            ends.__exit__(None, None, None)
