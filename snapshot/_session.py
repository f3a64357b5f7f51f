"""Full captures followed by deltas of what changed since the previous one."""

from __future__ import annotations

import os
from dataclasses import dataclass

import wasmtime

from ._capture import CaptureBuffers, capture, capture_pages, copy_nonzero
from ._dirty import DirtyTracker, open_tracker
from ._errors import LocalSnapshotError
from ._instance import layout, memory_view, read_globals, read_tables, record_state_id
from ._snapshot import Snapshot
from ._state import GlobalState, MemoryState, TableState


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
        self._instance = instance
        self._trackers: dict[int, DirtyTracker] = {}
        try:
            for index, memory in layout(store, instance).memories:
                self._trackers[index] = open_tracker(store, memory, backend=backend)
        except BaseException:
            self.close()
            raise
        self._last_id: bytes | None = None

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

    def begin_capture(self, store: wasmtime.Store) -> "PendingCapture":
        """Start a full capture whose memory copy may run while the instance runs.

        Arms dirty tracking and reads globals, tables and memory extents now
        (the caller holds the store); ``PendingCapture.finish()`` then copies
        memory without touching the store, so calls can go on meanwhile.
        Pages written during the copy are dirty, so the next delta carries
        them again: the classic pre-copy first round.  The result is a valid
        base for ``capture_delta`` but, unlike ``capture``, not a consistent
        snapshot by itself.
        """
        for tracker in self._trackers.values():
            tracker.reset(store)
        lay = layout(store, self._instance)
        regions = [(index, *memory_view(store, memory)) for index, memory in lay.memories]
        globals_, tables = read_globals(store, lay), read_tables(store, lay)
        state_id = os.urandom(16)
        self._last_id = state_id
        record_state_id(self._instance, state_id)
        return PendingCapture(lay.digest, state_id, regions, globals_, tables)

    def capture_delta(self, store: wasmtime.Store) -> Snapshot:
        """Return a delta against the previous capture and start a new epoch.

        Raises LocalSnapshotError if no full capture was taken first.
        """
        if self._last_id is None:
            raise LocalSnapshotError("take a full capture before asking for a delta")
        dirty = {i: t.collect(store) for i, t in self._trackers.items()}
        snap = capture_pages(store, self._instance, dirty, base_id=self._last_id)
        self._last_id = snap.state_id
        return snap

    def close(self) -> None:
        for tracker in self._trackers.values():
            tracker.close()
        self._trackers.clear()

    def __enter__(self) -> "StateTracker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class PendingCapture:
    """A full capture begun by ``StateTracker.begin_capture``; ``finish`` copies memory."""

    module_sha256: str
    state_id: bytes
    regions: list[tuple[int, int, int]]  # (memory index, address, size in bytes)
    globals: tuple[GlobalState, ...]
    tables: tuple[TableState, ...]

    def finish(self) -> Snapshot:
        memories = tuple(MemoryState(index, size, copy_nonzero(ptr, size)) for index, ptr, size in self.regions)
        return Snapshot(module_sha256=self.module_sha256, state_id=self.state_id, memories=memories,
                        globals=self.globals, tables=self.tables)
