"""Full captures followed by deltas of what changed since the previous one."""

from __future__ import annotations

import logging

import wasmtime

import ctypes
import os
from dataclasses import dataclass

from ._capture import (
    CaptureBuffers,
    _memory_view,
    _read_global,
    _read_table,
    _state_ids,
    capture,
    capture_pages,
    copy_out,
    layout,
)
from ._dirty import DirtyTracker, open_tracker
from ._errors import LocalSnapshotError
from ._state import PAGE_BYTES, MemoryState, PageRun, Snapshot, nonzero_blocks

log = logging.getLogger(__name__)


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
        regions = [(index, *_memory_view(store, memory)) for index, memory in lay.memories]
        globals_ = tuple(_read_global(store, lay, s) for s in lay.globals)
        tables = tuple(_read_table(store, lay, index, table, rt) for index, table, rt in lay.tables)
        state_id = os.urandom(16)
        self._last_id = state_id
        _state_ids[self._instance] = state_id
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
    globals: tuple
    tables: tuple

    def finish(self) -> Snapshot:
        memories = []
        for index, ptr, size in self.regions:
            ranges = nonzero_blocks((ctypes.c_char * size).from_address(ptr)) if size else []
            runs = tuple(PageRun(a, copy_out(ptr + a * PAGE_BYTES, (b - a) * PAGE_BYTES)) for a, b in ranges)
            memories.append(MemoryState(index, size, runs))
        return Snapshot(module_sha256=self.module_sha256, state_id=self.state_id, memories=tuple(memories),
                        globals=self.globals, tables=self.tables)
