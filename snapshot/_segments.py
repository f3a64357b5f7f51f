"""Passive segments in a module, and the exports ``prepare`` adds to read and set their dropped state.

``data.drop`` and ``elem.drop`` give a passive segment length 0 for the
rest of the instance's life, so ``memory.init`` / ``table.init`` of it with
source offset 1 and length 0 traps exactly when it was dropped, and does
nothing otherwise.  For each kind of segment that has passive segments,
``plan`` generates three functions, exported under fixed names:

* ``probe(lo, hi)`` runs that init for every probed segment k with
  lo <= k < hi (unsigned), in index order, first writing k into the
  injected global ``__wm_probe_at``: when it traps, that global names the
  first dropped segment in the range;
* ``drop(lo, hi)`` drops every probed segment in the range;
* ``count(lo, hi)`` returns how many probed segments the range holds;

and two immutable globals, ``total`` (how many segments are probed) and
``end`` (the highest probed index plus one), so that a capture whose
segments are all known to be dropped needs no call at all.

Probed are the passive segments of non-zero length.  An empty segment's
dropped state cannot be observed by the module (``memory.init`` and
``table.init`` of it succeed at offset 0 with length 0 and trap otherwise,
dropped or not), so it is not state.  Active and declarative segments are
dropped by instantiation itself, in the original and in a restored
instance alike, so they carry nothing either.

The inits need a memory and a table of each segment's reference type.
Data probes use memory 0; a module without memories gets an unexported
memory of 0 pages, which is then memory 0 (nothing in the module can name
it).  Element probes use injected unexported tables of size 0, one per
reference type, appended after every other table.  The range functions
are chains of range tests, about 40 bytes per segment, split into
functions of ``CHUNK`` segments: compiling them took about 90 ms per 1000
segments of a kind here, single-threaded (1000 data plus 1000 element
segments: 190 ms, against 17 ms for the module itself); in one function
per kind it grew faster than linearly (10,000 of each: 4.8 s, chunked
1.2 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import _leb128 as leb
from . import _wasmbin as wb
from ._errors import InvalidModuleError

PROBE_AT = "__wm_probe_at"
DATA, ELEM = "data", "elem"
KINDS = (DATA, ELEM)


def export_name(kind: str, what: str) -> str:
    """The export of ``what`` ("probe", "drop", "count", "total" or "end") for segments of ``kind``."""
    return f"__wm_{kind}_{what}"


@dataclass(frozen=True)
class Segment:
    index: int
    passive: bool
    length: int
    reftype: bytes = b""  # element segments: the nullable form of their reference type


def _reftype(p: bytes, pos: int) -> tuple[bytes, int]:
    """Read a reference type; return it in nullable form (``ref ht`` becomes ``ref null ht``)."""
    if pos >= len(p):
        raise InvalidModuleError("unexpected end of module inside a reference type")
    if p[pos] in (0x63, 0x64):  # (ref null ht) / (ref ht): a heap type follows as s33
        _, end = leb.read_s(p, pos + 1, 33)
        return b"\x63" + p[pos + 1:end], end
    return p[pos:pos + 1], pos + 1


def data_segments(payload: bytes) -> list[Segment]:
    """The data section's segments: passive or not, and their lengths."""
    count, pos = leb.read_u(payload, 0)
    out = []
    for index in range(count):
        flags, pos = leb.read_u(payload, pos)
        if flags not in (0, 1, 2):
            raise InvalidModuleError(f"data segment {index} has unknown flags {flags}")
        if flags == 2:
            _, pos = leb.read_u(payload, pos)  # memory index
        if flags != 1:
            pos = wb.skip_const_expr(payload, pos)
        length, pos = leb.read_u(payload, pos)
        pos += length
        if pos > len(payload):
            raise InvalidModuleError(f"data segment {index} runs past the end of its section")
        out.append(Segment(index, flags == 1, length))
    return out


