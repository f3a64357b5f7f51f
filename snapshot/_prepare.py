"""Module preparation: make every piece of mutable instance state reachable.

``prepare(wasm)`` rewrites a core module so that the host can capture and
restore it through the ordinary wasmtime API:

* each memory and table the module defines is exported as
  ``__wm_memory_<i>`` / ``__wm_table_<i>``;
* each mutable global it defines is exported as ``__wm_global_<i>``.  Globals
  of type f32, f64 and v128 also get accessor functions ``__wm_get_<i>`` /
  ``__wm_set_<i>`` that move raw bits as integers, because wasmtime-py
  quietens signalling NaNs (an f32 0x7f800001 comes back as 0x7fc00001)
  and cannot read a v128 global at all;
* a ``start`` section becomes the export ``__wm_start``, so the engine can run
  it at first boot and a restore never runs it again;
* if any defined table or mutable global holds funcrefs, a table
  ``__wm_functable`` maps function index -> function, so table contents can be
  captured as indices;
* if it has passive data or element segments of non-zero length, functions
  ``__wm_data_probe`` / ``_drop`` / ``_count`` (and ``__wm_elem_...``) read
  and set which of them are dropped, with the memory, tables and globals
  they need (``_segments``);
* four immutable i64 globals ``__wm_sha256_<k>`` carry the module's digest.

The digest is the sha256 of the prepared module with those 32 bytes zeroed,
so it names the prepared module itself and every instance can say which
module it came from.  Preparation is deterministic and idempotent.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import wasmtime

from . import _leb128 as leb
from . import _refaccess as ra
from . import _refcheck as refcheck
from . import _reftypes as rt
from . import _segments
from . import _wasmbin as wb
from ._errors import InvalidModuleError, UnsupportedFeatureError

PREFIX = "__wm_"
START_EXPORT = "__wm_start"
FUNCTABLE_EXPORT = "__wm_functable"
DIGEST_EXPORTS = tuple(f"__wm_sha256_{k}" for k in range(4))
_DIGEST_GLOBAL = bytes([0x7E, 0x00, 0x42])  # i64, immutable, i64.const
_PADDED_ZERO = leb.write_s64_padded(0)


def memory_export(index: int) -> str:
    return f"{PREFIX}memory_{index}"


def table_export(index: int) -> str:
    return f"{PREFIX}table_{index}"


def global_export(index: int) -> str:
    return f"{PREFIX}global_{index}"


def getter_export(index: int) -> str:
    return f"{PREFIX}get_{index}"


def setter_export(index: int) -> str:
    return f"{PREFIX}set_{index}"


@dataclass(frozen=True)
class MemoryEntry:
    index: int
    export: str
    minimum_pages: int
    maximum_pages: int | None
    is64: bool


@dataclass(frozen=True)
class TableEntry:
    index: int
    export: str
    reftype: str
    minimum: int
    maximum: int | None


@dataclass(frozen=True)
class GlobalEntry:
    index: int
    export: str
    valtype: str
    getter: str | None
    setter: str | None


@dataclass(frozen=True)
class Manifest:
    """The state exports of a prepared module, read back from its bytes."""

    module_sha256: str
    memories: tuple[MemoryEntry, ...]
    tables: tuple[TableEntry, ...]
    globals: tuple[GlobalEntry, ...]
    start_export: str | None
    functable_export: str | None
    function_count: int


@functools.lru_cache(maxsize=1)
def _validation_engine() -> wasmtime.Engine:
    return wasmtime.Engine()


def _validate(wasm: bytes, what: str) -> None:
    try:
        wasmtime.Module.validate(_validation_engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        raise InvalidModuleError(f"{what} is not a valid WebAssembly module: {exc}") from None


def _accessor_bodies(index: int, valtype: str) -> tuple[bytes, bytes, wb.Signature, wb.Signature]:
    """Return (getter body, setter body, getter sig, setter sig) for a global."""
    g = leb.write_u(index)
    if valtype == "f32":  # i32.reinterpret_f32 / f32.reinterpret_i32
        get = b"\x23" + g + b"\xbc\x0b"
        put = b"\x20\x00\xbe\x24" + g + b"\x0b"
        return get, put, ((), ("i32",)), (("i32",), ())
    if valtype == "f64":  # i64.reinterpret_f64 / f64.reinterpret_i64
        get = b"\x23" + g + b"\xbd\x0b"
        put = b"\x20\x00\xbf\x24" + g + b"\x0b"
        return get, put, ((), ("i64",)), (("i64",), ())
    # v128 as two i64 lanes: i64x2.extract_lane (0xfd 29), splat (0xfd 18),
    # replace_lane (0xfd 30).
    get = b"\x23" + g + b"\xfd\x1d\x00" + b"\x23" + g + b"\xfd\x1d\x01\x0b"
    put = b"\x20\x00\xfd\x12\x20\x01\xfd\x1e\x01\x24" + g + b"\x0b"
    return get, put, ((), ("i64", "i64")), (("i64", "i64"), ())


def _functype(sig: wb.Signature) -> bytes:
    params, results = sig
    return (b"\x60" + leb.write_vec([bytes([wb.VALTYPE_CODES[t]]) for t in params])
            + leb.write_vec([bytes([wb.VALTYPE_CODES[t]]) for t in results]))


def _export(name: str, kind: int, index: int) -> bytes:
    return leb.write_name(name) + bytes([kind]) + leb.write_u(index)


def _digest_offsets(info: wb.ModuleInfo) -> list[int] | None:
    """Absolute file offsets of the four digest LEBs, or None if unprepared."""
    names = {e.name: e for e in info.exports}
    if DIGEST_EXPORTS[0] not in names:
        return None
    section = info.section(wb.GLOBAL)
    offsets = []
    for name in DIGEST_EXPORTS:
        exp = names.get(name)
        local = exp.index - info.imported_globals if exp else -1
        if exp is None or exp.kind != wb.KIND_GLOBAL or not 0 <= local < len(info.globals) or section is None:
            raise InvalidModuleError(f"prepared module is damaged: export {name} is missing or wrong")
        g = info.globals[local]
        start = g.init_offset - 2  # valtype and mutability precede the init expression
        if (section.payload[start:g.init_offset + 1] != _DIGEST_GLOBAL
                or g.init_end - g.init_offset != 12):
            raise InvalidModuleError(f"prepared module is damaged: global {name} has the wrong form")
        offsets.append(section.offset + g.init_offset + 1)
    return offsets


def _hash_with_zeroed(wasm: bytes, offsets: list[int]) -> bytes:
    buf = bytearray(wasm)
    for off in offsets:
        buf[off:off + 10] = _PADDED_ZERO
    return hashlib.sha256(buf).digest()


def _embedded_digest(wasm: bytes, offsets: list[int]) -> bytes:
    out = b""
    for off in offsets:
        value, _ = leb.read_s(wasm, off, 64)
        out += (value & (2**64 - 1)).to_bytes(8, "big")
    return out


def module_digest(prepared: bytes) -> str:
    """Return the hex sha256 a prepared module carries, after checking it.

    Raises InvalidModuleError if the bytes are not a prepared module or were
    changed after preparation.
    """
    prepared = bytes(prepared)
    info = wb.parse_module(prepared)
    offsets = _digest_offsets(info)
    if offsets is None:
        raise InvalidModuleError("module has not been prepared (no __wm_sha256 exports)")
    digest = _hash_with_zeroed(prepared, offsets)
    if _embedded_digest(prepared, offsets) != digest:
        raise InvalidModuleError("prepared module was modified after preparation; "
                                 "prepare the original module again")
    return digest.hex()


def prepare(wasm: bytes) -> bytes:
    """Rewrite a core module so all its mutable state is host-reachable.

    Deterministic and idempotent: ``prepare(prepare(m)) == prepare(m)``.
    Raises InvalidModuleError for bytes that are not a valid core module and
    for exports under the reserved ``__wm_`` prefix; its subclass
    UnsupportedFeatureError for components and for state that cannot be
    captured (shared memories, tables and globals that can hold GC
    structs/arrays or exceptions; the message names item and feature).
    """
    if not isinstance(wasm, (bytes, bytearray, memoryview)):
        raise InvalidModuleError(f"expected module bytes, got {type(wasm).__name__}")
    wasm = bytes(wasm)
    info = wb.parse_module(wasm)
    if _digest_offsets(info) is not None:
        module_digest(wasm)  # raises if it was tampered with
        return wasm
    _validate(wasm, "input")
    for e in info.exports:
        if e.name.startswith(PREFIX):
            raise InvalidModuleError(f"export {e.name!r} uses the reserved prefix {PREFIX!r}")
    refcheck.check_module(info)
    for i, limits in enumerate(info.memories):
        if limits.shared:
            raise UnsupportedFeatureError(f"memory {info.imported_memories + i} is shared; "
                                          "shared memories cannot be snapshotted consistently")

    sections = list(info.sections)
    exports: list[bytes] = []
    types = list(info.types)
    new_types: list[bytes] = []
    new_funcs: list[bytes] = []
    new_code: list[bytes] = []
    func_count = info.imported_funcs + info.defined_funcs

    def type_index(sig: wb.Signature) -> int:
        if sig in types:
            return types.index(sig)
        types.append(sig)
        new_types.append(_functype(sig))
        return len(types) - 1

    def add_func(name: str, sig: wb.Signature, code: bytes) -> None:
        new_funcs.append(leb.write_u(type_index(sig)))
        new_code.append(code)
        exports.append(_export(name, wb.KIND_FUNC, func_count + len(new_funcs) - 1))

    for i, _ in enumerate(info.memories):
        idx = info.imported_memories + i
        exports.append(_export(memory_export(idx), wb.KIND_MEMORY, idx))
    # Typed references, i31ref and table64 go through injected accessors
    # (``_refaccess``), function references through the function table,
    # which follows the module's own tables.
    functable = info.imported_tables + len(info.tables) if func_count else None
    needs_functable = False
    for i, (reftype, limits) in enumerate(info.tables):
        idx = info.imported_tables + i
        exports.append(_export(table_export(idx), wb.KIND_TABLE, idx))
        needs_functable |= rt.ref_class(reftype, info.type_kinds) == "func"
        if ra.needs_table_accessors(reftype, limits.is64):
            desc = ra.table_descriptor(idx, reftype, limits.is64, limits.maximum)
            exports.append(_export(desc, wb.KIND_TABLE, idx))
            for acc in ra.table_accessors(idx, reftype, limits.is64, functable):
                add_func(acc.name, (acc.params, acc.results), acc.code())
    for i, g in enumerate(info.globals):
        if not g.mutable:
            continue
        idx = info.imported_globals + i
        exports.append(_export(global_export(idx), wb.KIND_GLOBAL, idx))
        needs_functable |= rt.ref_class(g.valtype, info.type_kinds) == "func"
        if ra.needs_global_accessors(g.valtype):
            exports.append(_export(ra.global_descriptor(idx, g.valtype), wb.KIND_GLOBAL, idx))
            for acc in ra.global_accessors(idx, g.valtype, functable):
                add_func(acc.name, (acc.params, acc.results), acc.code())
        if g.valtype in ("f32", "f64", "v128"):
            get, put, get_sig, put_sig = _accessor_bodies(idx, g.valtype)
            for name, body, sig in ((getter_export(idx), get, get_sig), (setter_export(idx), put, put_sig)):
                code = b"\x00" + body  # no locals
                add_func(name, sig, leb.write_u(len(code)) + code)

    if info.start is not None:
        exports.append(_export(START_EXPORT, wb.KIND_FUNC, info.start))
        wb.set_section(sections, wb.START, None)

    table_section = info.section(wb.TABLE)
    element_section = info.section(wb.ELEMENT)
    if needs_functable and functable is not None:
        table_idx = functable
        n = leb.write_u(func_count)
        wb.set_section(sections, wb.TABLE, wb.append_to_vector(
            table_section.payload if table_section else None, [b"\x70\x01" + n + n]))
        segment = (b"\x02" + leb.write_u(table_idx) + b"\x41\x00\x0b\x00"
                   + leb.write_vec([leb.write_u(f) for f in range(func_count)]))
        wb.set_section(sections, wb.ELEMENT, wb.append_to_vector(
            element_section.payload if element_section else None, [segment]))
        exports.append(_export(FUNCTABLE_EXPORT, wb.KIND_TABLE, table_idx))

    first_digest_global = info.imported_globals + len(info.globals)
    segments = _segments.plan(info, sections, first_func=func_count + len(new_funcs),
                              at_global=first_digest_global + len(DIGEST_EXPORTS))
    if segments is not None:
        for fname, sig, code in segments.functions:
            new_funcs.append(leb.write_u(type_index(sig)))
            new_code.append(leb.write_u(len(code)) + code)
            if fname is not None:
                exports.append(_export(fname, wb.KIND_FUNC, func_count + len(new_funcs) - 1))
        segments.add_sections(sections)
        exports += [_export(name, wb.KIND_GLOBAL, index) for name, index in segments.global_exports]

    if new_funcs:
        old = info.section(wb.TYPE)
        wb.set_section(sections, wb.TYPE, wb.append_to_vector(old.payload if old else None, new_types)
                       if new_types or old is None else old.payload)
        old = info.section(wb.FUNCTION)
        wb.set_section(sections, wb.FUNCTION, wb.append_to_vector(old.payload if old else None, new_funcs))
        old = info.section(wb.CODE)
        wb.set_section(sections, wb.CODE, wb.append_to_vector(old.payload if old else None, new_code))

    old = info.section(wb.GLOBAL)
    digest_globals = [_DIGEST_GLOBAL + _PADDED_ZERO + b"\x0b" for _ in range(4)]
    if segments is not None:
        digest_globals += segments.globals
    wb.set_section(sections, wb.GLOBAL, wb.append_to_vector(old.payload if old else None, digest_globals))
    for k, name in enumerate(DIGEST_EXPORTS):
        exports.append(_export(name, wb.KIND_GLOBAL, first_digest_global + k))

    old = info.section(wb.EXPORT)
    wb.set_section(sections, wb.EXPORT, wb.append_to_vector(old.payload if old else None, exports))

    out = wb.encode_module(sections)
    out_info = wb.parse_module(out)
    offsets = _digest_offsets(out_info)
    if offsets is None:  # never: the digest exports were added above
        raise InvalidModuleError("prepared output has no digest globals (this is a wasm-migrate bug)")
    digest = _hash_with_zeroed(out, offsets)
    buf = bytearray(out)
    for k, off in enumerate(offsets):
        buf[off:off + 10] = leb.write_s64_padded(int.from_bytes(digest[8 * k:8 * k + 8], "big"))
    out = bytes(buf)
    _validate(out, "prepared output (this is a wasm-migrate bug)")
    return out


def manifest(prepared: bytes) -> Manifest:
    """Read the state exports back from a prepared module.

    Raises InvalidModuleError if the module is not prepared or was modified.
    """
    digest = module_digest(prepared)
    info = wb.parse_module(bytes(prepared))
    names = {e.name: e for e in info.exports}
    memories = tuple(
        MemoryEntry(info.imported_memories + i, memory_export(info.imported_memories + i),
                    lim.minimum, lim.maximum, lim.is64)
        for i, lim in enumerate(info.memories))
    tables = tuple(
        TableEntry(info.imported_tables + i, table_export(info.imported_tables + i), rt, lim.minimum, lim.maximum)
        for i, (rt, lim) in enumerate(info.tables) if table_export(info.imported_tables + i) in names)
    globals_ = []
    for i, g in enumerate(info.globals):
        idx = info.imported_globals + i
        if g.mutable and global_export(idx) in names:
            has_acc = getter_export(idx) in names
            globals_.append(GlobalEntry(idx, global_export(idx), g.valtype,
                                        getter_export(idx) if has_acc else None,
                                        setter_export(idx) if has_acc else None))
    return Manifest(
        module_sha256=digest, memories=memories, tables=tables, globals=tuple(globals_),
        start_export=START_EXPORT if START_EXPORT in names else None,
        functable_export=FUNCTABLE_EXPORT if FUNCTABLE_EXPORT in names else None,
        function_count=_functable_size(info, names),
    )


def _functable_size(info: wb.ModuleInfo, names: dict[str, wb.Export]) -> int:
    exp = names.get(FUNCTABLE_EXPORT)
    if exp is None:
        return 0
    return info.tables[exp.index - info.imported_tables][1].minimum


def first_boot(store: wasmtime.Store, instance: wasmtime.Instance) -> None:
    """Run a fresh instance's one-time initialisation.

    Calls the module's original start function (``__wm_start``) and then a
    WASI reactor's ``_initialize``, if present.  Never call this on an
    instance that will receive a restore.  Traps propagate as wasmtime.Trap.
    """
    exports = instance.exports(store)
    for name in (START_EXPORT, "_initialize"):
        func = exports.get(name)
        if isinstance(func, wasmtime.Func):
            func(store)
