"""Capture, encode and restore the complete state of a wasmtime workload.

    prepared = snapshot.prepare(wasm)            # once per module
    snap = snapshot.capture(store, instance)     # any time between calls
    data = snap.to_bytes(key=optional_key)
    snapshot.restore(snapshot.Snapshot.from_bytes(data), store2, fresh_instance)

Public names are re-exported here from the private modules that define
them.  The modules, from the bottom up: ``_errors``; ``_pages`` (4 KiB
pages and runs); ``_state`` (memories, globals, tables); ``_format`` and
``_decoder`` (the encoded format); ``_snapshot`` (``Snapshot``,
``apply_delta``); ``_leb128``, ``_wasmbin`` and ``_prepare`` (module
preparation); ``_segments`` (what prepare adds for passive segments); ``_dropped``
(which of them an instance dropped); ``_instance`` (a live instance's state exports); ``_capture``
and ``_restore``; ``_uffd`` and ``_dirty`` (dirty-page tracking);
``_session`` (full captures followed by deltas); ``_pristine`` (instances started in a
captured state and reset to it after each use); ``_tablewrites`` (an instruction decoder: which
tables code writes) and ``_bounded`` (which exports provably finish within a bounded number of
instructions).
"""

from ._bounded import DEFAULT_MAX_INSTRUCTIONS, bounded_exports
from ._capture import CaptureBuffers, capture, capture_pages, pages_digest, release_copies
from ._decoder import DecodeLimits, End, Meta, PageBatch, SnapshotDecoder
from ._dirty import CompareDirtyTracker, DirtyTracker, UffdDirtyTracker, open_tracker
from ._errors import (
    AuthenticationError,
    BaseMismatchError,
    CorruptSnapshotError,
    DirtyTrackingError,
    IncompatibleSnapshotError,
    InvalidModuleError,
    UnsupportedFeatureError,
    LocalSnapshotError,
    ModuleMismatchError,
    OversizedSnapshotError,
    RemoteSnapshotError,
    SnapshotError,
    TruncatedSnapshotError,
    UnrepresentableStateError,
    UnsupportedVersionError,
)
from ._format import SnapshotEncoder, generate_key
from ._instance import Layout, layout, read_dropped, read_globals, read_tables, state_id
from ._pages import PAGE_BYTES, WASM_PAGE_BYTES, PageRun, nonzero_runs
from ._prepare import Manifest, first_boot, manifest, module_digest, prepare
from ._preparation import preparation_id
from ._pristine import NotResettable, Pristine, Reset, Resettable
from ._fed_restore import FedRestore, restore_encoded
from ._restore import restore
from ._session import StateTracker
from ._snapshot import Snapshot, SnapshotAssembler, apply_delta
from ._state import DroppedSegments, GlobalState, MemoryState, TableState
from ._uffd import uffd_available
from ._write import Written, write_encoded

__all__ = [
    "CompareDirtyTracker", "DecodeLimits", "DirtyTracker", "End", "Meta", "PageBatch",
    "SnapshotAssembler", "SnapshotDecoder", "SnapshotEncoder", "StateTracker", "UffdDirtyTracker", "generate_key",
    "open_tracker", "pages_digest", "uffd_available", "NotResettable", "Pristine", "Reset", "Resettable",
    "AuthenticationError", "BaseMismatchError", "CaptureBuffers", "CorruptSnapshotError",
    "DirtyTrackingError", "DroppedSegments", "GlobalState", "IncompatibleSnapshotError", "InvalidModuleError", "UnsupportedFeatureError",
    "Layout", "LocalSnapshotError", "Manifest", "MemoryState", "ModuleMismatchError", "OversizedSnapshotError",
    "PAGE_BYTES", "PageRun", "RemoteSnapshotError", "Snapshot", "SnapshotError", "TableState",
    "TruncatedSnapshotError", "UnrepresentableStateError", "UnsupportedVersionError", "WASM_PAGE_BYTES",
    "apply_delta", "capture", "capture_pages", "first_boot", "layout", "manifest", "module_digest",
    "nonzero_runs", "prepare", "preparation_id", "read_dropped", "read_globals", "read_tables", "restore", "restore_encoded", "FedRestore", "state_id",
    "Written", "write_encoded", "release_copies", "DEFAULT_MAX_INSTRUCTIONS", "bounded_exports",
]
