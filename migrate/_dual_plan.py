"""Dual-execution planning: replay the logged calls while calls run, or switch.

A sans-IO planner like ``PrecopyPlanner``: the caller reports what it did
(the cut, each batch the target replayed, the switch, a divergence), with
the times passed in as numbers, and asks what to do next.  It never
sleeps, sends or reads a clock, so it is tested in memory.

After the cut the source keeps serving; every call is logged and the
target replays the log.  While more than ``switch_backlog`` logged calls
wait, they are replayed with calls running (``REPLAY``).  At or below it
the source switches (``SWITCH``): it holds calls, has the rest replayed
and commits.  Waiting for an empty log instead would never end on a slow
link: a call arrives during every round trip.  A divergence the target
reports ends the dual handover (``FALL_BACK``): the target has dropped its
copy, and the move sends it again with pre-copy.

Calls are held twice, at the cut and at the switch; the blackout is the
longer of the two holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: Switch once at most this many logged calls wait to be replayed; the
#: switch replays them (one round trip per frame of them) while calls are held.
DEFAULT_SWITCH_BACKLOG = 32


@dataclass(frozen=True, kw_only=True)
class DualConfig:
    """Limits of one dual handover."""

    switch_backlog: int = DEFAULT_SWITCH_BACKLOG


class DualPhase(enum.Enum):
    CUTTING = "cutting"            # pre-copy rounds; the cut is not taken yet
    FOLLOWING = "following"        # the target replays the log while calls run
    SWITCHING = "switching"        # calls held: the last replay, the digest, the commit
    COMMITTED = "committed"        # the target owns the workload
    SWITCH_FAILED = "switch_failed"  # the switch ended without a commit
    FELL_BACK = "fell_back"        # the target diverged; the move goes on with pre-copy


class DualStep(enum.Enum):
    REPLAY = "replay"        # have the target replay the drained calls; calls keep running
    SWITCH = "switch"        # hold calls, have the rest replayed, compare digests, commit
    FALL_BACK = "fall_back"  # the target dropped its copy: send it again with pre-copy


@dataclass(frozen=True)
class DualDecision:
    """What to do next with the ``entries`` logged calls drained so far."""

    step: DualStep
    entries: int
    reason: str


class DualOrderError(RuntimeError):
    """The planner was told of a step that cannot happen in its phase (a bug in the caller)."""


@dataclass
class DualPlanner:
    """Decides, from the backlog of logged calls, whether to replay a batch or to switch."""

    config: DualConfig = field(default_factory=DualConfig)
    phase: DualPhase = DualPhase.CUTTING
    forwarded: int = 0  # logged calls the target replayed after the cut
    cut_s: float = 0.0  # how long calls were held for the cut
    switch_s: float = 0.0  # how long calls were held for the switch

    @property
    def blackout_s(self) -> float:
        """The longest time calls were held: at the cut or at the switch."""
        return max(self.cut_s, self.switch_s)

    def cut_taken(self, *, held_from_s: float, held_until_s: float) -> None:
        """The cut was copied, with calls held from ``held_from_s`` to ``held_until_s``."""
        self._expect(DualPhase.CUTTING, what="the cut")
        self.cut_s = held_until_s - held_from_s
        self.phase = DualPhase.FOLLOWING

    def backlog(self, waiting: int) -> DualDecision:
        """``waiting`` logged calls have been drained from the log: replay them, or switch?"""
        self._expect(DualPhase.FOLLOWING, what="a backlog")
        if waiting > self.config.switch_backlog:
            return DualDecision(DualStep.REPLAY, waiting,
                                f"{waiting} logged calls wait (more than {self.config.switch_backlog})")
        self.phase = DualPhase.SWITCHING
        return DualDecision(DualStep.SWITCH, waiting, f"caught up to {waiting} logged calls")

    def replayed(self, count: int) -> None:
        """The target replayed ``count`` more logged calls."""
        self._expect(DualPhase.FOLLOWING, DualPhase.SWITCHING, what="a replay")
        if count < 0:
            raise ValueError(f"replayed {count} calls")
        self.forwarded += count

    def switch_ended(self, *, held_from_s: float, held_until_s: float, committed: bool) -> None:
        """The switch held calls from ``held_from_s`` to ``held_until_s`` and committed or not."""
        self._expect(DualPhase.SWITCHING, what="the end of the switch")
        self.switch_s = held_until_s - held_from_s
        self.phase = DualPhase.COMMITTED if committed else DualPhase.SWITCH_FAILED

    def diverged(self) -> DualDecision:
        """The target refused a replay or the digest as diverged (it dropped its copy)."""
        self._expect(DualPhase.FOLLOWING, DualPhase.SWITCHING, DualPhase.SWITCH_FAILED, what="a divergence")
        self.phase = DualPhase.FELL_BACK
        return DualDecision(DualStep.FALL_BACK, 0, "the target's replay diverged; it dropped its copy")

    def _expect(self, *phases: DualPhase, what: str) -> None:
        if self.phase not in phases:
            raise DualOrderError(f"{what} cannot happen while {self.phase.value}")
