"""Capture the state of a live prepared instance, and restore it into another.

Both work from the instance's exports alone (see ``_prepare``), so they need
no module bytes: ``capture(store, instance)`` and
``restore(snapshot, store, instance)`` read naturally in wasmtime-py style.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import weakref
from dataclasses import dataclass

import wasmtime

from . import _prepare as P
from ._errors import (
    BaseMismatchError,
    IncompatibleSnapshotError,
    InvalidModuleError,
    ModuleMismatchError,
    UnrepresentableStateError,
)
from ._state import (
    PAGE_BYTES,
    WASM_PAGE_BYTES,
    GlobalState,
    MemoryState,
    PageRun,
    Snapshot,
    TableState,
    nonzero_blocks,
    nonzero_runs,
)

log = logging.getLogger(__name__)

_NUMERIC_BITS = {"i32": 32, "i64": 64, "f32": 32, "f64": 64, "v128": 128}
_SIGNED = {"i32", "i64"}
_FUNCREF = wasmtime.ValType.funcref()
_EXTERNREF = wasmtime.ValType.externref()
_BY_NAME = {"i32": "i32", "i64": "i64", "f32": "f32", "f64": "f64", "v128": "v128"}


def _valtype_name(ty: wasmtime.ValType) -> str:
    # str(ValType.externref()) prints "anyref" in wasmtime-py 50, so compare.
    if ty == _FUNCREF:
        return "funcref"
    if ty == _EXTERNREF:
        return "externref"
    return _BY_NAME[str(ty)]


@dataclass
class _GlobalSlot:
    index: int
    handle: wasmtime.Global
    valtype: str
    getter: wasmtime.Func | None
    setter: wasmtime.Func | None


@dataclass
class _Layout:
    """Where an instance keeps its state, found from its exports once."""

    digest: str
    memories: list[tuple[int, wasmtime.Memory]]
    tables: list[tuple[int, wasmtime.Table, str]]
    globals: list[_GlobalSlot]
    functable: wasmtime.Table | None
    func_index: dict[tuple[int, int], int] | None = None
    funcs: list | None = None


_layouts: "weakref.WeakKeyDictionary[wasmtime.Instance, _Layout]" = weakref.WeakKeyDictionary()
# The state id an instance held at its last capture or restore, used to
# refuse a delta restored onto the wrong base.
_state_ids: "weakref.WeakKeyDictionary[wasmtime.Instance, bytes]" = weakref.WeakKeyDictionary()


def _suffix_index(name: str, prefix: str) -> int | None:
    if name.startswith(prefix):
        tail = name[len(prefix):]
        if tail.isdigit():
            return int(tail)
    return None


def layout(store: wasmtime.Store, instance: wasmtime.Instance) -> _Layout:
    """Find (and cache) the state exports of a prepared instance.

    Raises InvalidModuleError if the instance was not built from a prepared module.
    """
    found = _layouts.get(instance)
    if found is not None:
        return found
    exports = instance.exports(store)
    digest_parts = []
    for name in P.DIGEST_EXPORTS:
        g = exports.get(name)
        if not isinstance(g, wasmtime.Global):
            raise InvalidModuleError("instance was not built from a prepared module; "
                                     "call snapshot.prepare() on the module first")
        digest_parts.append((g.value(store) & (2**64 - 1)).to_bytes(8, "big"))
    memories, tables, globals_ = [], [], []
    for name in sorted(exports.keys() if hasattr(exports, "keys") else list(exports)):
        item = exports[name]
        if (i := _suffix_index(name, "__wm_memory_")) is not None:
            memories.append((i, item))
        elif (i := _suffix_index(name, "__wm_table_")) is not None:
            tables.append((i, item, _valtype_name(item.type(store).element)))
        elif (i := _suffix_index(name, "__wm_global_")) is not None:
            getter = exports.get(P.getter_export(i))
            setter = exports.get(P.setter_export(i))
            if isinstance(getter, wasmtime.Func):
                # Typed by its accessor: wasmtime-py 50 cannot even describe a
                # v128 global's type ("support for v128 is not implemented").
                results = [str(t) for t in getter.type(store).results]
                valtype = {("i32",): "f32", ("i64",): "f64", ("i64", "i64"): "v128"}[tuple(results)]
            else:
                getter = setter = None
                valtype = _valtype_name(item.type(store).content)
            globals_.append(_GlobalSlot(i, item, valtype, getter, setter))
    found = _Layout(
        digest=b"".join(digest_parts).hex(),
        memories=sorted(memories, key=lambda t: t[0]),
        tables=sorted(tables, key=lambda t: t[0]),
        globals=sorted(globals_, key=lambda s: s.index),
        functable=exports.get(P.FUNCTABLE_EXPORT),
    )
    _layouts[instance] = found
    return found


def _func_key(func: wasmtime.Func) -> tuple[int, int]:
    # wasmtime_func_t is {store_id, __private}; __private points at the
    # function's VMFuncRef, which is the same for every reference to one
    # function (checked against wasmtime 50, which pyproject pins).
    raw = func._func
    return raw.store_id, getattr(raw, "__private")


def _func_tables(store: wasmtime.Store, lay: _Layout) -> tuple[dict, list]:
    if lay.func_index is None:
        funcs = []
        index = {}
        if lay.functable is not None:
            for i in range(lay.functable.size(store)):
                f = lay.functable.get(store, i)
                funcs.append(f)
                if isinstance(f, wasmtime.Func):
                    index.setdefault(_func_key(f), i)
        lay.func_index, lay.funcs = index, funcs
    return lay.func_index, lay.funcs


def _is_null(value) -> bool:
    return value is None or (isinstance(value, wasmtime.Val) and value.value is None)


def _ref_to_index(store, lay: _Layout, value, reftype: str, where: str) -> int | None:
    if _is_null(value):
        return None
    if reftype == "externref":
        raise UnrepresentableStateError(f"{where} holds a host externref ({type(value).__name__}); "
                                        "only null externrefs can be captured")
    index, _ = _func_tables(store, lay)
    if isinstance(value, wasmtime.Func):
        found = index.get(_func_key(value))
        if found is not None:
            return found
    raise UnrepresentableStateError(f"{where} holds a function that is not part of the module")


class CaptureBuffers:
    """Reusable host buffers for memory captures, one per memory index.

    Capturing into warm buffers runs at memcpy speed; a fresh allocation
    pays for cold pages (about 2 GB/s here, NOTES.md).  A snapshot taken
    with buffers borrows them: the next capture overwrites its pages.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, bytearray] = {}

    def get(self, index: int, size: int) -> bytearray:
        buf = self._buffers.get(index)
        if buf is None or len(buf) != size:
            buf = bytearray(size)
            self._buffers[index] = buf
        return buf


