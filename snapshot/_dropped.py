"""Reading and setting which passive segments of a live instance are dropped.

Works through the exports ``_segments`` has ``prepare`` add: ``probe``,
``drop`` and ``count`` over ranges of segment indices, per kind.  A probe
call traps at the first dropped segment of its range and leaves that
segment's index in ``__wm_probe_at``; the scan goes on after it.  Dropping
cannot be undone, so what an instance is known to have dropped is kept
with its layout and never probed again: a capture probes only the
segments that were live at the previous one, and none at all once every
segment is known to be dropped.  A capture makes one call per range of
segments not known to be dropped, plus one per segment dropped since;
a restore one per run of dropped segments to check their indices, the
same to drop them, and a capture's worth to read what the target dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import wasmtime

from ._errors import IncompatibleSnapshotError, InvalidModuleError
from ._segments import DATA, KINDS, PROBE_AT, export_name
from ._state import DroppedSegments, is_int

if TYPE_CHECKING:
    from ._instance import ExportLookup

_DROPPED_TRAP = {DATA: wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS, "elem": wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS}
_NAMES = {DATA: "data segment", "elem": "element segment"}


@dataclass
class _Kind:
    kind: str
    probe: wasmtime.Func
    drop: wasmtime.Func
    count: wasmtime.Func
    total: wasmtime.Global
    end: wasmtime.Global
    known: tuple[int, ...] = ()  # dropped, as far as this process saw; sorted
    extent: tuple[int, int] | None = None  # (total, end), read once

    def _extent(self, store: wasmtime.Storelike) -> tuple[int, int]:
        if self.extent is None:
            self.extent = (self.total.value(store), self.end.value(store))
        return self.extent

    def _scan(self, store: wasmtime.Storelike, at: wasmtime.Global, lo: int, hi: int) -> list[int]:
        """The segments of [lo, hi) dropped in the instance."""
        found: list[int] = []
        while lo < hi:
            try:
                self.probe(store, lo, hi)
                return found
            except wasmtime.Trap as trap:
                if trap.trap_code != _DROPPED_TRAP[self.kind]:
                    raise
            k = at.value(store)
            if not lo <= k < hi:
                raise InvalidModuleError(f"{_NAMES[self.kind]} probe stopped outside its range; "
                                         "the instance's __wm_ exports are not what prepare made")
            found.append(k)
            lo = k + 1
        return found

    def read(self, store: wasmtime.Storelike, at: wasmtime.Global) -> tuple[int, ...]:
        total, end = self._extent(store)
        if len(self.known) < total:  # else every probed segment is known to be dropped: nothing to ask
            found: list[int] = []
            lo = 0
            for k in self.known + (end,):
                if k > lo:
                    found += self._scan(store, at, lo, k)
                lo = k + 1
            if found:
                self.known = tuple(sorted(self.known + tuple(found)))
        return self.known

    def check(self, store: wasmtime.Storelike, at: wasmtime.Global, dropped: tuple[int, ...]) -> None:
        """Refuse ``dropped`` unless it names probed segments and holds every segment the instance dropped."""
        what = _NAMES[self.kind]
        if not all(is_int(k) and k >= 0 for k in dropped) or any(a >= b for a, b in zip(dropped, dropped[1:])):
            raise IncompatibleSnapshotError(f"dropped {what}s are not rising segment indices: {dropped!r}")
        _, end = self._extent(store)
        if dropped and dropped[-1] >= end:
            raise IncompatibleSnapshotError(f"snapshot says {what} {dropped[-1]} is dropped, but the module "
                                            f"has no passive {what} {dropped[-1]} of non-zero length")
        for lo, hi in _runs(dropped):
            if self.count(store, lo, hi) != hi - lo:
                missing = next(k for k in range(lo, hi) if self.count(store, k, k + 1) != 1)
                raise IncompatibleSnapshotError(f"snapshot says {what} {missing} is dropped, but the module "
                                                f"has no passive {what} {missing} of non-zero length")
        extra = set(self.read(store, at)) - set(dropped)
        if extra:
            raise IncompatibleSnapshotError(f"{what} {min(extra)} is dropped in the target but not in the snapshot; "
                                            "a dropped segment cannot come back (restore into a fresh instance)")

    def apply(self, store: wasmtime.Storelike, dropped: tuple[int, ...]) -> None:
        for lo, hi in _runs(dropped):
            self.drop(store, lo, hi)
        self.known = tuple(dropped)


def _runs(indices: tuple[int, ...]) -> list[tuple[int, int]]:
    """Maximal runs [lo, hi) of consecutive values in sorted ``indices``."""
    out: list[list[int]] = []
    for k in indices:
        if out and out[-1][1] == k:
            out[-1][1] = k + 1
        else:
            out.append([k, k + 1])
    return [(a, b) for a, b in out]


@dataclass
class SegmentProbes:
    """An instance's segment exports, and what it is known to have dropped."""

    at: wasmtime.Global
    kinds: dict[str, _Kind]

    @classmethod
    def find(cls, exports: ExportLookup) -> SegmentProbes | None:
        """The probes among an instance's exports; None for a module without passive segments."""
        at = exports.get(PROBE_AT)
        if at is None:
            return None
        if not isinstance(at, wasmtime.Global):
            raise InvalidModuleError(f"export {PROBE_AT!r} of a prepared instance is not a global")
        kinds = {}
        for kind in KINDS:
            probe, drop, count = (exports.get(export_name(kind, what)) for what in ("probe", "drop", "count"))
            total, end = (exports.get(export_name(kind, what)) for what in ("total", "end"))
            if (isinstance(probe, wasmtime.Func) and isinstance(drop, wasmtime.Func)
                    and isinstance(count, wasmtime.Func)
                    and isinstance(total, wasmtime.Global) and isinstance(end, wasmtime.Global)):
                kinds[kind] = _Kind(kind, probe, drop, count, total, end)
        return cls(at, kinds)

    def read(self, store: wasmtime.Storelike) -> DroppedSegments:
        """Which passive segments the instance has dropped now."""
        return DroppedSegments(*(self.kinds[k].read(store, self.at) if k in self.kinds else () for k in KINDS))

    def check(self, store: wasmtime.Storelike, dropped: DroppedSegments) -> None:
        """Raise IncompatibleSnapshotError unless the instance can be given exactly ``dropped``."""
        for kind, indices in zip(KINDS, (dropped.data, dropped.elems)):
            if kind in self.kinds:
                self.kinds[kind].check(store, self.at, indices)
            elif indices:
                raise IncompatibleSnapshotError(f"snapshot says {_NAMES[kind]} {indices[0]} is dropped, "
                                                f"but the module has no passive {_NAMES[kind]}s")

    def apply(self, store: wasmtime.Storelike, dropped: DroppedSegments) -> None:
        """Drop what ``dropped`` names (after ``check``)."""
        for kind, indices in zip(KINDS, (dropped.data, dropped.elems)):
            if kind in self.kinds:
                self.kinds[kind].apply(store, indices)


def check_dropped(store: wasmtime.Storelike, probes: SegmentProbes | None, dropped: DroppedSegments) -> None:
    """Raise IncompatibleSnapshotError unless an instance with ``probes`` can take ``dropped``.

    ``probes`` is None for a module without passive segments.
    """
    if probes is not None:
        probes.check(store, dropped)
    elif dropped:
        raise IncompatibleSnapshotError("snapshot names dropped segments, but the module has no passive segments")
