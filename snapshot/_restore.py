"""Restore a snapshot into a live instance of the same prepared module.

Everything is checked before the target is touched (``_check``), then
memories and tables grow, the passive segments the snapshot names are
dropped, pages are written, and globals and table entries are set.
Writing into cold pages is what a restore costs (1.1 to 2.2 GB/s into a
fresh instance here), so pages that are zero on both sides are never
written.  ``_fed_restore`` decodes an encoded snapshot straight into an instance
with the helpers here (``_check``, ``_open``, ``_scatter_copy``, ``_close``).
"""

from __future__ import annotations

import ctypes
import os
from array import array
from typing import Any, Callable, Iterable

import wasmtime

from . import _refaccess as ra
from ._dropped import check_dropped
from ._errors import BaseMismatchError, IncompatibleSnapshotError, ModuleMismatchError
from ._instance import GlobalSlot, Layout, func_tables, layout, memory_view, record_state_id, state_id
from ._decoder import PageBatch
from ._pages import PAGE_BYTES, WASM_PAGE_BYTES, PageData, PageRun, nonzero_runs
from ._snapshot import Snapshot
from ._state import NUMERIC_BITS, SIGNED_TYPES, GlobalState, is_int, numeric_fits

_IOV_MAX = 1024  # Linux's limit on the iovecs of one call
_vm_readv = getattr(ctypes.CDLL(None, use_errno=True), "process_vm_readv", None)
if _vm_readv is not None:
    _vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                          ctypes.c_ulong]
    _vm_readv.restype = ctypes.c_ssize_t


def _check(snapshot: Snapshot, store: wasmtime.Store, instance: wasmtime.Instance, lay: Layout) -> None:
    """Refuse a snapshot that does not fit the instance, before touching it."""
    if snapshot.module_sha256 != lay.digest:
        raise ModuleMismatchError(
            f"snapshot was taken from module {snapshot.module_sha256[:16]}…, "
            f"but the target instance runs module {lay.digest[:16]}…")
    if snapshot.base_id is not None:  # a delta
        held = state_id(instance)
        if held != snapshot.base_id:
            raise BaseMismatchError(
                f"delta expects base state {snapshot.base_id.hex()}, the target holds "
                f"{held.hex() if held else 'an unknown state'}")
    if [m.index for m in snapshot.memories] != [i for i, _ in lay.memories]:
        raise IncompatibleSnapshotError("snapshot and target have different memories")
    for ms, (_, memory) in zip(snapshot.memories, lay.memories):
        current = memory.data_len(store)
        if ms.size_bytes % WASM_PAGE_BYTES:
            raise IncompatibleSnapshotError(f"memory {ms.index} size {ms.size_bytes} is not whole wasm pages")
        if ms.size_bytes < current:
            raise IncompatibleSnapshotError(
                f"memory {ms.index} is {current} bytes in the target but {ms.size_bytes} in the snapshot; "
                "memories cannot shrink (restore into a fresh instance)")
        maximum = memory.type(store).limits.max
        if maximum is not None and ms.size_bytes > maximum * WASM_PAGE_BYTES:
            raise IncompatibleSnapshotError(f"memory {ms.index} exceeds the module's maximum of {maximum} pages")
        last = 0
        for r in ms.runs:
            first, n = r.first_page, len(r.data)
            end = first * PAGE_BYTES + n
            if first < last or n % PAGE_BYTES or end > ms.size_bytes:
                raise IncompatibleSnapshotError(f"memory {ms.index} has a malformed page run at page {first}")
            last = end // PAGE_BYTES
    if [(g.index, g.valtype) for g in snapshot.globals] != [(s.index, s.valtype) for s in lay.globals]:
        raise IncompatibleSnapshotError("snapshot and target have different mutable globals")
    _, funcs = func_tables(store, lay)
    for g, gslot in zip(snapshot.globals, lay.globals):
        if gslot.injected:
            ra.check_value(g.valtype, g.value, len(funcs), gslot.test, store, f"global {g.index}")
        else:
            _check_value(g.valtype, g.value, len(funcs), f"global {g.index}")
    if [(t.index, t.reftype) for t in snapshot.tables] != [(t.index, t.reftype) for t in lay.tables]:
        raise IncompatibleSnapshotError("snapshot and target have different tables")
    for ts, slot in zip(snapshot.tables, lay.tables):
        current = slot.size(store)
        if len(ts.elements) < current:
            raise IncompatibleSnapshotError(f"table {ts.index} cannot shrink from {current} to {len(ts.elements)}")
        maximum = slot.maximum(store)
        if maximum is not None and len(ts.elements) > maximum:
            raise IncompatibleSnapshotError(f"table {ts.index} exceeds the module's maximum of {maximum}")
        where = f"table {ts.index}"
        if slot.funcs is None:
            for e in ts.elements:
                _check_value(ts.reftype, e, len(funcs), where)
            continue
        test = slot.funcs.get("ttest")
        for e in set(ts.elements):
            ra.check_value(ts.reftype, e, len(funcs), test, store, where)
        if ts.elements and (slot.funcs.get("tfill") is None or slot.funcs.get("tgrow") is None):
            raise IncompatibleSnapshotError(f"{where} of type {ts.reftype} cannot be written")
    check_dropped(store, lay.segments, snapshot.dropped)


def _check_value(valtype: str, value: object, nfuncs: int, where: str) -> None:
    if valtype in NUMERIC_BITS:
        if not numeric_fits(valtype, value):
            raise IncompatibleSnapshotError(f"{where}: {value!r} is not a valid {valtype}")
    elif valtype == "externref":
        if value is not None:
            raise IncompatibleSnapshotError(f"{where}: externref values other than null cannot be restored")
    elif value is not None and (not is_int(value) or not 0 <= value < nfuncs):
        raise IncompatibleSnapshotError(f"{where}: function index {value!r} is out of range")


def restore(snapshot: Snapshot, store: wasmtime.Store, instance: wasmtime.Instance) -> None:
    """Load a snapshot into an instance of the same prepared module.

    A full snapshot goes into a fresh instance (no first boot); a delta goes
    onto an instance that holds its base state.  Everything is checked before
    the target is touched: ModuleMismatchError, BaseMismatchError and
    IncompatibleSnapshotError leave it as it was.  If the store's resource
    limiter refuses to grow a memory or table, IncompatibleSnapshotError is
    raised before any contents, globals or table entries are written.
    """
    lay = layout(store, instance)
    _check(snapshot, store, instance, lay)
    ptrs, funcs = _open(snapshot, store, lay)
    for ms, ptr in zip(snapshot.memories, ptrs):
        if snapshot.is_delta or ms.zero_free:
            _write(ptr, ms.runs)
            continue
        for r in ms.runs:
            # Zero pages of a full snapshot are already zero in the target
            # (cleared in _open, or fresh); writing them would fault in pages.
            base = ptr + r.first_page * PAGE_BYTES
            data = r.data if isinstance(r.data, (bytes, bytearray)) else bytes(r.data)
            src = _address(data)
            for a, b in nonzero_runs(data):
                ctypes.memmove(base + a * PAGE_BYTES, src + a * PAGE_BYTES, (b - a) * PAGE_BYTES)
    _close(snapshot, store, instance, lay, funcs)


def _scatter_copy(ptr: int, batch: PageBatch) -> Callable[[], None]:
    """A function that copies ``batch``'s runs to their pages of the memory at ``ptr``.

    With ``process_vm_readv`` on this process, the runs go with one system
    call that holds no GIL (the destination pages are listed as an iovec
    array, the source is the batch's decompressed bytes, in which the runs
    follow each other); otherwise, or if that call copies less, with one
    memmove per run.
    """
    data = batch.data
    runs = batch.runs
    if _vm_readv is None or data is None or not 0 < len(runs) <= _IOV_MAX:
        return lambda: _write(ptr, runs)
    local = array("Q", [x for r in runs for x in (ptr + r.first_page * PAGE_BYTES, len(r.data))])
    remote = array("Q", (ctypes.addressof(ctypes.c_char.from_buffer(data)), len(data)))
    pid = os.getpid()

    def copy() -> None:
        if _vm_readv(pid, local.buffer_info()[0], len(runs), remote.buffer_info()[0], 1, 0) != len(data):
            _write(ptr, runs)
    return copy


