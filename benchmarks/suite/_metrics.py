"""What the suite computes from its measurements: pure functions, no I/O and no clock.

* ``client_blackout``: the largest gap in a steady stream of calls while a
  move runs, minus the stream's steady-state gap; and the handover gap, from
  the last call the source served to the first the target served.
* ``latency_stats``: p50, p99 and max of call latencies.
* ``physical_floor``: the least blackout the link allows a move that
  stops the source: the final dirty bytes divided by the bandwidth, plus
  one round trip.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CallSample:
    """One call of the client's stream, by the client's clock (seconds)."""

    started_s: float
    finished_s: float
    node: str = ""  # the node that served it ("" when not known)

    @property
    def latency_s(self) -> float:
        return self.finished_s - self.started_s


@dataclass(frozen=True)
class ClientBlackout:
    """The client's view of a move.

    ``largest_gap_s`` is the longest time between two consecutive call
    completions among the gaps that overlap the move; ``steady_gap_s`` the
    larger of the median gaps before and after the move (after a move the
    path may be longer, and a slower steady stream is not a blackout);
    ``blackout_s`` the difference, never below zero.
    ``largest_gap_started_s`` is when the largest gap began, from the
    start of the move (negative if before it; None without such a gap):
    it tells a freeze at the end of a move from a stall at its start.
    ``handover_s`` is the switch as the client saw it: from the last
    completion of a call the source served to the first of one the target
    served (redirects included), as a node's report measures its client
    blackout (so the steady gap is not taken off: an undisturbed stream has
    one call period there).  None when the calls do not say which node
    served them or no call completed on one side.
    """

    largest_gap_s: float
    steady_gap_s: float
    blackout_s: float
    largest_gap_started_s: float | None = None
    handover_s: float | None = None


@dataclass(frozen=True)
class LatencyStats:
    """Nearest-rank percentiles of call latencies (seconds)."""

    count: int
    p50_s: float
    p99_s: float
    max_s: float


@dataclass(frozen=True)
class Floor:
    """The physical floor of one move's blackout, and what it was computed from."""

    final_dirty_bytes: float
    bandwidth_bytes_per_s: float
    rtt_s: float
    floor_s: float


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of ``values``.  Raises ValueError if empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_stats(latencies_s: Sequence[float]) -> LatencyStats | None:
    """p50, p99 and max of ``latencies_s``; None when there are none."""
    if not latencies_s:
        return None
    return LatencyStats(count=len(latencies_s), p50_s=percentile(latencies_s, 0.5),
                        p99_s=percentile(latencies_s, 0.99), max_s=max(latencies_s))


def client_blackout(calls: Sequence[CallSample], move_started_s: float, move_ended_s: float, *,
                    source: str = "", target: str = "") -> ClientBlackout:
    """The blackout a client streaming ``calls`` saw during a move from ``move_started_s`` to ``move_ended_s``.

    Gaps are measured between consecutive completions.  A gap counts as
    during the move if it overlaps [started, ended]; gaps wholly before or
    wholly after are steady.  With no gap overlapping the move (no calls
    completed around it), the largest gap is 0.  Raises ValueError if the
    move ends before it starts.
    """
    if move_ended_s < move_started_s:
        raise ValueError(f"move ends ({move_ended_s}) before it starts ({move_started_s})")
    done = sorted(c.finished_s for c in calls)
    before, after = [], []
    largest, largest_at = 0.0, None
    for prev, cur in zip(done, done[1:]):
        gap = cur - prev
        if cur < move_started_s:
            before.append(gap)
        elif prev > move_ended_s:
            after.append(gap)
        elif largest_at is None or gap > largest:
            largest, largest_at = gap, prev - move_started_s
    steady = max((statistics.median(g) for g in (before, after) if g), default=0.0)
    return ClientBlackout(largest_gap_s=largest, steady_gap_s=steady, blackout_s=max(0.0, largest - steady),
                          largest_gap_started_s=largest_at, handover_s=_handover(calls, source, target))


def _handover(calls: Sequence[CallSample], source: str, target: str) -> float | None:
    """The gap from the source's last completed call to the target's first; or None."""
    if not source or not target:
        return None
    at_source = [c.finished_s for c in calls if c.node == source]
    at_target = [c.finished_s for c in calls if c.node == target]
    if not at_source or not at_target:
        return None
    last, first = max(at_source), min(at_target)
    return first - last if first > last else None


def calls_during(calls: Sequence[CallSample], move_started_s: float, move_ended_s: float) -> list[CallSample]:
    """The calls whose [started, finished] overlaps the move."""
    return [c for c in calls if c.finished_s >= move_started_s and c.started_s <= move_ended_s]


def physical_floor(*, dirty_bytes_per_s: float, rtt_s: float, bandwidth_bytes_per_s: float) -> Floor:
    """The least blackout a move that stops the source can have on this link.

    The final dirty bytes are what the workload dirties during one round
    trip: however many rounds came before, the last round's pages are
    written while its request and acknowledgement cross the link, so they
    must be sent while the source is stopped.  The floor is those bytes at
    the link's bandwidth, plus the round trip of the hand-over itself.
    Raises ValueError for a bandwidth that is not positive or negative
    rates.
    """
    if bandwidth_bytes_per_s <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_bytes_per_s}")
    if dirty_bytes_per_s < 0 or rtt_s < 0:
        raise ValueError("dirty rate and round trip must not be negative")
    final = dirty_bytes_per_s * rtt_s
    return Floor(final_dirty_bytes=final, bandwidth_bytes_per_s=bandwidth_bytes_per_s, rtt_s=rtt_s,
                 floor_s=final / bandwidth_bytes_per_s + rtt_s)


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing or the reference is not positive."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference
