"""Capture, encode and restore the complete state of a wasmtime workload.

    prepared = snapshot.prepare(wasm)            # once per module
    snap = snapshot.capture(store, instance)     # any time between calls
    data = snap.to_bytes(key=optional_key)
    snapshot.restore(snapshot.Snapshot.from_bytes(data), store2, fresh_instance)
"""

from ._capture import CaptureBuffers, capture, capture_pages, pages_digest, restore, state_id
from ._dirty import CompareDirtyTracker, DirtyTracker, UffdDirtyTracker, open_tracker, uffd_available
from ._errors import (
    AuthenticationError,
    BaseMismatchError,
    CorruptSnapshotError,
    DirtyTrackingError,
    IncompatibleSnapshotError,
    InvalidModuleError,
    LocalSnapshotError,
    ModuleMismatchError,
    OversizedSnapshotError,
    RemoteSnapshotError,
    SnapshotError,
    TruncatedSnapshotError,
    UnrepresentableStateError,
    UnsupportedVersionError,
)
from ._format import (
    DecodeLimits,
    End,
    Meta,
    PageBatch,
    SnapshotAssembler,
    SnapshotDecoder,
    SnapshotEncoder,
    generate_key,
)
from ._prepare import Manifest, first_boot, manifest, module_digest, prepare
from ._state import (
    PAGE_BYTES,
    WASM_PAGE_BYTES,
    GlobalState,
    MemoryState,
    PageRun,
    Snapshot,
    TableState,
    apply_delta,
)
from ._session import StateTracker

__all__ = [
    "CompareDirtyTracker", "DecodeLimits", "DirtyTracker", "End", "Meta", "PageBatch",
    "SnapshotAssembler", "SnapshotDecoder", "SnapshotEncoder", "StateTracker", "UffdDirtyTracker", "generate_key",
    "open_tracker", "pages_digest", "uffd_available",
    "AuthenticationError", "BaseMismatchError", "CaptureBuffers", "CorruptSnapshotError",
    "DirtyTrackingError", "GlobalState", "IncompatibleSnapshotError", "InvalidModuleError",
    "LocalSnapshotError", "Manifest", "MemoryState", "ModuleMismatchError", "OversizedSnapshotError",
    "PAGE_BYTES", "PageRun", "RemoteSnapshotError", "Snapshot", "SnapshotError", "TableState",
    "TruncatedSnapshotError", "UnrepresentableStateError", "UnsupportedVersionError", "WASM_PAGE_BYTES",
    "apply_delta", "capture", "capture_pages", "first_boot", "manifest", "module_digest", "prepare",
    "restore", "state_id",
]
