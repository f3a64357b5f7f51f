"""A workload's lifecycle record: its lease, whether it outlives its application, and its schedules.

A workload spawned with a name (``Cluster.spawn(..., name=)``) carries a
``Lifecycle``, kept by its owner beside the call ledger (``_state.Owned``):

* ``lease_s``: how long the workload lives without hearing from an
  application.  Applications renew it by calling, posting to or touching
  the workload (``MTouch``).  A workload that is not ``detached`` has its
  application's grace period as its lease; a ``detached`` one its ``ttl``,
  or none (it lives until removed);
* ``schedules``: exports the owner calls every so many seconds, whether
  an application is connected or not (``_life_node``).

The owner keeps times on a monotonic clock; the wire form (an MCommit to a
new owner, the shutdown checkpoint) holds wall-clock times instead, so a
deadline means the same after a move or a restart.  ``from_spec`` and
``from_wire`` are strict: anything malformed or out of bounds raises
``LifecycleError`` and nothing is made.  Pure data, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeGuard

#: Schedules a workload may have, at most.
MAX_SCHEDULES = 16
#: The longest export name a schedule may call.
MAX_EXPORT_CHARS = 256
#: Bounds of a schedule's period and of a lease, in seconds.
MIN_EVERY_S = 0.01
MAX_SECONDS = 10 * 365 * 86400.0
#: A lease is "expiring" (no application attached) once this share of it
#: has passed unrenewed: applications renew at a third of it.
DETACHED_AFTER = 0.5


class LifecycleError(ValueError):
    """A lifecycle spec or record is malformed or out of bounds."""


@dataclass
class Schedule:
    """Call ``export`` every ``every_s`` seconds; next when the clock reaches ``due``; ``fired`` so far."""

    export: str
    every_s: float
    due: float
    fired: int = 0
    running: bool = field(default=False, compare=False)  # a firing is under way (not part of the wire form)


@dataclass
class Lifecycle:
    """The lease and schedules of one workload, on its owner's monotonic clock."""

    detached: bool
    lease_s: float | None  # None: never expires
    seen: float  # when an application was last heard from
    gone: bool = False  # its application said goodbye since
    schedules: list[Schedule] = field(default_factory=list)

    # --- the lease ---------------------------------------------------------

    def touch(self, now: float) -> None:
        """An application was heard from: the lease runs from ``now``."""
        self.seen, self.gone = now, False

    def goodbye(self, now: float) -> None:
        """The application said it leaves: the lease runs from ``now``, and the workload shows as expiring."""
        self.seen, self.gone = now, True

    @property
    def expires(self) -> float | None:
        """When the workload expires unless an application is heard from; None for never."""
        return None if self.lease_s is None else self.seen + self.lease_s

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def state(self, now: float) -> str:
        """"expiring" once no application is attached and a lease runs out, else "running"."""
        if self.lease_s is None:
            return "running"
        unrenewed = now - self.seen >= self.lease_s * DETACHED_AFTER
        return "expiring" if self.gone or unrenewed else "running"

    # --- schedules ----------------------------------------------------------

    def due(self, now: float) -> list[Schedule]:
        return [s for s in self.schedules if s.due <= now]

    def fired(self, schedule: Schedule, now: float) -> None:
        """``schedule`` ran: its next run is one period on, skipping periods missed meanwhile."""
        schedule.fired += 1
        missed = max(0, math.floor((now - schedule.due) / schedule.every_s))
        schedule.due += (missed + 1) * schedule.every_s

    def next_deadline(self) -> float | None:
        """The earliest time something is due: a schedule, or the expiry."""
        times = [s.due for s in self.schedules]
        if self.expires is not None:
            times.append(self.expires)
        return min(times, default=None)

    # --- wire forms ----------------------------------------------------------

    def to_wire(self, now: float, wall: float, *, settle: bool = False) -> dict:
        """The msgpack-able record, times on the wall clock (``wall`` is the wall time at ``now``).

        ``settle`` counts a firing under way as done (for a record that
        outlives this process: that firing is not run again from it).
        """
        return {"detached": self.detached, "lease_s": self.lease_s, "seen_at": wall + (self.seen - now),
                "gone": self.gone,
                "schedules": [[s.export, s.every_s, wall + (s.due - now), s.fired + (settle and s.running)]
                              for s in self.schedules]}

    @classmethod
    def from_wire(cls, data: object, now: float, wall: float) -> Lifecycle:
        """The record ``to_wire`` made, on this clock.  Raises LifecycleError."""
        data = _map(data, {"detached", "lease_s", "seen_at", "gone", "schedules"}, "lifecycle record")
        items = data["schedules"]
        if not isinstance(items, (list, tuple)) or len(items) > MAX_SCHEDULES:
            raise LifecycleError(f"schedules must be a list of at most {MAX_SCHEDULES}, not {items!r}")
        schedules = []
        for item in items:
            if not isinstance(item, (list, tuple)) or len(item) != 4:
                raise LifecycleError(f"a schedule is [export, every_s, due_at, fired], not {item!r}")
            export, every_s, due_at, fired = item
            if not _is_count(fired):
                raise LifecycleError(f"fired {fired!r} is not a count")
            schedules.append(Schedule(_export(export), _seconds(every_s, "every_s", MIN_EVERY_S),
                                      now + (_time(due_at) - wall), fired))
        _unique(schedules)
        return cls(detached=_bool(data["detached"], "detached"), lease_s=_lease(data["lease_s"]),
                   seen=now + (_time(data["seen_at"]) - wall), gone=_bool(data["gone"], "gone"),
                   schedules=schedules)

    @classmethod
    def from_spec(cls, spec: object, now: float) -> Lifecycle:
        """A new workload's lifecycle from what its application asked for (``spec``).

        ``spec`` is {"detached": bool, "lease_s": seconds or None, "every":
        {export: seconds}}; the first runs are one period from ``now``.
        Raises LifecycleError.
        """
        spec = _map(spec, {"detached", "lease_s", "every"}, "lifecycle spec")
        every = spec["every"]
        if not isinstance(every, dict) or len(every) > MAX_SCHEDULES:
            raise LifecycleError(f"every must map at most {MAX_SCHEDULES} exports to seconds, not {every!r}")
        schedules = []
        for export, every_s in every.items():
            period = _seconds(every_s, f"every[{export!r}]", MIN_EVERY_S)
            schedules.append(Schedule(_export(export), period, now + period))
        return cls(detached=_bool(spec["detached"], "detached"), lease_s=_lease(spec["lease_s"]), seen=now,
                   schedules=schedules)