#: Copies larger than this go into an anonymous mmap rather than a bytearray.
_MMAP_COPY_BYTES = 1 << 20


def copy_out(address: int, length: int) -> bytearray | memoryview:
    """Copy ``length`` bytes from ``address`` into new memory; return a buffer.

    Large copies must not hold the GIL: ``bytearray(n)`` zeroes its memory
    with the GIL held and ``ctypes.string_at`` copies with it held, either of
    which stalls every other thread (a node's event loop among them) for
    about 150 ms per 256 MiB.  An anonymous mmap is zero-filled lazily by
    the kernel, and ctypes.memmove releases the GIL while it copies.
    """
    if length < _MMAP_COPY_BYTES:
        out = bytearray(length)
        if length:
            ctypes.memmove((ctypes.c_char * length).from_buffer(out), address, length)
        return out
    region = mmap.mmap(-1, length)
    ctypes.memmove((ctypes.c_char * length).from_buffer(region), address, length)
    return memoryview(region)


def _memory_view(store, memory: wasmtime.Memory) -> tuple[int, int]:
    return ctypes.addressof(memory.data_ptr(store).contents), memory.data_len(store)


def _read_global(store, lay: _Layout, slot: _GlobalSlot) -> GlobalState:
    vt = slot.valtype
    if slot.getter is not None:
        raw = slot.getter(store)
        if vt == "v128":
            lo, hi = raw
            value = (lo & (2**64 - 1)) | ((hi & (2**64 - 1)) << 64)
        else:
            value = raw & ((1 << _NUMERIC_BITS[vt]) - 1)
    elif vt in _SIGNED:
        value = slot.handle.value(store)
    elif vt in ("funcref", "externref"):
        value = _ref_to_index(store, lay, slot.handle.value(store), vt, f"global {slot.index}")
    else:  # pragma: no cover - prepare always adds accessors for these
        raise InvalidModuleError(f"global {slot.index} of type {vt} has no accessor")
    return GlobalState(slot.index, vt, value)


