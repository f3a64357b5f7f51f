"""A move's final round, made while calls wait: ``frozen_round`` freezes, encodes and reads the commit's facts in one trip.

Pre-copy's final delta is small, and stop-copy's whole state where the
memory may move, so they are encoded whole in that trip and go beside the
commit (``Migration._final_round``); a stop-copy round of a memory that
never moves is streamed instead (``Transfer._frozen_whole``).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import snapshot
from nodes import Host

from . import _chunks
from . import _hostops as ops

__all__ = ["FrozenRound", "frozen_round"]


class FrozenRound(NamedTuple):
    """A final round as ``frozen_round`` makes it: its pieces, pages and commit facts, and the seconds each part took."""

    pieces: list[bytes]
    pages: int
    facts: tuple[int, int]  # ``ops.commit_facts``
    capture_s: float
    encode_s: float


def frozen_round(delta: bool, host: Host, workload: str, size: int) -> FrozenRound:
    """Freeze, read the commit's facts and encode the final round in ``size`` pieces, in one thread trip.

    The round is what changed since the last (``delta``: pre-copy) or the
    whole state (stop-copy), encoded from the frozen memory in place
    (``Held.read_paused``): copying it out first cost a 256 MiB stop-copy
    round 187-216 ms while calls waited.  Calls wait until the commit, and
    each trip to a worker thread and back is a wait of its own (0.1-0.5 ms
    on an idle 2-CPU node, over 2 ms while both nodes stream a round).
    Raises what the capture raises, frozen or not: the caller thaws.
    """
    t0 = time.perf_counter()
    ops.freeze(host, workload)
    facts = ops.commit_facts(host, workload)
    captured: list[float] = []

    def encode(snap: snapshot.Snapshot) -> tuple[list[bytes], int]:
        captured.append(time.perf_counter())
        return _chunks.encode(snap, size), snap.page_count

    pieces, pages = ops.read_paused(host, workload, encode, delta)
    return FrozenRound(pieces, pages, facts, captured[0] - t0, time.perf_counter() - captured[0])
