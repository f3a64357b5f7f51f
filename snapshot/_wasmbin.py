"""A minimal reader and writer for the WebAssembly binary format.

Only what module preparation needs: LEB128, the section list, and the
sections whose entries we append to or rewrite (types, imports, functions,
tables, memories, globals, exports, start, elements, code).  Everything else
is carried through as opaque bytes, so custom sections (``name``, DWARF) and
sections we do not touch survive byte for byte.

No Python library writes wasm binaries (the pure-Python ``wasm-tools``
package only parses), so this is ours.  Integers and names are in
``_leb128``.  Every decoding error becomes ``InvalidModuleError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import _reftypes as rt
from ._errors import InvalidModuleError, UnsupportedFeatureError
from ._leb128 import read_name, read_s, read_u, write_u, write_vec

MAGIC = b"\0asm"
MODULE_VERSION = b"\x01\0\0\0"

# Section ids, in the order the spec requires them.  Tag (13, exception
# handling) sits between memory and global; data count (12) before code.
CUSTOM, TYPE, IMPORT, FUNCTION, TABLE, MEMORY, GLOBAL, EXPORT, START, ELEMENT, CODE, DATA, DATACOUNT, TAG = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
)
SECTION_RANK = {TYPE: 1, IMPORT: 2, FUNCTION: 3, TABLE: 4, MEMORY: 5, TAG: 6, GLOBAL: 7,
                EXPORT: 8, START: 9, ELEMENT: 10, DATACOUNT: 11, CODE: 12, DATA: 13}

# Export / import kinds.
KIND_FUNC, KIND_TABLE, KIND_MEMORY, KIND_GLOBAL, KIND_TAG = 0, 1, 2, 3, 4

# Numeric value types and the two reference types every module may hold
# (``_reftypes`` names the others: typed references, GC, exnref).
VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
            0x70: "funcref", 0x6F: "externref"}
VALTYPE_CODES = {name: code for code, name in VALTYPES.items()}
#: A function type: (parameter types, result types).
Signature = tuple[tuple[str, ...], tuple[str, ...]]


# --- module structure ------------------------------------------------------

@dataclass
class Section:
    id: int
    payload: bytes
    offset: int = -1  # payload offset in the source file, -1 if synthesised


@dataclass(frozen=True)
class Limits:
    minimum: int
    maximum: int | None
    shared: bool = False
    is64: bool = False


@dataclass(frozen=True)
class GlobalDef:
    valtype: str
    mutable: bool
    init_offset: int  # offset of the init expression inside the GLOBAL payload
    init_end: int


@dataclass(frozen=True)
class Export:
    name: str
    kind: int
    index: int


@dataclass
class ModuleInfo:
    """The parts of a module that preparation reasons about."""

    sections: list[Section]
    types: list[Signature | None] = field(default_factory=list)  # None: struct/array
    type_kinds: list[str] = field(default_factory=list)  # "func", "struct" or "array" per type index
    mutable_fields: bool = False  # some struct or array type has a mutable field
    imported_funcs: int = 0
    imported_tables: int = 0
    imported_memories: int = 0
    imported_memory_limits: list[Limits] = field(default_factory=list)
    imported_globals: int = 0
    defined_funcs: int = 0
    tables: list[tuple[str, Limits]] = field(default_factory=list)
    memories: list[Limits] = field(default_factory=list)
    globals: list[GlobalDef] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    start: int | None = None
    element_count: int = 0
    code_count: int = 0

    def section(self, section_id: int) -> Section | None:
        for s in self.sections:
            if s.id == section_id:
                return s
        return None


def _read_valtype(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data):
        raise InvalidModuleError("unexpected end of module inside a value type")
    code = data[pos]
    if code in VALTYPES:
        return VALTYPES[code], pos + 1
    ref = rt.read_reftype(data, pos)
    if ref is None:
        raise UnsupportedFeatureError(f"value type 0x{code:02x} is not supported")
    return ref


read_valtype = _read_valtype


def _read_limits(data: bytes, pos: int) -> tuple[Limits, int]:
    if pos >= len(data):
        raise InvalidModuleError("unexpected end of module inside limits")
    flags = data[pos]
    pos += 1
    if flags > 0x07:
        raise InvalidModuleError(f"unknown limits flags 0x{flags:02x}")
    is64 = bool(flags & 0x04)
    bits = 64 if is64 else 32
    minimum, pos = read_u(data, pos, bits)
    maximum = None
    if flags & 0x01:
        maximum, pos = read_u(data, pos, bits)
    return Limits(minimum, maximum, bool(flags & 0x02), is64), pos


def skip_const_expr(data: bytes, pos: int) -> int:
    """Return the offset just past a constant expression's ``end``.

    Accepts the constant instructions of wasm 2.0 plus extended-const.
    Raises InvalidModuleError on anything else.
    """
    while True:
        if pos >= len(data):
            raise InvalidModuleError("unexpected end of module inside a constant expression")
        op = data[pos]
        pos += 1
        if op == 0x0B:  # end
            return pos
        if op == 0x41:
            _, pos = read_s(data, pos, 32)
        elif op == 0x42:
            _, pos = read_s(data, pos, 64)
        elif op == 0x43:
            pos += 4
        elif op == 0x44:
            pos += 8
        elif op == 0x23 or op == 0xD2:  # global.get, ref.func
            _, pos = read_u(data, pos)
        elif op == 0xD0:  # ref.null heaptype
            _, pos = rt.read_heaptype(data, pos)
        elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const add/sub/mul
            pass
        elif op == 0xFD:  # v128.const
            sub, pos = read_u(data, pos)
            if sub != 12:
                raise InvalidModuleError(f"unsupported SIMD op {sub} in a constant expression")
            pos += 16
        elif op == 0xFB:  # GC: struct.new(_default), array.new(_default/_fixed), ref.i31, conversions
            sub, pos = read_u(data, pos)
            if sub in (0, 1, 6, 7, 8):
                _, pos = read_u(data, pos)
                if sub == 8:
                    _, pos = read_u(data, pos)
            elif sub not in (26, 27, 28):
                raise InvalidModuleError(f"unsupported GC op {sub} in a constant expression")
        else:
            raise InvalidModuleError(f"unsupported opcode 0x{op:02x} in a constant expression")


def parse_module(data: bytes) -> ModuleInfo:
    """Split a core module into sections and decode the ones preparation needs.

    Raises InvalidModuleError for components, non-wasm bytes, truncation
    and section misordering.
    """
    data = bytes(data)
    if len(data) < 8 or data[:4] != MAGIC:
        raise InvalidModuleError("not a WebAssembly binary (bad magic number)")
    if data[4:8] != MODULE_VERSION:
        if data[6:8] == b"\x01\x00":
            raise UnsupportedFeatureError("this is a WebAssembly component, not a core module; "
                                          "components are not supported")
        raise InvalidModuleError(f"unsupported WebAssembly binary version {data[4:8].hex()}")
    sections: list[Section] = []
    pos = 8
    last_rank = 0
    while pos < len(data):
        sid = data[pos]
        size, payload_at = read_u(data, pos + 1)
        end = payload_at + size
        if end > len(data):
            raise InvalidModuleError(f"section {sid} runs past the end of the module")
        if sid != CUSTOM:
            rank = SECTION_RANK.get(sid)
            if rank is None:
                raise InvalidModuleError(f"unknown section id {sid}")
            if rank <= last_rank:
                raise InvalidModuleError(f"section {sid} is out of order or repeated")
            last_rank = rank
        sections.append(Section(sid, data[payload_at:end], payload_at))
        pos = end
    info = ModuleInfo(sections)
    for s in sections:
        _decode_section(info, s)
    return info


def _read_subtype(info: ModuleInfo, p: bytes, pos: int) -> int:
    """One (sub)type definition: note its kind, its signature if a function type, and mutable fields."""
    if pos < len(p) and p[pos] in (0x4F, 0x50):  # sub final / sub, with supertypes
        n, pos = read_u(p, pos + 1)
        for _ in range(n):
            _, pos = read_u(p, pos)
    if pos >= len(p):
        raise InvalidModuleError("truncated type definition")
    form, pos = p[pos], pos + 1
    if form == 0x60:
        params: list[str] = []
        results: list[str] = []
        for out in (params, results):
            n, pos = read_u(p, pos)
            for _ in range(n):
                vt, pos = _read_valtype(p, pos)
                out.append(vt)
        info.types.append((tuple(params), tuple(results)))
        info.type_kinds.append("func")
        return pos
    if form not in (0x5E, 0x5F):
        raise InvalidModuleError(f"unknown type form 0x{form:02x}")
    n, pos = read_u(p, pos) if form == 0x5F else (1, pos)
    for _ in range(n):  # field: storage type (value type, i8 or i16) and mutability
        if pos < len(p) and p[pos] in (0x77, 0x78):
            pos += 1
        else:
            _, pos = _read_valtype(p, pos)
        if pos >= len(p) or p[pos] > 1:
            raise InvalidModuleError("bad field mutability flag")
        info.mutable_fields |= p[pos] == 1
        pos += 1
    info.types.append(None)
    info.type_kinds.append("struct" if form == 0x5F else "array")
    return pos


def _decode_section(info: ModuleInfo, s: Section) -> None:
    p = s.payload
    if s.id == TYPE:
        count, pos = read_u(p, 0)
        for _ in range(count):
            if pos < len(p) and p[pos] == 0x4E:  # rec group
                n, pos = read_u(p, pos + 1)
                for _ in range(n):
                    pos = _read_subtype(info, p, pos)
            else:
                pos = _read_subtype(info, p, pos)
    elif s.id == IMPORT:
        count, pos = read_u(p, 0)
        for _ in range(count):
            _, pos = read_name(p, pos)
            _, pos = read_name(p, pos)
            if pos >= len(p):
                raise InvalidModuleError("truncated import")
            kind = p[pos]
            pos += 1
            if kind == KIND_FUNC:
                _, pos = read_u(p, pos)
                info.imported_funcs += 1
            elif kind == KIND_TABLE:
                _, pos = _read_valtype(p, pos)
                _, pos = _read_limits(p, pos)
                info.imported_tables += 1
            elif kind == KIND_MEMORY:
                limits, pos = _read_limits(p, pos)
                info.imported_memory_limits.append(limits)
                info.imported_memories += 1
            elif kind == KIND_GLOBAL:
                _, pos = _read_valtype(p, pos)
                pos += 1
                info.imported_globals += 1
            elif kind == KIND_TAG:
                pos += 1
                _, pos = read_u(p, pos)
            else:
                raise InvalidModuleError(f"unknown import kind {kind}")
    elif s.id == FUNCTION:
        info.defined_funcs, _ = read_u(p, 0)
    elif s.id == TABLE:
        count, pos = read_u(p, 0)
        for _ in range(count):
            init = pos + 1 < len(p) and p[pos:pos + 2] == b"\x40\x00"  # table with an initialiser
            reftype, pos = _read_valtype(p, pos + 2 if init else pos)
            limits, pos = _read_limits(p, pos)
            if init:
                pos = skip_const_expr(p, pos)
            info.tables.append((reftype, limits))
    elif s.id == MEMORY:
        count, pos = read_u(p, 0)
        for _ in range(count):
            limits, pos = _read_limits(p, pos)
            info.memories.append(limits)
    elif s.id == GLOBAL:
        count, pos = read_u(p, 0)
        for _ in range(count):
            vt, pos = _read_valtype(p, pos)
            if pos >= len(p) or p[pos] > 1:
                raise InvalidModuleError("bad global mutability flag")
            mutable = p[pos] == 1
            pos += 1
            init_at = pos
            pos = skip_const_expr(p, pos)
            info.globals.append(GlobalDef(vt, mutable, init_at, pos))
    elif s.id == EXPORT:
        count, pos = read_u(p, 0)
        for _ in range(count):
            name, pos = read_name(p, pos)
            if pos >= len(p):
                raise InvalidModuleError("truncated export")
            kind = p[pos]
            idx, pos = read_u(p, pos + 1)
            info.exports.append(Export(name, kind, idx))
    elif s.id == START:
        info.start, _ = read_u(p, 0)
    elif s.id == ELEMENT:
        info.element_count, _ = read_u(p, 0)
    elif s.id == CODE:
        info.code_count, _ = read_u(p, 0)


def encode_section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + write_u(len(payload)) + payload


def append_to_vector(payload: bytes | None, items: list[bytes]) -> bytes:
    """Return a vector section payload with ``items`` appended to its entries."""
    if payload is None:
        return write_vec(items)
    count, pos = read_u(payload, 0)
    return write_u(count + len(items)) + payload[pos:] + b"".join(items)


def encode_module(sections: list[Section]) -> bytes:
    return MAGIC + MODULE_VERSION + b"".join(encode_section(s.id, s.payload) for s in sections)


def set_section(sections: list[Section], section_id: int, payload: bytes | None) -> None:
    """Replace, insert (at its canonical place) or, with None, drop a section."""
    for i, s in enumerate(sections):
        if s.id == section_id:
            if payload is None:
                del sections[i]
            else:
                sections[i] = Section(section_id, payload)
            return
    if payload is None:
        return
    rank = SECTION_RANK[section_id]
    for i, s in enumerate(sections):
        if s.id != CUSTOM and SECTION_RANK[s.id] > rank:
            sections.insert(i, Section(section_id, payload))
            return
    sections.append(Section(section_id, payload))
