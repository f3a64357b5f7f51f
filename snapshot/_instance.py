"""What the snapshot package knows of a live prepared instance.

``layout`` finds, once per instance, where it keeps its state: the exports
``prepare`` added for its memories, tables and mutable globals, the accessor
functions of globals wasmtime-py cannot read bit-exactly, and the function
table that turns references into indices.  ``read_globals`` and
``read_tables`` read that state in portable form, ``read_dropped`` the
passive segments dropped.  The id of the state an
instance last held (captured or restored) is kept here too, so a delta is
refused on the wrong base.  Everything works from the instance's exports
alone, so no module bytes are needed.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, TypeVar

import wasmtime

from . import _prepare as P
from . import _refaccess as ra
from . import _reftypes as rt
from ._dropped import SegmentProbes
from ._errors import InvalidModuleError, UnrepresentableStateError
from ._state import NUMERIC_BITS, SIGNED_TYPES, DroppedSegments, GlobalState, TableState

_FUNCREF = wasmtime.ValType.funcref()
_EXTERNREF = wasmtime.ValType.externref()
_BY_NAME = {"i32": "i32", "i64": "i64", "f32": "f32", "f64": "f64", "v128": "v128"}
_Item = TypeVar("_Item", wasmtime.Memory, wasmtime.Table, wasmtime.Global, wasmtime.Func)


class ExportLookup(Protocol):
    """What ``layout`` reads exports through: ``instance.exports(store)``, or a lazy view of it."""

    def keys(self) -> Iterable[str]: ...
    def get(self, name: str) -> Any: ...
    def __getitem__(self, name: str) -> Any: ...


def _valtype_name(ty: wasmtime.ValType) -> str:
    # str(ValType.externref()) prints "anyref" in wasmtime-py 50, so compare.
    if ty == _FUNCREF:
        return "funcref"
    if ty == _EXTERNREF:
        return "externref"
    return _BY_NAME[str(ty)]


@dataclass
class GlobalSlot:
    """A mutable global's export, its type, and its raw-bits accessors (None where not needed).

    ``injected`` marks a reference global read and written through
    ``_refaccess`` accessors (``test`` is its ref.test, if any).
    """

    index: int
    handle: wasmtime.Global
    valtype: str
    getter: wasmtime.Func | None
    setter: wasmtime.Func | None
    injected: bool = False
    test: wasmtime.Func | None = None


@dataclass
class TableSlot:
    """A table's export and type; ``funcs`` holds its injected accessors (None: wasmtime-py's API is safe)."""

    index: int
    handle: wasmtime.Table
    reftype: str
    funcs: dict[str, wasmtime.Func | None] | None = None
    maximum_: int | None = None

    def _func(self, kind: str) -> wasmtime.Func:
        func = self.funcs.get(kind) if self.funcs else None
        if func is None:
            raise InvalidModuleError(f"table {self.index} has no {ra.accessor_name(kind, self.index)} export")
        return func

    def size(self, store: wasmtime.Storelike) -> int:
        return self._func("tsize")(store) if self.funcs else self.handle.size(store)

    def maximum(self, store: wasmtime.Storelike) -> int | None:
        return self.maximum_ if self.funcs else self.handle.type(store).limits.max

    def read(self, store: wasmtime.Store, lay: Layout) -> tuple[int | None, ...]:
        where = f"table {self.index}"
        if self.funcs is None or rt.ref_class(self.reftype) == "func":
            # Table.get reads any function reference (typed, table64) and
            # is about 5 us an element against 29 us for a call of tget.
            reftype = "funcref" if self.funcs else self.reftype
            return tuple(_ref_to_index(store, lay, self.handle.get(store, i), reftype, where)
                         for i in range(self.size(store)))
        get = self._func("tget")
        to_index = lambda raw: _ref_to_index(store, lay, raw, "funcref", where)  # noqa: E731
        return tuple(ra.from_result(self.reftype, get(store, i), to_index, where) for i in range(self.size(store)))

    def grow(self, store: wasmtime.Storelike, count: int, fill: int | None) -> None:
        """Grow by ``count`` elements filled with ``fill`` (a snapshot value); raises WasmtimeError."""
        if self.funcs is None:
            self.handle.grow(store, count, None)
        elif (grow := self.funcs.get("tgrow")) is None or grow(store, count, *ra.to_args(self.reftype, fill)) < 0:
            raise wasmtime.WasmtimeError(f"table.grow by {count} failed")

    def write(self, store: wasmtime.Store, elements: tuple[int | None, ...], funcs: list[Any]) -> None:
        """Set every element; the injected table.fill takes each run of equal elements in one call."""
        if self.funcs is None:
            for i, value in enumerate(elements):
                self.handle.set(store, i, None if value is None else funcs[value])
            return
        fill, start = self._func("tfill"), 0
        for i in range(1, len(elements) + 1):
            if i == len(elements) or elements[i] != elements[start]:
                fill(store, start, i - start, *ra.to_args(self.reftype, elements[start]))
                start = i


@dataclass
class Layout:
    """Where an instance keeps its state, found from its exports once.

    ``digest`` names the prepared module; ``memories`` are (index, Memory)
    pairs and ``tables`` their slots, in index order.
    """

    digest: str
    memories: list[tuple[int, wasmtime.Memory]]
    tables: list[TableSlot]
    globals: list[GlobalSlot]
    functable: wasmtime.Table | None
    func_index: dict[tuple[int, int], int] | None = None
    funcs: list[Any] | None = None  # Table.get's results: a Func, or None for null
    segments: SegmentProbes | None = None  # None: the module has no passive segments


_layouts: "weakref.WeakKeyDictionary[wasmtime.Instance, Layout]" = weakref.WeakKeyDictionary()
# The state id an instance held at its last capture or restore, used to
# refuse a delta restored onto the wrong base.
_state_ids: "weakref.WeakKeyDictionary[wasmtime.Instance, bytes]" = weakref.WeakKeyDictionary()


def _suffix_index(name: str, prefix: str) -> int | None:
    if name.startswith(prefix):
        tail = name[len(prefix):]
        if tail.isdigit():
            return int(tail)
    return None


def _export(exports: ExportLookup, name: str, kind: type[_Item]) -> _Item:
    item = exports[name]
    if not isinstance(item, kind):
        raise InvalidModuleError(f"export {name!r} of a prepared instance is not a {kind.__name__}")
    return item


def _optional_export(exports: ExportLookup, name: str, kind: type[_Item]) -> _Item | None:
    return _export(exports, name, kind) if exports.get(name) is not None else None


def layout(store: wasmtime.Store, instance: wasmtime.Instance, exports: ExportLookup | None = None) -> Layout:
    """Find (and cache) the state exports of a prepared instance.

    ``exports`` stands for ``instance.exports(store)`` (something with
    ``keys``, ``get`` and ``[]``): one that fetches only the items asked
    for saves wrapping every export of a large module.
    Raises InvalidModuleError if the instance was not built from a prepared module.
    """
    found = _layouts.get(instance)
    if found is not None:
        return found
    exports = exports if exports is not None else instance.exports(store)
    digest_parts = []
    for name in P.DIGEST_EXPORTS:
        g = exports.get(name)
        if not isinstance(g, wasmtime.Global):
            raise InvalidModuleError("instance was not built from a prepared module; "
                                     "call snapshot.prepare() on the module first")
        digest_parts.append((g.value(store) & (2**64 - 1)).to_bytes(8, "big"))
    memories: list[tuple[int, wasmtime.Memory]] = []
    tables: list[TableSlot] = []
    globals_: list[GlobalSlot] = []
    names = sorted(exports.keys())
    # ("t" | "g", index) -> descriptor fields, for items with injected accessors
    described: dict[tuple[str, int], list[str]] = {}
    for name in names:
        if (desc := ra.parse_descriptor(name)) is not None:
            described[desc[0], desc[1]] = desc[2]
    for name in names:
        if not name.startswith("__wm_"):
            continue  # every state export is named __wm_...
        if (i := _suffix_index(name, "__wm_memory_")) is not None:
            memories.append((i, _export(exports, name, wasmtime.Memory)))
        elif (i := _suffix_index(name, "__wm_table_")) is not None:
            table = _export(exports, name, wasmtime.Table)
            if (fields := described.get(("t", i))) is not None:
                _, maximum, reftype = fields
                funcs = {k: _optional_export(exports, ra.accessor_name(k, i), wasmtime.Func) for k in ra.TABLE_FUNCS}
                tables.append(TableSlot(i, table, reftype, funcs, None if maximum == "-" else int(maximum)))
            else:
                tables.append(TableSlot(i, table, _valtype_name(table.type(store).element)))
        elif (i := _suffix_index(name, "__wm_global_")) is not None:
            item = _export(exports, name, wasmtime.Global)
            getter = _optional_export(exports, P.getter_export(i), wasmtime.Func)
            setter = _optional_export(exports, P.setter_export(i), wasmtime.Func)
            if (fields := described.get(("g", i))) is not None:
                globals_.append(GlobalSlot(i, item, fields[0], getter, setter, True,
                                           _optional_export(exports, ra.accessor_name("gtest", i), wasmtime.Func)))
                continue
            if getter is not None:
                # Typed by its accessor: wasmtime-py 50 cannot even describe a
                # v128 global's type ("support for v128 is not implemented").
                results = [str(t) for t in getter.type(store).results]
                valtype = {("i32",): "f32", ("i64",): "f64", ("i64", "i64"): "v128"}[tuple(results)]
            else:
                getter = setter = None
                valtype = _valtype_name(item.type(store).content)
            globals_.append(GlobalSlot(i, item, valtype, getter, setter))
    found = Layout(
        digest=b"".join(digest_parts).hex(),
        memories=sorted(memories, key=lambda t: t[0]),
        tables=sorted(tables, key=lambda t: t.index),
        globals=sorted(globals_, key=lambda s: s.index),
        functable=_optional_export(exports, P.FUNCTABLE_EXPORT, wasmtime.Table),
        segments=SegmentProbes.find(exports),
    )
    _layouts[instance] = found
    return found


def memory_view(store: wasmtime.Storelike, memory: wasmtime.Memory) -> tuple[int, int]:
    """A memory's base address and length in bytes, now (growing may move it)."""
    return ctypes.addressof(memory.data_ptr(store).contents), memory.data_len(store)


