"""Pre-copy planning: when to send another round, throttle, or stop and copy.

A sans-IO state machine in the style of aioquic: the caller reports what
each round cost, with the time passed in, and asks what to do next.  It
never sleeps, sends or reads a clock, so convergence and throttling are
tested in memory with a fake clock.

The estimator follows QEMU's: the link's throughput is measured from the
rounds already sent, and the expected blackout of stopping now is the
dirty bytes still owed divided by that throughput, plus one round trip.
When it fits the downtime budget, stop.  When the workload dirties pages
faster than they can be sent, throttle it (QEMU calls this auto-converge)
by taking a growing share of its run time; after ``max_rounds``, stop
regardless, so a migration always converges.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# 300 ms is QEMU's default downtime limit (migration/options.c); these
# memories are far smaller than VM memories, so aim well below it, near
# Google's 50 ms median blackout (VEE 2018).
DEFAULT_DOWNTIME_BUDGET_S = 0.03


@dataclass(frozen=True, kw_only=True)
class PrecopyConfig:
    """Limits of one pre-copy migration."""

    downtime_budget_s: float = DEFAULT_DOWNTIME_BUDGET_S
    max_rounds: int = 20
    #: rounds with no progress before throttling one step more
    stall_rounds: int = 2
    #: shares of the workload's run time taken away, step by step (QEMU's
    #: cpu-throttle-initial 20, increment 10, here coarser)
    throttle_steps: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.95)
    #: a round counts as progress if it leaves fewer than this share of the
    #: previous round's dirty pages
    progress_ratio: float = 0.9


class Action(enum.Enum):
    SEND_ROUND = "send_round"
    STOP_AND_COPY = "stop_and_copy"


@dataclass(frozen=True)
class Decision:
    """What to do next, and how hard to throttle the workload meanwhile."""

    action: Action
    throttle: float
    reason: str
    expected_blackout_s: float


@dataclass
class PrecopyPlanner:
    """Decides round by round; feed it ``round_sent`` after every round."""

    config: PrecopyConfig = field(default_factory=PrecopyConfig)
    rtt_s: float = 0.0
    rounds: int = 0
    bytes_sent: int = 0
    pages_sent: int = 0
    throttle_level: int = 0  # index+1 into throttle_steps; 0 = none
    _throughput_bps: float | None = None
    _bytes_per_page: float | None = None
    _last_dirty: int | None = None
    _stalled: int = 0
    _started_s: float | None = None
    _dirty_rate_pps: float = 0.0

    @property
    def throttle(self) -> float:
        return self.config.throttle_steps[self.throttle_level - 1] if self.throttle_level else 0.0

    @property
    def dirty_pages_per_s(self) -> float:
        return self._dirty_rate_pps

    def start(self, now: float) -> None:
        self._started_s = now

    def expected_blackout_s(self, dirty_pages: int) -> float:
        """Time to send ``dirty_pages`` at the measured throughput, plus one RTT."""
        if self._throughput_bps is None:
            return float("inf") if dirty_pages else self.rtt_s
        per_page = self._bytes_per_page or 4096.0
        return dirty_pages * per_page / self._throughput_bps + self.rtt_s

    def round_sent(self, *, pages: int, wire_bytes: int, duration_s: float, dirty_after: int,
                   now: float) -> Decision:
        """Record a finished round and decide the next step.

        ``pages`` and ``wire_bytes`` are what the round carried,
        ``duration_s`` how long sending it took, and ``dirty_after`` how
        many pages the workload dirtied meanwhile (owed to the next round).
        """
        self.rounds += 1
        self.pages_sent += pages
        self.bytes_sent += wire_bytes
        if duration_s > 0 and wire_bytes > 0:
            rate = wire_bytes / duration_s
            # A round that carried little is a poor throughput sample; weight by size.
            self._throughput_bps = rate if self._throughput_bps is None else (
                0.5 * self._throughput_bps + 0.5 * rate)
        if pages:
            per_page = wire_bytes / pages
            self._bytes_per_page = per_page if self._bytes_per_page is None else (
                0.5 * self._bytes_per_page + 0.5 * per_page)
        if duration_s > 0:
            self._dirty_rate_pps = dirty_after / duration_s
        expected = self.expected_blackout_s(dirty_after)
        cfg = self.config
        if expected <= cfg.downtime_budget_s:
            return Decision(Action.STOP_AND_COPY, self.throttle, "fits the downtime budget", expected)
        if self.rounds >= cfg.max_rounds:
            return Decision(Action.STOP_AND_COPY, self.throttle, f"round limit {cfg.max_rounds} reached", expected)
        if self._last_dirty is not None and dirty_after > self._last_dirty * cfg.progress_ratio:
            self._stalled += 1
        else:
            self._stalled = 0
        self._last_dirty = dirty_after
        reason = "converging"
        if self._stalled >= cfg.stall_rounds:
            self._stalled = 0
            if self.throttle_level < len(cfg.throttle_steps):
                self.throttle_level += 1
                reason = f"dirtying outpaces the link: throttle to {self.throttle:.0%}"
            else:
                return Decision(Action.STOP_AND_COPY, self.throttle, "not converging at full throttle", expected)
        return Decision(Action.SEND_ROUND, self.throttle, reason, expected)
