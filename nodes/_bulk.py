"""Bulk work at a lower CPU priority: ``run_bulk`` runs a function on the node's bulk thread.

A migration's rounds are CPU-bound on both nodes: the source encodes
(zstd) and the target decodes a round while both event loops encrypt,
decrypt and answer calls, on a 2-CPU machine with the application's own
process beside them.  When every CPU is busy the scheduler made callers
wait: in alternated runs of the handover suite (1 GiB dirtier, pre-copy,
loopback), the largest gap between an application's calls was 9.4-48.3 ms
(median 11.7) with the encoding and decoding at the event loops' priority,
and 5.8-10.2 ms (median 7.3) with them on a thread at nice 10, which gets
the CPU only when the loops and the callers' threads leave it.  Only work
no caller waits for belongs here: the source's rounds sent while the
workload runs use it, and so does the target's decoding of a first round
sent while the workload runs (``MIncoming.live``: pre-copy, dual, a
standby's feed); a final round (calls held), the target's later rounds
(it cannot tell the final one's chunks from others) and a stop-copy
move's only round do not.

The thread is one per process, started on first use and kept: a thread's
nice value can be raised without privilege but not lowered again, so work
that must not wait (calls, a migration's freeze and commit) never runs on
it.  Jobs run one at a time, in the order given; a job cannot be cancelled
once it is queued (it is short: a few pieces of a round's encoding, or one chunk's
decoding), and cancellation reaches the caller when it ends.

A job's end reaches its caller through a pipe of its own, which the thread
writes and closes holding no lock anyone else takes.  It used to go
through ``TrioToken.run_sync_soon``, which holds the run's entry-queue
lock while it writes the loop's wakeup socket: that write wakes the event
loop, which then takes the CPU from the nice-10 thread before it lets the
lock go.  Traced system-wide in a 1 GiB pre-copy move (uprobes on
libpython's take_gil/drop_gil and the scheduler's switches and wake-ups),
the bulk thread waited 18 ms for a CPU holding that lock; the call worker
that had just run a call blocked on it for 13.5 ms to report back, the
event loop slept meanwhile, and the client saw a 25 ms gap.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

__all__ = ["BULK_NICE", "run_bulk"]

logger = logging.getLogger(__name__)

#: The nice value of the bulk thread, or the process's if that is higher (its other threads keep the process's).
BULK_NICE = 10

T = TypeVar("T")
_PR_SET_NAME = 15  # prctl(2)


class _Job:
    """A function for the bulk thread, its outcome once run, and the write end of the pipe its caller waits on."""

    __slots__ = ("func", "result", "done")

    def __init__(self, func: Callable[[], Any], done: int) -> None:
        self.func: Callable[[], Any] | None = func
        self.result: outcome.Outcome[Any] | None = None
        self.done = done


_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_started = threading.Lock()
_thread: threading.Thread | None = None


def _serve() -> None:
    tid = threading.get_native_id()
    _name_thread(b"wm-bulk")
    try:  # never above the priority the process runs at (a nice node stays as nice)
        os.setpriority(os.PRIO_PROCESS, tid, max(BULK_NICE, os.getpriority(os.PRIO_PROCESS, tid)))  # this thread
    except OSError as exc:  # a container may forbid it: the work still runs, at the usual priority
        logger.warning("bulk work runs at the usual priority: %s", exc)
    while True:
        job = _jobs.get()
        func, job.func = job.func, None
        assert func is not None
        job.result = outcome.capture(func)
        del func
        try:
            os.write(job.done, b"\0")  # the caller reads the outcome once it sees this
        except OSError:  # the caller is gone (its run ended under the job): nobody waits for it
            pass
        finally:
            os.close(job.done)
        del job


def _name_thread(name: bytes) -> None:
    """Give the calling thread ``name`` in the kernel too (top -H, perf, /proc/.../comm), where Linux allows it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the Python name still shows in logs
        pass


def _ensure_thread() -> None:
    global _thread
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="wm-bulk", daemon=True)
            _thread.start()


async def run_bulk(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` on the bulk thread, after the jobs queued before it; its result or its exception."""
    await trio.lowlevel.checkpoint_if_cancelled()
    _ensure_thread()
    ended, done = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        job = _Job(lambda: func(*args), done)
        _jobs.put(job)
        with trio.CancelScope(shield=True):  # queued or running, it cannot be taken back: wait for its outcome
            await trio.lowlevel.wait_readable(ended)
    finally:
        os.close(ended)  # the thread closes ``done``
    assert job.result is not None  # set before the pipe was written
    result: T = job.result.unwrap()
    return result