def capture(store: wasmtime.Store, instance: wasmtime.Instance, *,
            buffers: CaptureBuffers | None = None) -> Snapshot:
    """Take a full snapshot of a prepared instance.

    Memory pages are copied out with one memmove per memory; zero pages are
    then left out of the runs.  Raises InvalidModuleError for an unprepared
    instance and UnrepresentableStateError for state that has no portable
    form (a host externref, a foreign function in a table).
    """
    lay = layout(store, instance)
    memories = []
    for index, memory in lay.memories:
        ptr, size = _memory_view(store, memory)
        if buffers is not None:
            # Warm buffer: one memcpy, then scan the copy by offset.
            buf = buffers.get(index, size)
            if size:
                ctypes.memmove((ctypes.c_char * size).from_buffer(buf), ptr, size)
            view = memoryview(buf)
            runs = tuple(PageRun(a, view[a * PAGE_BYTES:b * PAGE_BYTES]) for a, b in nonzero_blocks(buf))
        else:
            # No buffer: find the non-zero blocks in place and copy only those,
            # rather than filling a cold allocation the size of the memory.
            ranges = nonzero_blocks((ctypes.c_char * size).from_address(ptr)) if size else []
            runs = tuple(PageRun(a, copy_out(ptr + a * PAGE_BYTES, (b - a) * PAGE_BYTES))
                         for a, b in ranges)
        memories.append(MemoryState(index, size, runs))
    snap = Snapshot(
        module_sha256=lay.digest,
        state_id=os.urandom(16),
        memories=tuple(memories),
        globals=tuple(_read_global(store, lay, s) for s in lay.globals),
        tables=tuple(_read_table(store, lay, index, table, reftype) for index, table, reftype in lay.tables),
    )
    _state_ids[instance] = snap.state_id
    return snap


def _read_table(store, lay: _Layout, index: int, table: wasmtime.Table, reftype: str) -> TableState:
    size = table.size(store)
    where = f"table {index}"
    elements = tuple(_ref_to_index(store, lay, table.get(store, i), reftype, where) for i in range(size))
    return TableState(index, reftype, elements)


def capture_pages(store: wasmtime.Store, instance: wasmtime.Instance,
                  dirty: dict[int, list[int]], *, base_id: bytes) -> Snapshot:
    """Take a delta snapshot holding only the given pages of each memory.

    ``dirty`` maps memory index to sorted 4 KiB page indices, as a dirty
    tracker reports them.  Pages past a memory's end are ignored.
    """
    lay = layout(store, instance)
    memories = []
    for index, memory in lay.memories:
        ptr, size = _memory_view(store, memory)
        limit = size // PAGE_BYTES
        runs = []
        start = prev = None
        for page in dirty.get(index, ()):
            if page >= limit:
                break
            if prev is not None and page == prev + 1:
                prev = page
                continue
            if start is not None:
                runs.append(PageRun(start, copy_out(ptr + start * PAGE_BYTES, (prev + 1 - start) * PAGE_BYTES)))
            start = prev = page
        if start is not None:
            runs.append(PageRun(start, copy_out(ptr + start * PAGE_BYTES, (prev + 1 - start) * PAGE_BYTES)))
        memories.append(MemoryState(index, size, tuple(runs)))
    snap = Snapshot(
        module_sha256=lay.digest,
        state_id=os.urandom(16),
        base_id=base_id,
        memories=tuple(memories),
        globals=tuple(_read_global(store, lay, s) for s in lay.globals),
        tables=tuple(_read_table(store, lay, index, table, reftype) for index, table, reftype in lay.tables),
    )
    _state_ids[instance] = snap.state_id
    return snap


