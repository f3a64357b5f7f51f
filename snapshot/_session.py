"""Full captures followed by deltas of what changed since the previous one."""

from __future__ import annotations

import logging

import wasmtime

from ._capture import CaptureBuffers, capture, capture_pages, layout
from ._dirty import DirtyTracker, open_tracker
from ._errors import LocalSnapshotError
from ._state import Snapshot

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
