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

_Job = tuple[Callable[[], Any], trio.lowlevel.TrioToken, trio.lowlevel.Task]
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
        func, token, task = _jobs.get()
        result = outcome.capture(func)
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)
        except trio.RunFinishedError:  # the run ended under the job: nobody waits for it
            pass
        del func, result


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
    _jobs.put((lambda: func(*args), trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()))

    def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.FAILED  # queued or running: its outcome wakes us

    result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return result