# --- restore ---------------------------------------------------------------

def _check(snapshot: Snapshot, store, instance, lay: _Layout) -> None:
    """Refuse a snapshot that does not fit the instance, before touching it."""
    if snapshot.module_sha256 != lay.digest:
        raise ModuleMismatchError(
            f"snapshot was taken from module {snapshot.module_sha256[:16]}…, "
            f"but the target instance runs module {lay.digest[:16]}…")
    if snapshot.is_delta:
        current = _state_ids.get(instance)
        if current != snapshot.base_id:
            raise BaseMismatchError(
                f"delta expects base state {snapshot.base_id.hex()}, the target holds "
                f"{current.hex() if current else 'an unknown state'}")
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
    _, funcs = _func_tables(store, lay)
    for g in snapshot.globals:
        _check_value(g.valtype, g.value, len(funcs), f"global {g.index}")
    if [(t.index, t.reftype) for t in snapshot.tables] != [(i, rt) for i, _, rt in lay.tables]:
        raise IncompatibleSnapshotError("snapshot and target have different tables")
    for ts, (_, table, _) in zip(snapshot.tables, lay.tables):
        current = table.size(store)
        if len(ts.elements) < current:
            raise IncompatibleSnapshotError(f"table {ts.index} cannot shrink from {current} to {len(ts.elements)}")
        maximum = table.type(store).limits.max
        if maximum is not None and len(ts.elements) > maximum:
            raise IncompatibleSnapshotError(f"table {ts.index} exceeds the module's maximum of {maximum}")
        for e in ts.elements:
            _check_value(ts.reftype, e, len(funcs), f"table {ts.index}")


def _check_value(valtype: str, value, nfuncs: int, where: str) -> None:
    if valtype in _NUMERIC_BITS:
        bits = _NUMERIC_BITS[valtype]
        lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if valtype in _SIGNED else (0, 1 << bits)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value < hi:
            raise IncompatibleSnapshotError(f"{where}: {value!r} is not a valid {valtype}")
    elif valtype == "externref":
        if value is not None:
            raise IncompatibleSnapshotError(f"{where}: externref values other than null cannot be restored")
    elif value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < nfuncs):
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
    old_sizes = []
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
    for ts, (_, table, _) in zip(snapshot.tables, lay.tables):
        grow = len(ts.elements) - table.size(store)
        if grow:
            try:
                table.grow(store, grow, None)
            except wasmtime.WasmtimeError as exc:
                raise IncompatibleSnapshotError(f"target refused to grow table {ts.index}: {exc}") from None
    for ms, (_, memory), old in zip(snapshot.memories, lay.memories, old_sizes):
        ptr, _ = _memory_view(store, memory)
        if not snapshot.is_delta:
            # Pages past the old size are fresh zeros; below it, zero the gaps
            # between runs in case data segments or earlier calls wrote there.
            # Pages past the old size are fresh zeros.  Below it, data
            # segments or earlier calls may have written: zero what is not
            # zero (the runs then overwrite their own pages).
            if old:
                _clear(ptr, 0, old)
        for r in ms.runs:
            base = ptr + r.first_page * PAGE_BYTES
            if snapshot.is_delta:
                ctypes.memmove(base, _source(r.data), len(r.data))
                continue
            # Zero pages of a full snapshot are already zero in the target
            # (cleared above or fresh); writing them would fault in pages.
            data = r.data if isinstance(r.data, (bytes, bytearray)) else bytes(r.data)
            src = _address(data)
            for a, b in nonzero_runs(data):
                ctypes.memmove(base + a * PAGE_BYTES, src + a * PAGE_BYTES, (b - a) * PAGE_BYTES)
    _, funcs = _func_tables(store, lay)
    for gs, slot in zip(snapshot.globals, lay.globals):
        _write_global(store, slot, gs, funcs)
    for ts, (_, table, _) in zip(snapshot.tables, lay.tables):
        for i, e in enumerate(ts.elements):
            table.set(store, i, None if e is None else funcs[e])
    _state_ids[instance] = snapshot.state_id


