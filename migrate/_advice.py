"""The offload decision (pure): run a workload here, or on which node, over a horizon of work.

For each candidate the model estimates, in seconds::

    transfer = state_bytes / throughput + MOVE_ROUND_TRIPS * rtt     (0 where the workload is)
    calls    = work.calls * rtt                                      (one round trip per call)
    compute  = work.units / (speed * share)
    total    = transfer + calls + compute

* ``state_bytes``: what must cross to run there (the workload's memory
  for a move, the module for a new workload); ``throughput`` and ``rtt``
  are what the application measured to the node (``Cluster.nodes``).
  A move takes ``MOVE_ROUND_TRIPS`` = 3 round trips besides the bytes
  (the target's admission, the last round, the commit).
* ``work.units`` is the compute to be done, in benchmark units: one unit
  is one run of the calibration benchmark (``_calibrate``: a 4-pixel box
  blur of a 256x256 image in the imgfilter workload).  ``speed`` is the
  units per second the node ran it at, measured once per node by the
  application and cached; ``share`` is the part of the node free for it,
  ``max(MIN_SHARE, 1 - load / cores)`` (load being the 1-minute load).
* For "local" (the application's own node) rtt is its loopback ping and
  transfer is 0 if the workload is there already.

The decision is the candidate with the lowest total, except that "local"
is kept unless a node beats it by ``MARGIN`` (20 %): a move is not worth
a small, uncertain gain.  ``Autoplace`` re-decides periodically with
hysteresis: it moves only when the best node beats the current one by
``move_gain`` (30 %) on ``confirm`` (2) evaluations in a row, so an
estimate that flickers around the threshold does not bounce the workload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

LOCAL = "local"
MOVE_ROUND_TRIPS = 3
MIN_SHARE = 0.05
#: A node must beat local by this fraction of local's total to be advised.
MARGIN = 0.2


@dataclass(frozen=True)
class Work:
    """The work over the horizon advice looks at."""

    units: float  # compute, in benchmark units (module docstring)
    calls: int = 1  # calls the application makes over the horizon

    def __post_init__(self) -> None:
        if not self.units >= 0 or not isinstance(self.calls, int) or self.calls < 0:
            raise ValueError(f"Work needs units >= 0 and calls >= 0, got {self.units!r}, {self.calls!r}")


@dataclass(frozen=True)
class Candidate:
    """What the model knows of one place to run (measured by the application)."""

    name: str
    rtt_s: float
    throughput_bytes_per_s: float | None  # None: unknown, no transfer possible unless nothing moves
    speed_units_per_s: float
    load: float = 0.0
    cores: int = 1
    here: bool = False  # the workload (or its module) is there already: nothing to transfer


@dataclass(frozen=True)
class Estimate:
    """The model's seconds for one candidate."""

    transfer_s: float
    calls_s: float
    compute_s: float

    @property
    def total_s(self) -> float:
        return self.transfer_s + self.calls_s + self.compute_s


@dataclass(frozen=True)
class Advice:
    """Where to run: a node name or "local", why, and every candidate's estimate."""

    decision: str
    reason: str
    estimates: Mapping[str, Estimate] = field(default_factory=dict)


def estimate(c: Candidate, work: Work, state_bytes: int) -> Estimate:
    """The model's estimate for ``c`` (module docstring)."""
    if c.here:
        transfer = 0.0
    elif c.throughput_bytes_per_s:
        transfer = state_bytes / c.throughput_bytes_per_s + MOVE_ROUND_TRIPS * c.rtt_s
    else:
        transfer = float("inf")
    share = max(MIN_SHARE, 1.0 - c.load / max(c.cores, 1))
    compute = work.units / (c.speed_units_per_s * share) if work.units else 0.0
    return Estimate(transfer_s=transfer, calls_s=work.calls * c.rtt_s, compute_s=compute)


def advise(local: Candidate, nodes: Sequence[Candidate], work: Work, state_bytes: int, *,
           margin: float = MARGIN) -> Advice:
    """Stay local, or the node whose total beats local's by ``margin``."""
    estimates = {local.name: estimate(local, work, state_bytes)}
    for c in nodes:
        estimates[c.name] = estimate(c, work, state_bytes)
    here = estimates[local.name].total_s
    best = min((c.name for c in nodes), key=lambda n: (estimates[n].total_s, n), default=None)
    if best is None:
        return Advice(LOCAL, "stay local: no other node to run on", estimates)
    there = estimates[best]
    if there.total_s < here * (1 - margin):
        return Advice(best, f"offload to {best}: {there.total_s:.3g} s (transfer {there.transfer_s:.3g} s, "
                            f"calls {there.calls_s:.3g} s, compute {there.compute_s:.3g} s) against "
                            f"{here:.3g} s local", estimates)
    return Advice(LOCAL, f"stay local: {here:.3g} s here; the best node, {best}, would take "
                         f"{there.total_s:.3g} s (transfer {there.transfer_s:.3g} s, calls {there.calls_s:.3g} s, "
                         f"compute {there.compute_s:.3g} s), not {margin:.0%} better", estimates)


@dataclass
class Autoplace:
    """Move-or-stay with hysteresis, fed one set of estimates per evaluation (module docstring)."""

    move_gain: float = 0.3
    confirm: int = 2
    _streak: int = 0
    _best: str = ""

    def step(self, current: str, estimates: Mapping[str, Estimate]) -> str | None:
        """The node to move to now, or None to stay on ``current``."""
        if current not in estimates:
            return None
        best = min(estimates, key=lambda n: (estimates[n].total_s, n))
        if best == current or not estimates[best].total_s < estimates[current].total_s * (1 - self.move_gain):
            self._streak, self._best = 0, ""
            return None
        self._streak = self._streak + 1 if best == self._best else 1
        self._best = best
        if self._streak < self.confirm:
            return None
        self._streak, self._best = 0, ""
        return best
