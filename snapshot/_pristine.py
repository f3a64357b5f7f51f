"""Pristine instances: start an instance in a captured state, and reset it there after each use.

The Wizer idea at run time: a module is initialised once and captured
(``Pristine``); every instance then starts from that state instead of
running the initialisation again, and goes back to it after each call.

* ``Pristine(after_init, fresh)`` takes two full snapshots of one prepared
  module: the state to keep (``after_init``) and a just-instantiated
  instance's (``fresh``: data and element segments applied, nothing run).
  Starting an instance writes only the pages initialisation changed, the
  mutable globals, and the tables only if initialisation changed them.
* ``Resettable`` is one instance kept pristine.  A dirty tracker
  (``_dirty``: userfaultfd write-protect where it works) reports the pages
  each use wrote; ``reset`` copies exactly those back from the pristine
  image, so its cost follows the pages written, not the memory size.
  Globals are compared and rewritten, tables compared element by element
  (raw references, no Python objects) and rewritten if they differ.  Given
  the module's bytes, ``Pristine`` finds the tables no instruction of the
  module writes and that it does not export (``_tablewrites``): those keep
  their elements for the instance's life, so neither a start nor a reset
  reads them.  (The host must not write them either; the pool never does.)
  What cannot be undone in place (a memory or table that grew, a passive
  segment dropped) raises ``NotResettable``: the instance is to be dropped
  and a fresh one started.

``Reset`` says what a reset found: a use that left no state behind has
``changed`` False.  Scratch data a call leaves in memory (its shadow stack,
freed heap blocks) counts as changed pages too.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
from dataclasses import dataclass
from typing import Any, Iterable

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern

from . import _reftypes as rt
from ._dirty import DirtyTracker, open_tracker
from ._errors import LocalSnapshotError, ModuleMismatchError
from ._instance import func_tables, layout, memory_view, read_dropped, read_globals, record_state_id
from ._pages import PAGE_BYTES, WASM_PAGE_BYTES, page_ranges
from ._prepare import PREFIX, module_digest, prepare
from ._restore import _write_global
from ._snapshot import Snapshot
from ._state import NUMERIC_BITS
from ._tablewrites import fixed_tables

__all__ = ["NotResettable", "Pristine", "Reset", "Resettable"]


class NotResettable(LocalSnapshotError):
    """The instance cannot be brought back to the pristine state in place; start a fresh one."""


@dataclass(frozen=True)
class Reset:
    """What one reset did: pages written back, how many differed, and whether globals or tables had changed."""

    pages: int
    changed_pages: int
    globals_changed: bool
    tables_changed: bool

    @property
    def changed(self) -> bool:
        return bool(self.changed_pages or self.globals_changed or self.tables_changed)


def _image(snap: Snapshot, index: int) -> mmap.mmap:
    """A memory's pristine bytes in an anonymous mapping (zero pages stay unallocated)."""
    ms = snap.memories[index]
    image = mmap.mmap(-1, max(ms.size_bytes, 1))
    for run in ms.runs:
        start = run.first_page * PAGE_BYTES
        image[start:start + len(run.data)] = bytes(run.data)
    return image