def _clear(ptr: int, start: int, end: int) -> None:
    """Zero the non-zero pages of [start, end), which must be page-aligned.

    Reading an untouched page of a fresh instance maps the shared zero page;
    writing it would allocate and clear a page, which is what makes restores
    into cold memory slow (NOTES.md: 1.1 to 2.2 GB/s).
    """
    view = (ctypes.c_char * (end - start)).from_address(ptr + start)
    for a, b in nonzero_runs(view):
        ctypes.memset(ptr + start + a * PAGE_BYTES, 0, (b - a) * PAGE_BYTES)


def _address(data: bytes | bytearray) -> int:
    """The address of a bytes or bytearray's buffer (the caller keeps it alive)."""
    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    return ctypes.addressof((ctypes.c_char * len(data)).from_buffer(data)) if data else 0


def _source(data):
    """Return something ctypes.memmove reads from without copying, where possible."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, memoryview) and data.readonly:
        return bytes(data)
    return (ctypes.c_char * len(data)).from_buffer(data)


def _write_global(store, slot: _GlobalSlot, gs: GlobalState, funcs: list) -> None:
    vt = gs.valtype
    if slot.setter is not None:
        if vt == "v128":
            lo, hi = gs.value & (2**64 - 1), gs.value >> 64
            slot.setter(store, _signed(lo, 64), _signed(hi, 64))
        else:
            slot.setter(store, _signed(gs.value, _NUMERIC_BITS[vt]))
    elif vt in _SIGNED:
        slot.handle.set_value(store, gs.value)
    elif vt == "funcref":
        slot.handle.set_value(store, None if gs.value is None else funcs[gs.value])
    else:
        slot.handle.set_value(store, None)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def state_id(instance: wasmtime.Instance) -> bytes | None:
    """Return the id of the state an instance held at its last capture or restore."""
    return _state_ids.get(instance)


def pages_digest(store: wasmtime.Store, instance: wasmtime.Instance, pages: dict[int, list[int]]) -> str:
    """Digest the given 4 KiB pages of each memory, plus memory sizes and globals.

    Two replicas that should be identical compare the pages one of them
    wrote since they last agreed (a delta's pages): far cheaper than hashing
    whole memories, and it catches every divergence in what was written.
    Pages past a memory's end are digested as absent.
    """
    import hashlib

    lay = layout(store, instance)
    h = hashlib.blake2b(digest_size=16)
    for index, memory in lay.memories:
        ptr, size = _memory_view(store, memory)
        h.update(b"M%d:%d;" % (index, size))
        limit = size // PAGE_BYTES
        for page in pages.get(index, ()):
            if page < limit:
                h.update(page.to_bytes(8, "little"))
                h.update(ctypes.string_at(ptr + page * PAGE_BYTES, PAGE_BYTES))
    for slot in lay.globals:
        g = _read_global(store, lay, slot)
        h.update(b"G%d:%s;" % (g.index, repr(g.value).encode()))
    return h.hexdigest()
