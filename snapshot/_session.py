"""Full captures followed by deltas of what changed since the previous one."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import wasmtime

from ._capture import CaptureBuffers, capture, copy_nonzero, copy_runs, live_runs
from ._dirty import DirtyTracker, UffdDirtyTracker, extent_of, open_tracker
from ._errors import LocalSnapshotError
from ._instance import layout, memory_view, read_dropped, read_globals, read_tables, record_state_id
from ._pages import PAGE_BYTES, page_ranges
from ._snapshot import Snapshot
from ._state import DroppedSegments, GlobalState, MemoryState, TableState

if TYPE_CHECKING:
    from ._dirty import _Extent


class StateTracker:
    """Track a prepared instance's memories so deltas can follow a full capture.

    ``capture(store)`` takes a full snapshot and starts tracking;
    ``capture_delta(store)`` returns the pages written since the previous
    capture (full or delta), with globals and tables, as a delta whose
    ``base_id`` names that capture.  Applying the chain in order, with
    ``apply_delta`` or ``restore``, reproduces the state byte for byte.

    ``backend`` is passed to ``open_tracker``: "uffd", "compare" or "auto".
    Raises DirtyTrackingError if the backend cannot be set up.  Close it (or
    use it as a context manager) to release the kernel registrations.
    """

    def __init__(self, store: wasmtime.Store, instance: wasmtime.Instance, *, backend: str = "auto") -> None:
        self._arm(StateTracker.arming(store, instance, backend=backend))

    @staticmethod
    def arming(store: wasmtime.Store, instance: wasmtime.Instance, *, backend: str = "auto") -> "Arming":
        """Read what arming the trackers needs now, holding the store; ``Arming.arm()`` arms them without it.

        Write-protecting a memory takes 5 to 9 ms per 256 MiB here, 18 to
        26 ms per GiB; only reading the memories' extents needs the store,
        so calls can go on while ``arm`` runs, if the memories neither move
        nor are freed meanwhile.  A page written before its protection is
        armed is copied by a capture begun after ``arm`` returns; one
        written after is dirty; what grew meanwhile the next ``reset`` or
        ``collect`` arms and reports.
        """
        return Arming(instance, [(index, memory, extent_of(memory, store))
                                 for index, memory in layout(store, instance).memories], backend)

    def _arm(self, arming: "Arming") -> None:
        self._instance = arming.instance
        self._trackers: dict[int, DirtyTracker] = {}
        self._last_id: bytes | None = None
        try:
            for index, memory, extent in arming.memories:
                self._trackers[index] = open_tracker(None, memory, backend=arming.backend, extent=extent)
        except BaseException:
            self.close()
            raise

    @property
    def backends(self) -> dict[int, str]:
        return {i: type(t).__name__ for i, t in self._trackers.items()}

    def capture(self, store: wasmtime.Store, *, buffers: CaptureBuffers | None = None) -> Snapshot:
        """Take a full snapshot and start a new tracking epoch."""
        for tracker in self._trackers.values():
            tracker.reset(store)
        snap = capture(store, self._instance, buffers=buffers)
        self._last_id = snap.state_id
        return snap

    def dirty_now(self, store: wasmtime.Store) -> int | None:
        """How many pages the next delta would carry if taken now (nothing is reset); None if a tracker cannot tell."""
        total = 0
        for tracker in self._trackers.values():
            pages = tracker.peek(store)
            if pages is None:
                return None
            total += pages
        return total

    @property
    def copies_while_running(self) -> bool:
        """Whether ``PendingCapture.finish`` may copy while the instance runs.

        True when every memory is tracked by the uffd backend, which reports
        every page *written* after the collect, so a page torn by a write
        during the copy is sent again by the next delta.  The compare backend
        reports pages whose bytes *changed* from its shadow (taken at the
        collect): a page written during the copy and written back before
        the next collect would not be reported, so its torn copy would stay;
        copy under the store's owner for that backend.
        """
        return all(isinstance(t, UffdDirtyTracker) for t in self._trackers.values())

    def begin_capture(self, store: wasmtime.Store, *, forget_writes: bool = True) -> "PendingCapture":
        """Start a full capture whose memory copy may run while the instance runs.

        Arms dirty tracking and reads globals, tables and memory extents now
        (the caller holds the store); ``PendingCapture.finish()`` then copies
        memory without touching the store, so calls can go on meanwhile
        (if ``copies_while_running``, and if the memory cannot move).
        Pages written during the copy are dirty, so the next delta carries
        them again: the classic pre-copy first round.  The result is a valid
        base for ``capture_delta`` but, unlike ``capture``, not a consistent
        snapshot by itself.

        ``forget_writes=False`` keeps the writes made since the trackers
        were armed (or last collected) dirty, so the next delta sends those
        pages again, which is harmless.  Right after ``Arming.arm`` it saves
        the reset's walk of the whole memory (a PAGEMAP_SCAN of 256 MiB:
        1 ms alone, 10 ms measured in a node sharing two cores with a
        compile), which runs with the store held, so calls wait for it.
        Only trackers that report writes (uffd) keep them: the compare
        backend reports pages that differ from its shadow, which must be
        what this capture copies, so it is reset regardless (a page written
        back to its old value after an earlier shadow would be missed).
        """
        for tracker in self._trackers.values():
            if forget_writes or not isinstance(tracker, UffdDirtyTracker):
                tracker.reset(store)
        return self._pending(store, None, None)

    def begin_delta(self, store: wasmtime.Store) -> "PendingCapture":
        """Start a delta against the previous capture; ``PendingCapture.finish()`` copies its pages.

        Collects the dirty pages (starting a new epoch) and reads globals,
        tables and memory extents now, holding the store; the copy may run
        later, as for ``begin_capture``.  Finished at once, or while nothing
        writes the memory, it is the consistent delta ``capture_delta`` takes.
        Raises LocalSnapshotError if no full capture was taken first.
        """
        if self._last_id is None:
            raise LocalSnapshotError("take a full capture before asking for a delta")
        dirty = {i: t.collect(store) for i, t in self._trackers.items()}
        return self._pending(store, dirty, self._last_id)

    def capture_delta(self, store: wasmtime.Store) -> Snapshot:
        """Return a delta against the previous capture and start a new epoch.

        Raises LocalSnapshotError if no full capture was taken first.
        """
        return self.begin_delta(store).finish()

    def _pending(self, store: wasmtime.Store, dirty: Mapping[int, Sequence[int]] | None,
                 base_id: bytes | None) -> PendingCapture:
        lay = layout(store, self._instance)
        regions: list[tuple[int, int, int, list[tuple[int, int]] | None]] = []
        for index, memory in lay.memories:
            ptr, size = memory_view(store, memory)
            if dirty is None:
                regions.append((index, ptr, size, None))
                continue
            pages = dirty.get(index, ())
            inside = pages[:bisect.bisect_left(pages, size // PAGE_BYTES)]  # sorted: pages past the end go
            regions.append((index, ptr, size, page_ranges(inside)))
        globals_, tables = read_globals(store, lay), read_tables(store, lay)
        dropped = read_dropped(store, lay)
        state_id = os.urandom(16)
        self._last_id = state_id
        record_state_id(self._instance, state_id)
        return PendingCapture(lay.digest, state_id, regions, globals_, tables, base_id, dropped)

    def close(self) -> None:
        for tracker in self._trackers.values():
            tracker.close()
        self._trackers.clear()

    def __enter__(self) -> "StateTracker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class Arming:
    """What ``StateTracker.arming`` read holding the store: the memories and where they lay."""

    instance: wasmtime.Instance
    memories: list[tuple[int, wasmtime.Memory, _Extent]]  # (memory index, memory, its extent then)
    backend: str

    def arm(self) -> StateTracker:
        """Open and arm a tracker per memory, without the store.

        Raises DirtyTrackingError as ``StateTracker`` does.
        """
        tracker = StateTracker.__new__(StateTracker)
        tracker._arm(self)
        return tracker


@dataclass(frozen=True)
class PendingCapture:
    """A capture begun by ``StateTracker.begin_capture`` or ``begin_delta``; ``finish`` copies memory.

    ``finish`` reads the memory at the addresses read when it began, without
    the store: the memory must neither move nor be freed until it returns.
    """

    module_sha256: str
    state_id: bytes
    # (memory index, address, size in bytes, [start, end) page ranges to copy
    # or None for every non-zero 64 KiB block)
    regions: list[tuple[int, int, int, list[tuple[int, int]] | None]]
    globals: tuple[GlobalState, ...]
    tables: tuple[TableState, ...]
    base_id: bytes | None = None
    dropped: DroppedSegments = DroppedSegments()

    def finish(self) -> Snapshot:
        memories = tuple(MemoryState(index, size, copy_nonzero(ptr, size) if ranges is None
                                     else copy_runs(ptr, ranges))
                         for index, ptr, size, ranges in self.regions)
        return self._with(memories)

    def views(self) -> Snapshot:
        """What ``finish`` would copy, left in the memory: runs that are views of it (``live_runs``).

        For a round encoded as it is sent, without a copy of the whole
        memory first (``SnapshotEncoder(copy_pages=True)`` copies each piece
        before compressing it).  Valid while the memory neither moves nor is
        freed; what a write changes before a page is read is sent again by
        the next delta, as for ``finish`` while the instance runs.
        """
        return self._with(tuple(MemoryState(index, size, live_runs(ptr, size, ranges))
                                for index, ptr, size, ranges in self.regions))

    def _with(self, memories: tuple[MemoryState, ...]) -> Snapshot:
        return Snapshot(module_sha256=self.module_sha256, state_id=self.state_id, base_id=self.base_id,
                        memories=memories, globals=self.globals, tables=self.tables, dropped=self.dropped)