def _open(snapshot: Snapshot, store: wasmtime.Store, lay: Layout) -> tuple[list[int], list[Any]]:
    """Grow the target's memories and tables, drop the snapshot's dropped segments, clear a full
    snapshot's memories; return each memory's address and the function table."""
    old_sizes: list[int] = []
    for ms, (_, memory) in zip(snapshot.memories, lay.memories):
        old = memory.data_len(store)
        old_sizes.append(old)
        grow = (ms.size_bytes - old) // WASM_PAGE_BYTES
        if grow:
            try:
                memory.grow(store, grow)
            except wasmtime.WasmtimeError as exc:
                raise IncompatibleSnapshotError(f"target refused to grow memory {ms.index} "
                                                f"to {ms.size_bytes} bytes: {exc}") from None
    _, funcs = func_tables(store, lay)
    for ts, tslot in zip(snapshot.tables, lay.tables):
        current = tslot.size(store)
        grow = len(ts.elements) - current
        if grow:
            try:
                # Filled with one of the snapshot's own elements: a
                # non-nullable table never holds null, even for a moment.
                tslot.grow(store, grow, ts.elements[current])
            except wasmtime.WasmtimeError as exc:
                raise IncompatibleSnapshotError(f"target refused to grow table {ts.index}: {exc}") from None
    if lay.segments is not None:
        lay.segments.apply(store, snapshot.dropped)
    ptrs = []
    for (_, memory), old in zip(lay.memories, old_sizes):
        ptr, _ = memory_view(store, memory)
        # Pages past the old size are fresh zeros.  Below it, data segments
        # or earlier calls may have written: zero what is not zero (the
        # runs then overwrite their own pages).
        if old and not snapshot.is_delta:
            _clear(ptr, 0, old)
        ptrs.append(ptr)
    return ptrs, funcs


def _write(ptr: int, runs: Iterable[PageRun]) -> None:
    """Copy the runs, whole, into the memory at ``ptr``."""
    for r in runs:
        ctypes.memmove(ptr + r.first_page * PAGE_BYTES, _source(r.data), len(r.data))


def _close(snapshot: Snapshot, store: wasmtime.Store, instance: wasmtime.Instance, lay: Layout,
           funcs: list[Any]) -> None:
    """Set the globals and table entries and record the state id: the last step of a restore."""
    for gs, gslot in zip(snapshot.globals, lay.globals):
        _write_global(store, gslot, gs, funcs)
    for ts, tslot in zip(snapshot.tables, lay.tables):
        tslot.write(store, ts.elements, funcs)
    record_state_id(instance, snapshot.state_id)


def _clear(ptr: int, start: int, end: int) -> None:
    """Zero the non-zero pages of [start, end), which must be page-aligned.

    Reading an untouched page of a fresh instance maps the shared zero page;
    writing it would allocate and clear a page, which is what makes restores
    into cold memory slow (1.1 to 2.2 GB/s into a fresh instance here).
    """
    view = (ctypes.c_char * (end - start)).from_address(ptr + start)
    for a, b in nonzero_runs(view):
        ctypes.memset(ptr + start + a * PAGE_BYTES, 0, (b - a) * PAGE_BYTES)


def _address(data: bytes | bytearray) -> int:
    """The address of a bytes or bytearray's buffer (the caller keeps it alive)."""
    if isinstance(data, bytes):
        address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        return address or 0  # c_void_p reads a NULL pointer as None
    return ctypes.addressof((ctypes.c_char * len(data)).from_buffer(data)) if data else 0


def _source(data: PageData) -> bytes | int:
    """Return something ctypes.memmove reads from without copying, where possible.

    A writable buffer gives its address (through a one-byte ctypes view:
    a ctypes array type per length cost twice as much per run).
    """
    if isinstance(data, bytes):
        return data
    if isinstance(data, memoryview) and data.readonly:
        return bytes(data)
    return ctypes.addressof(ctypes.c_char.from_buffer(data)) if len(data) else 0


def _write_global(store: wasmtime.Store, slot: GlobalSlot, gs: GlobalState, funcs: list[Any]) -> None:
    vt = gs.valtype
    if slot.injected:
        if slot.setter is not None:
            slot.setter(store, *ra.to_args(vt, gs.value))
    elif slot.setter is not None:
        value = gs.value
        if value is None:  # a numeric global: _check refused a null before anything was written
            raise IncompatibleSnapshotError(f"global {gs.index}: None is not a valid {vt}")
        if vt == "v128":
            lo, hi = value & (2**64 - 1), value >> 64
            slot.setter(store, _signed(lo, 64), _signed(hi, 64))
        else:
            slot.setter(store, _signed(value, NUMERIC_BITS[vt]))
    elif vt in SIGNED_TYPES:
        slot.handle.set_value(store, gs.value)
    elif vt == "funcref":
        slot.handle.set_value(store, None if gs.value is None else funcs[gs.value])
    else:
        slot.handle.set_value(store, None)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value