def elem_segments(payload: bytes) -> list[Segment]:
    """The element section's segments: passive or not, their lengths and reference types."""
    count, pos = leb.read_u(payload, 0)
    out = []
    for index in range(count):
        flags, pos = leb.read_u(payload, pos)
        if flags > 7:
            raise InvalidModuleError(f"element segment {index} has unknown flags {flags}")
        if flags & 3 == 2:
            _, pos = leb.read_u(payload, pos)  # table index
        if not flags & 1:
            pos = wb.skip_const_expr(payload, pos)  # active: the offset
        reftype = b"\x70"
        if flags & 3:  # an element kind (0x00, funcref) or a reference type is given
            if flags & 4:
                reftype, pos = _reftype(payload, pos)
            else:
                pos += 1
        length, pos = leb.read_u(payload, pos)
        for _ in range(length):
            pos = wb.skip_const_expr(payload, pos) if flags & 4 else leb.read_u(payload, pos)[1]
        out.append(Segment(index, flags & 3 == 1, length, reftype))
    if pos > len(payload):
        raise InvalidModuleError("element section runs past its end")
    return out


def _i32(value: int) -> bytes:
    return b"\x41" + leb.write_s(value)


def _in_range(k: int) -> bytes:
    """lo <= k < hi (unsigned), from params 0 and 1, as an i32 on the stack."""
    return b"\x20\x00" + _i32(k) + b"\x4d" + _i32(k) + b"\x20\x01\x49\x71"


#: Segments per generated function.  Cranelift's compile time grows faster
#: than linearly with a function's size, so the range functions are split.
CHUNK = 256
#: An injected function: (export name or None, (params, results), code without its size).
Function = tuple[str | None, wb.Signature, bytes]


def _range_functions(kind: str, segments: list[Segment], at_global: int, first_func: int,
                     init: Callable[[Segment], bytes]) -> list[Function]:
    """The probe, drop and count functions of one kind, as (export name or None, signature, code)."""
    sig: wb.Signature = (("i32", "i32"), ())
    counting: wb.Signature = (("i32", "i32"), ("i32",))
    chunks = [segments[i:i + CHUNK] for i in range(0, len(segments), CHUNK)]
    parts: dict[str, list[bytes]] = {"probe": [], "drop": [], "count": []}
    for chunk in chunks:
        probe, drop, count = [b"\x00"], [b"\x00"], [b"\x00" + _i32(0)]
        for s in chunk:
            test = _in_range(s.index)
            probe.append(test + b"\x04\x40" + _i32(s.index) + b"\x24" + leb.write_u(at_global) + init(s) + b"\x0b")
            drop.append(test + b"\x04\x40\xfc" + (b"\x09" if kind == DATA else b"\x0d")
                        + leb.write_u(s.index) + b"\x0b")
            count.append(test + b"\x6a")
        parts["probe"].append(b"".join(probe) + b"\x0b")
        parts["drop"].append(b"".join(drop) + b"\x0b")
        parts["count"].append(b"".join(count) + b"\x0b")
    names = {p: export_name(kind, p) for p in parts}
    sigs = {"probe": sig, "drop": sig, "count": counting}
    if len(chunks) == 1:
        return [(names[p], sigs[p], parts[p][0]) for p in parts]
    out: list[Function] = [(None, sigs[p], code) for p in parts for code in parts[p]]
    for n, p in enumerate(parts):  # a dispatcher per function: call the chunks the range meets
        body = [b"\x00" + (_i32(0) if p == "count" else b"")]
        for c, chunk in enumerate(chunks):
            call = b"\x20\x00\x20\x01\x10" + leb.write_u(first_func + n * len(chunks) + c)
            meets = (b"\x20\x00" + _i32(chunk[-1].index) + b"\x4d"  # lo <= last
                     + _i32(chunk[0].index) + b"\x20\x01\x49\x71")  # first < hi
            body.append(meets + (b"\x04\x7f" + call + b"\x05" + _i32(0) + b"\x0b\x6a" if p == "count"
                                 else b"\x04\x40" + call + b"\x0b"))
        out.append((names[p], sigs[p], b"".join(body) + b"\x0b"))
    return out