def spec(*, detached: bool, lease_s: float | None, every: dict[str, float] | None) -> dict:
    """The spec an application sends with MSpawn (checked here first, so a mistake is a local error)."""
    made = {"detached": detached, "lease_s": lease_s, "every": dict(every or {})}
    Lifecycle.from_spec(made, 0.0)
    return made


def _map(data: object, keys: set[str], what: str) -> dict:
    if not isinstance(data, dict) or set(data) != keys:
        raise LifecycleError(f"a {what} is a map of exactly {sorted(keys)}, not {data!r:.200}")
    return data


def _export(name: object) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_EXPORT_CHARS:
        raise LifecycleError(f"an export name is a string of 1 to {MAX_EXPORT_CHARS} characters, not {name!r:.80}")
    return name


def _unique(schedules: list[Schedule]) -> None:
    if len({s.export for s in schedules}) != len(schedules):
        raise LifecycleError("two schedules call the same export")


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(value: object, what: str, least: float) -> float:
    if not _number(value) or not least <= value <= MAX_SECONDS:
        raise LifecycleError(f"{what} must be seconds from {least} to {MAX_SECONDS:.0f}, not {value!r}")
    return float(value)


def _lease(value: object) -> float | None:
    return None if value is None else _seconds(value, "lease_s", MIN_EVERY_S)


def _time(value: object) -> float:
    if not _number(value) or abs(value) > 1e12:
        raise LifecycleError(f"a time is wall-clock seconds, not {value!r}")
    return float(value)


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise LifecycleError(f"{what} must be true or false, not {value!r}")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
