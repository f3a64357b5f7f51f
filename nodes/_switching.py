"""A shorter interpreter switch interval while some workload is being moved off this host.

While a move copies and encodes a workload's memory in worker threads,
they hold the GIL in stretches (zero-page scans, framing), and the thread
serving calls waits up to ``sys.getswitchinterval()`` (5 ms by default)
for it at every hand-over; a call needs several, so calls stalled for tens
of milliseconds.  ``moving()`` shortens the interval while at least one
move is in flight and puts the old value back when the last one ends
(counted, so overlapping moves restore it once).  Left short all the time it
cost steady-state throughput and p99 (more forced switches), so it is not.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

#: The switch interval while a move is in flight.  0.5 ms left calls of a
#: 1 GiB dual move waiting 15-73 ms while its first round was encoded: a
#: call takes the GIL back after each of its many ctypes calls into
#: wasmtime, and each time waited out the encoder's interval (a 0.2 ms
#: call took 16 ms).  At 0.1 ms the largest gaps were 9-12 ms there.
MOVING_SWITCH_INTERVAL_S = 0.0001

_lock = threading.Lock()
_moves = 0
_saved = 0.0


def moving() -> None:
    """A move started: shorten the switch interval (first move only)."""
    global _moves, _saved
    with _lock:
        if _moves == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved, MOVING_SWITCH_INTERVAL_S))
        _moves += 1


def moved() -> None:
    """A move ended: put the switch interval back once none is in flight."""
    global _moves
    with _lock:
        _moves -= 1
        if _moves == 0:
            sys.setswitchinterval(_saved)


@contextlib.contextmanager
def move_work() -> Iterator[None]:
    """The short switch interval for the length of a block: a target decoding a round in a worker thread.

    At 1 GiB, without it, a target's event loop waited 21-47 ms for the
    decoding thread (zstd, the decoder's loop) between two of its steps.
    """
    moving()
    try:
        yield
    finally:
        moved()


def moves_in_flight() -> int:
    return _moves