@dataclass
class Injection:
    """What ``prepare`` adds for a module's passive segments."""

    functions: list[Function]
    tables: list[bytes]  # table types to append
    memory: bytes | None  # a memory type to add, if the module has none
    datacount: int | None  # a data count section to add, if missing and data probes need one
    globals: list[bytes]  # global entries to append, the first at ``at_global``
    global_exports: list[tuple[str, int]]  # (export name, global index)

    def add_sections(self, sections: list[wb.Section]) -> None:
        """Append the tables, memory and data count section to a module's sections."""
        for sid, items in ((wb.TABLE, self.tables), (wb.MEMORY, [self.memory] if self.memory else [])):
            if items:
                old = next((s for s in sections if s.id == sid), None)
                wb.set_section(sections, sid, wb.append_to_vector(old.payload if old else None, items))
        if self.datacount is not None:
            wb.set_section(sections, wb.DATACOUNT, leb.write_u(self.datacount))


def _memory0(info: wb.ModuleInfo) -> tuple[bool, bytes | None]:
    """(memory 0 is 64-bit, memory type to inject when the module has no memory)."""
    if info.imported_memories:
        return info.imported_memory_limits[0].is64, None
    if info.memories:
        return info.memories[0].is64, None
    return False, b"\x01\x00\x00"  # 0 pages, at most 0


def plan(info: wb.ModuleInfo, sections: list[wb.Section], *, first_func: int, at_global: int) -> Injection | None:
    """What to add so the passive segments' dropped state can be read and set; None if nothing.

    ``sections`` are the module's sections as rewritten so far (injected
    tables come after the tables they hold); ``at_global`` is the index the
    probe-position global will get, ``first_func`` that of the first
    function added.
    """
    data_sec, elem_sec = info.section(wb.DATA), info.section(wb.ELEMENT)
    datas = [s for s in data_segments(data_sec.payload) if s.passive and s.length] if data_sec else []
    elems = [s for s in elem_segments(elem_sec.payload) if s.passive and s.length] if elem_sec else []
    if not datas and not elems:
        return None
    functions: list[Function] = []
    tables: list[bytes] = []
    memory: bytes | None = None
    datacount: int | None = None
    if datas:
        is64, memory = _memory0(info)
        dest = b"\x42\x00" if is64 else b"\x41\x00"
        functions += _range_functions(DATA, datas, at_global, first_func,
                                      lambda s: dest + b"\x41\x01\x41\x00\xfc\x08" + leb.write_u(s.index) + b"\x00")
        if data_sec is not None and info.section(wb.DATACOUNT) is None:
            datacount = leb.read_u(data_sec.payload, 0)[0]
    if elems:
        table_section = next((s.payload for s in sections if s.id == wb.TABLE), b"\0")
        table_count = info.imported_tables + leb.read_u(table_section, 0)[0]
        types = sorted({s.reftype for s in elems})
        tables = [t + b"\x00\x00" for t in types]  # size 0, no maximum
        where = {t: table_count + i for i, t in enumerate(types)}
        functions += _range_functions(ELEM, elems, at_global, first_func + len(functions),
                                      lambda s: b"\x41\x00\x41\x01\x41\x00\xfc\x0c" + leb.write_u(s.index)
                                      + leb.write_u(where[s.reftype]))
    globals_ = [b"\x7f\x01\x41\x00\x0b"]  # (mut i32) (i32.const 0): the probe position
    exports = [(PROBE_AT, at_global)]
    for kind, probed in ((DATA, datas), (ELEM, elems)):
        if probed:
            for what, value in (("total", len(probed)), ("end", probed[-1].index + 1)):
                exports.append((export_name(kind, what), at_global + len(globals_)))
                globals_.append(b"\x7f\x00" + _i32(value) + b"\x0b")
    return Injection(functions, tables, memory, datacount, globals_, exports)
