"""The CPU reference of a move: the client's calls while other processes burn the CPU the move used.

A move makes the client's calls slower partly by what it does (holding
calls, the switch) and partly by taking CPU from them: on a 2-CPU machine
that runs the client and both nodes, a 256 MiB move keeps both CPUs about
70% busy for half a second.  To tell the two apart, every move is followed
by a window of the same length without a move, in which one burner process
per CPU, none of them this project's code, is busy for the share of the
time that the move added to the machine's busy share (read from
``/proc/stat``, over the move against the steady stream before it).  The
worst call in that window is what the same amount of unrelated CPU work
costs the call stream on this machine; the worst call during the move is
compared with it and with the steady p99.

A burner runs busy-wait periods of 4 ms (one scheduler tick at HZ=250)
times its duty, then sleeps for the rest of the period, from a start time
on CLOCK_MONOTONIC to an end time, so that Python's start-up (about 20 ms)
falls before the window.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

#: How long the burners are given to start before their window opens.
START_MARGIN_S = 0.3
#: The longest window: a 1 GiB move takes 1-4 s here.
MAX_WINDOW_S = 5.0
#: One busy-then-idle period of a burner.
PERIOD_S = 0.004

_BURNER = """
import sys, time
duty, start, end, period = map(float, sys.argv[1:5])
while time.monotonic() < start:
    time.sleep(min(0.01, max(0.0, start - time.monotonic())))
while (t := time.monotonic()) < end:
    while time.monotonic() - t < period * duty:
        pass
    if duty < 1:
        time.sleep(period * (1 - duty))
"""


@dataclass(frozen=True)
class CpuReference:
    """A window of ``seconds`` without a move, in which ``processes`` burners were each busy ``duty`` of the time.

    ``steady_busy`` and ``move_busy`` are the machine's busy shares (all
    CPUs) the duty was computed from: ``duty = max(0, move_busy - steady_busy)``.
    """

    processes: int
    duty: float
    seconds: float
    steady_busy: float
    move_busy: float


def read_cpu_counters() -> tuple[int, ...]:
    """The machine's CPU time counters, from the "cpu" line of /proc/stat (user, nice, system, idle, iowait, ...)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu":
        raise OSError("/proc/stat does not start with the cpu line")
    return tuple(int(x) for x in fields[1:])


def busy_fraction(before: Sequence[int], after: Sequence[int]) -> float:
    """The share of all CPUs' time that was busy between two readings of ``read_cpu_counters``.

    Idle and iowait (the 4th and 5th counters) are not busy; guest time,
    already counted in user and nice, is left out of the total.  0 when no
    time passed.
    """
    if len(before) != len(after) or len(before) < 5:
        raise ValueError("two readings of /proc/stat's cpu line are needed")
    delta = [b - a for a, b in zip(before, after)][:8]  # user .. steal; guest and guest_nice are within user and nice
    if any(d < 0 for d in delta):
        raise ValueError("CPU counters went backwards")
    total = sum(delta)
    if total == 0:
        return 0.0
    return (total - delta[3] - delta[4]) / total


def reference_for(steady_busy: float, move_busy: float, move_s: float, cpus: int) -> CpuReference:
    """The reference window of a move that kept the machine ``move_busy`` busy for ``move_s`` seconds."""
    if cpus < 1 or move_s < 0 or not (0 <= steady_busy <= 1 and 0 <= move_busy <= 1):
        raise ValueError("busy shares lie in [0, 1], a move's length is not negative, and there is a CPU")
    return CpuReference(processes=cpus, duty=round(max(0.0, move_busy - steady_busy), 3),
                        seconds=min(move_s, MAX_WINDOW_S), steady_busy=steady_busy, move_busy=move_busy)


async def burn(ref: CpuReference) -> tuple[float, float]:
    """Run ``ref``'s burners; return the window (start, end) on trio's clock, once they have exited.

    With a duty of 0 no burner starts and the window is simply waited out.
    """
    start = time.monotonic() + START_MARGIN_S
    end = start + ref.seconds
    to_trio = trio.current_time() - time.monotonic()
    if ref.duty <= 0 or ref.seconds <= 0:
        await trio.sleep_until(end + to_trio)
        return start + to_trio, end + to_trio
    argv = [sys.executable, "-S", "-c", _BURNER, str(min(1.0, ref.duty)), repr(start), repr(end), str(PERIOD_S)]
    async with trio.open_nursery() as nursery:
        for _ in range(ref.processes):
            nursery.start_soon(trio.run_process, argv)
    return start + to_trio, end + to_trio


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