def _differing_pages(a: mmap.mmap, b: Snapshot, index: int, size: int) -> list[int]:
    """Pages of ``a`` (``size`` bytes) whose bytes differ from memory ``index`` of ``b``, or lie past its end."""
    other = _image(b, index)
    try:
        limit = b.memories[index].size_bytes
        return [p for p in range(size // PAGE_BYTES)
                if p * PAGE_BYTES >= limit or a[p * PAGE_BYTES:(p + 1) * PAGE_BYTES] != other[p * PAGE_BYTES:(p + 1) * PAGE_BYTES]]
    finally:
        other.close()


#: sha256 of module bytes given to a Pristine -> (the prepared module's digest, its fixed tables):
#: preparing and scanning QuickJS's 1.5 MB takes about 80 ms, hashing it 1 ms.
_scanned: dict[str, tuple[str, frozenset[int]]] = {}
_SCANNED_MAX = 64


def _fixed(module: bytes, digest: str) -> frozenset[int]:
    """The tables of ``module`` (original or prepared, of digest ``digest``) that nothing can write."""
    key = hashlib.sha256(module).hexdigest()
    found = _scanned.get(key)
    if found is None:
        prepared = prepare(module)  # a prepared module comes back as it is
        found = (module_digest(prepared), fixed_tables(prepared))
        if len(_scanned) >= _SCANNED_MAX:
            _scanned.clear()
        _scanned[key] = found
    if found[0] != digest:
        raise ModuleMismatchError("the module given is not the one the snapshots are of")
    return found[1]


def _export_indices(store: wasmtime.Store, instance: wasmtime.Instance) -> dict[str, int]:
    """Each export's name and position; the same for every instance of one module."""
    out: dict[str, int] = {}
    item = ffi.wasmtime_extern_t()
    name_ptr = ctypes.POINTER(ctypes.c_char)()
    name_len = ctypes.c_size_t(0)
    context, inst = store._context(), ctypes.byref(instance._instance)
    while ffi.wasmtime_instance_export_nth(context, inst, len(out), ctypes.byref(name_ptr),
                                           ctypes.byref(name_len), ctypes.byref(item)):
        out[ffi.to_str_raw(name_ptr, name_len.value)] = len(out)
    return out


class _Exports:
    """An instance's exports fetched one by one, by name: what ``layout`` and a call need.

    ``instance.exports(store)`` wraps every export first: 3 ms for QuickJS's
    298, more than starting the instance from the pristine state.  By name,
    not by position: wasmtime finds the n-th export by walking the n before
    it (16 us for QuickJS's last export, against 1.4 us by name).  ``keys``
    names only the exports ``prepare`` added (``__wm_``), the only ones
    ``layout`` looks for, so that it does not go through all 298 names.
    """

    def __init__(self, store: wasmtime.Store, instance: wasmtime.Instance, pristine: Pristine) -> None:
        if pristine.export_indices is None:
            pristine.export_indices = _export_indices(store, instance)
            pristine.state_exports = tuple(n for n in pristine.export_indices if n.startswith(PREFIX))
        self._store, self._instance = store, instance
        self._indices, self._names = pristine.export_indices, pristine.state_exports

    def keys(self) -> Iterable[str]:
        return self._names

    def get(self, name: str, default: Any = None) -> Any:
        if name not in self._indices:
            return default
        item = ffi.wasmtime_extern_t()
        raw = name.encode()
        if not ffi.wasmtime_instance_export_get(self._store._context(), ctypes.byref(self._instance._instance),
                                                raw, len(raw), ctypes.byref(item)):
            return default
        return wrap_extern(item)

    def __getitem__(self, name: str) -> Any:
        item = self.get(name)
        if item is None:
            raise KeyError(name)
        return item


class Pristine:
    """The state pristine instances start in and return to.

    ``module``: the bytes of the module both snapshots are of, original or
    prepared (None: every table is compared at each reset).
    Raises ModuleMismatchError if the snapshots (or ``module``) are of
    different modules, and NotResettable if a snapshot is a delta or holds
    tables of other than function references (their raw values cannot be
    compared).
    """

    def __init__(self, after_init: Snapshot, fresh: Snapshot, *, module: bytes | None = None) -> None:
        if after_init.is_delta or fresh.is_delta:
            raise NotResettable("pristine states are full snapshots, not deltas")
        if after_init.module_sha256 != fresh.module_sha256:
            raise ModuleMismatchError("the two snapshots are of different modules")
        for ts in after_init.tables:
            if ts.reftype != "funcref" and rt.ref_class(ts.reftype) != "func":
                raise NotResettable(f"table {ts.index} holds {ts.reftype}, which a reset cannot compare")
        self.snapshot = after_init
        self.images = [_image(after_init, i) for i in range(len(after_init.memories))]
        self.sizes = [m.size_bytes for m in after_init.memories]
        self.start_pages = [_differing_pages(img, fresh, i, size)
                            for i, (img, size) in enumerate(zip(self.images, self.sizes))]
        self._start_ranges = [page_ranges(pages) for pages in self.start_pages]
        self.export_indices: dict[str, int] | None = None  # learnt from the first instance
        self.state_exports: tuple[str, ...] = ()  # the __wm_ names among them
        self.tables_from_init = after_init.tables != fresh.tables
        self.dropped_by_init = after_init.dropped != fresh.dropped
        #: Tables nothing can write once the instance exists: never read by a start or a reset.
        self.fixed_tables = frozenset() if module is None else _fixed(module, after_init.module_sha256)

    @property
    def memory_bytes(self) -> int:
        return sum(self.sizes)

    def close(self) -> None:
        for image in self.images:
            image.close()


class Resettable:
    """One instance of the pristine module, started in the pristine state and reset after each use.

    ``instance`` must be fresh: instantiated, with no guest code run.
    ``exports`` fetches its exports by name, one at a time.  ``backend`` picks the dirty tracker (``open_tracker``).  Use it from
    one thread at a time, between calls into the guest.
    """

    def __init__(self, pristine: Pristine, store: wasmtime.Store, instance: wasmtime.Instance, *,
                 backend: str = "auto") -> None:
        self._p = pristine
        self._store = store
        self._instance = instance
        self.exports = _Exports(store, instance, pristine)
        self._lay = lay = layout(store, instance, self.exports)
        if lay.digest != pristine.snapshot.module_sha256:
            raise ModuleMismatchError("the instance runs another module than the pristine state")
        snap = pristine.snapshot
        for (_, memory), size, image, ranges in zip(lay.memories, pristine.sizes, pristine.images,
                                                    pristine._start_ranges):
            grow = (size - memory.data_len(store)) // WASM_PAGE_BYTES
            if grow:
                memory.grow(store, grow)
            ptr, _ = memory_view(store, memory)
            src = ctypes.addressof(ctypes.c_char.from_buffer(image))
            for a, b in ranges:  # every one differs from a fresh instance's: copied without comparing
                ctypes.memmove(ptr + a * PAGE_BYTES, src + a * PAGE_BYTES, (b - a) * PAGE_BYTES)
        self._write_globals()
        if lay.segments is not None and pristine.dropped_by_init:
            lay.segments.apply(store, snap.dropped)
        if pristine.tables_from_init:
            self._write_tables()
        record_state_id(instance, snap.state_id)
        self._watched = [slot for slot in lay.tables if slot.index not in pristine.fixed_tables]
        self._tables = self._raw_tables()
        self._trackers: list[DirtyTracker] = []
        try:
            for _, memory in lay.memories:
                self._trackers.append(open_tracker(store, memory, backend=backend))
        except BaseException:
            self.close()
            raise

    @property
    def store(self) -> wasmtime.Store:
        return self._store

    @property
    def instance(self) -> wasmtime.Instance:
        return self._instance

    @staticmethod
    def fetch_export(pristine: Pristine, store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
        """Export ``name`` of an instance of the pristine module, fetched alone (after one ``Resettable`` was made)."""
        return _Exports(store, instance, pristine)[name]

    def _write_pages(self, memory: wasmtime.Memory, image: mmap.mmap, pages: Iterable[int]) -> tuple[int, int]:
        """Copy ``pages`` (sorted) from ``image`` into ``memory``; return (pages written, pages that differed)."""
        ptr, _ = memory_view(self._store, memory)
        src = ctypes.addressof(ctypes.c_char.from_buffer(image))
        written = changed = 0
        for a, b in page_ranges(pages):
            n = (b - a) * PAGE_BYTES
            off = a * PAGE_BYTES
            if ctypes.string_at(ptr + off, n) != image[off:off + n]:
                changed += sum(ctypes.string_at(ptr + p * PAGE_BYTES, PAGE_BYTES) != image[p * PAGE_BYTES:(p + 1) * PAGE_BYTES]
                               for p in range(a, b))
                ctypes.memmove(ptr + off, src + off, n)
            written += b - a
        return written, changed

    def _write_globals(self) -> None:
        globals_ = self._p.snapshot.globals
        # The function index is read (once per instance, one Table.get per
        # function: 2 ms for QuickJS) only for a global holding a reference.
        numeric = all(g.valtype in NUMERIC_BITS for g in globals_)
        funcs = [] if numeric else func_tables(self._store, self._lay)[1]
        for gs, slot in zip(globals_, self._lay.globals):
            _write_global(self._store, slot, gs, funcs)

    def _write_tables(self) -> None:
        _, funcs = func_tables(self._store, self._lay)
        for ts, slot in zip(self._p.snapshot.tables, self._lay.tables):
            slot.write(self._store, ts.elements, funcs)

    def _raw_tables(self) -> list[bytes]:
        """Each table's elements as raw references: 17 bytes each, the same for the same function.

        Only the tables something may write (not in ``Pristine.fixed_tables``).
        """
        out = []
        raw = ffi.wasmtime_val_t()
        get, ref = ffi.wasmtime_table_get, ctypes.byref(raw)
        context = self._store._context()
        for slot in self._watched:
            table = ctypes.byref(slot.handle._table)
            parts = bytearray()
            for i in range(slot.handle.size(self._store)):
                get(context, table, i, ref)
                whole = bytes(raw)
                parts += whole[:1] + whole[8:24]  # the kind and the reference; bytes 1 to 7 are padding
            out.append(bytes(parts))
        return out

    def reset(self) -> Reset:
        """Bring the instance back to the pristine state and report what the use since the last reset left.

        Raises NotResettable (nothing written) if a memory or a table
        grew or a passive segment was dropped; DirtyTrackingError if the
        tracker failed (drop the instance then too).
        """
        store, lay, p = self._store, self._lay, self._p
        for (index, memory), size in zip(lay.memories, p.sizes):
            if memory.data_len(store) != size:
                raise NotResettable(f"memory {index} grew from {size} to {memory.data_len(store)} bytes")
        for slot, ts in zip(lay.tables, p.snapshot.tables):
            if slot.handle.size(store) != len(ts.elements):
                raise NotResettable(f"table {ts.index} grew to {slot.handle.size(store)} elements")
        if lay.segments is not None and read_dropped(store, lay) != p.snapshot.dropped:
            raise NotResettable("a passive segment was dropped")
        pages = changed = 0
        for (_, memory), tracker, image in zip(lay.memories, self._trackers, p.images):
            dirty = tracker.collect(store)
            written, differed = self._write_pages(memory, image, dirty)
            pages += written
            changed += differed
            if written:
                tracker.reset(store)  # forget the write-back itself
        globals_changed = read_globals(store, lay) != p.snapshot.globals
        if globals_changed:
            self._write_globals()
        tables_changed = self._raw_tables() != self._tables
        if tables_changed:
            self._write_tables()
        return Reset(pages, changed, globals_changed, tables_changed)

    def close(self) -> None:
        """Release the dirty trackers (the instance itself belongs to the caller)."""
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