def _func_key(func: wasmtime.Func) -> tuple[int, int]:
    # wasmtime_func_t is {store_id, __private}; __private points at the
    # function's VMFuncRef, which is the same for every reference to one
    # function (checked against wasmtime 50, which pyproject pins).
    raw = func._func
    return raw.store_id, getattr(raw, "__private")


def func_tables(store: wasmtime.Store, lay: Layout) -> tuple[dict[tuple[int, int], int], list[Any]]:
    """The instance's functions: (function key -> index, index -> function), read once."""
    if lay.func_index is None or lay.funcs is None:
        funcs: list[Any] = []
        index: dict[tuple[int, int], int] = {}
        if lay.functable is not None:
            for i in range(lay.functable.size(store)):
                f = lay.functable.get(store, i)
                funcs.append(f)
                if isinstance(f, wasmtime.Func):
                    index.setdefault(_func_key(f), i)
        lay.func_index, lay.funcs = index, funcs
        return index, funcs
    return lay.func_index, lay.funcs


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, wasmtime.Val) and value.value is None)


def _ref_to_index(store: wasmtime.Store, lay: Layout, value: object, reftype: str, where: str) -> int | None:
    if _is_null(value):
        return None
    if reftype == "externref":
        raise UnrepresentableStateError(f"{where} holds a host externref ({type(value).__name__}); "
                                        "only null externrefs can be captured")
    index, _ = func_tables(store, lay)
    if isinstance(value, wasmtime.Func):
        found = index.get(_func_key(value))
        if found is not None:
            return found
    raise UnrepresentableStateError(f"{where} holds a function that is not part of the module")


def _read_global(store: wasmtime.Store, lay: Layout, slot: GlobalSlot) -> GlobalState:
    vt = slot.valtype
    value: int | None
    if slot.injected:
        where = f"global {slot.index}"
        to_index: Callable[[object], int | None] = lambda raw: _ref_to_index(  # noqa: E731
            store, lay, raw, "funcref", where)
        getter = slot.getter
        if getter is None:
            raise InvalidModuleError(f"global {slot.index} has no {P.getter_export(slot.index)} export")
        value = ra.from_result(vt, getter(store), to_index, where)
    elif slot.getter is not None:
        raw = slot.getter(store)
        if vt == "v128":
            lo, hi = raw
            value = (lo & (2**64 - 1)) | ((hi & (2**64 - 1)) << 64)
        else:
            value = raw & ((1 << NUMERIC_BITS[vt]) - 1)
    elif vt in SIGNED_TYPES:
        value = slot.handle.value(store)
    elif vt in ("funcref", "externref"):
        value = _ref_to_index(store, lay, slot.handle.value(store), vt, f"global {slot.index}")
    else:  # pragma: no cover - prepare always adds accessors for these
        raise InvalidModuleError(f"global {slot.index} of type {vt} has no accessor")
    return GlobalState(slot.index, vt, value)


def read_globals(store: wasmtime.Store, lay: Layout) -> tuple[GlobalState, ...]:
    """The values of every mutable global, as raw bits (see ``GlobalState``).

    Raises UnrepresentableStateError for a reference with no portable form.
    """
    return tuple(_read_global(store, lay, slot) for slot in lay.globals)


def read_tables(store: wasmtime.Store, lay: Layout) -> tuple[TableState, ...]:
    """The elements of every table, as function indices or i31 values (None for null).

    Raises UnrepresentableStateError for a host externref or a function
    that is not part of the module.
    """
    return tuple(TableState(t.index, t.reftype, t.read(store, lay)) for t in lay.tables)


def read_dropped(store: wasmtime.Store, lay: Layout) -> DroppedSegments:
    """Which passive segments the instance has dropped (see ``_dropped``); no calls for a module without any."""
    return lay.segments.read(store) if lay.segments is not None else DroppedSegments()


def state_id(instance: wasmtime.Instance) -> bytes | None:
    """Return the id of the state an instance held at its last capture or restore."""
    return _state_ids.get(instance)


def record_state_id(instance: wasmtime.Instance, state_id_: bytes) -> None:
    """Note that ``instance`` now holds the state named ``state_id_`` (after a capture or restore)."""
    _state_ids[instance] = state_id_
