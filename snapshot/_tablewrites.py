"""Which tables a module's code can write: every instruction of every function body, decoded.

A reset compares each table element by element after every call (about
0.4 ms for QuickJS's 580 functions).  A table no instruction of the
module writes, that the module neither imports nor exports under a name
of its own, keeps the elements it had after initialisation for the life
of the instance, so a reset can skip it.  ``fixed_tables`` finds those.

The instructions that write a table's elements or size are ``table.set``,
``table.grow``, ``table.fill``, ``table.copy`` (its destination) and
``table.init``.  ``elem.drop`` writes no table: it changes which segments
are dropped, which a reset checks on its own.  The decoder knows the
instructions of wasm 2.0 (sign extension, saturating truncation, bulk
memory, reference types, multi-value, SIMD with relaxed SIMD), threads,
tail calls, typed function references, multi-memory, memory64 and
exception handling; an instruction outside those (GC's ``0xFB`` prefix,
anything newer) makes the scan answer None, "unsure", and every table is
compared as before.  So is a body whose instructions do not end exactly
at its end.  The bytes must be a module that validates (``prepare``
checks its output), so a reserved opcode inside a known range (a gap in
the SIMD numbering) cannot occur.
"""

from __future__ import annotations

from . import _wasmbin as wb
from ._errors import InvalidModuleError
from ._leb128 import read_u

__all__ = ["fixed_tables", "written_tables"]

# How each single-byte opcode's immediates are laid out.
_NONE, _LEB, _LEB2, _MEMARG, _BLOCK, _BR_TABLE, _SELECT_T, _HEAP, _F32, _F64, _TRY_TABLE, _PREFIX, \
    _TABLE_SET, _UNKNOWN = range(14)

_KINDS = [_UNKNOWN] * 256
for _op in (0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD5, *range(0x45, 0xC5)):
    _KINDS[_op] = _NONE
for _op in (0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x18, *range(0x20, 0x26), 0x3F, 0x40,
            0x41, 0x42, 0xD2, 0xD4, 0xD6):
    _KINDS[_op] = _LEB  # an index, a label, a memory, or an i32/i64 constant (signed LEB: skipped alike)
for _op in (0x11, 0x13):
    _KINDS[_op] = _LEB2  # call_indirect, return_call_indirect: type and table
for _op in range(0x28, 0x3F):
    _KINDS[_op] = _MEMARG
for _op in (0x02, 0x03, 0x04, 0x06):
    _KINDS[_op] = _BLOCK
_KINDS[0x0E] = _BR_TABLE
_KINDS[0x1C] = _SELECT_T
_KINDS[0xD0] = _HEAP
_KINDS[0x43] = _F32
_KINDS[0x44] = _F64
_KINDS[0x1F] = _TRY_TABLE
_KINDS[0x26] = _TABLE_SET
for _op in (0xFC, 0xFD, 0xFE):
    _KINDS[_op] = _PREFIX

#: 0xFC sub-opcodes: how many LEB immediates, and which of them (if any) names a written table.
_FC = {**{k: (0, None) for k in range(8)}, 8: (2, None), 9: (1, None), 10: (2, None), 11: (1, None),
       12: (2, 1), 13: (1, None), 14: (2, 0), 15: (1, 0), 16: (1, None), 17: (1, 0)}
_SIMD_MEMARG = frozenset(range(12)) | {0x5C, 0x5D}
_SIMD_MEMARG_LANE = frozenset(range(0x54, 0x5C))
_SIMD_LANE = frozenset(range(0x15, 0x23))
_SIMD_LAST = 0x113  # the last relaxed SIMD instruction
_ATOMIC_LAST = 0x4E

#: In a ``calls`` list (``_scan_body``): the body has an instruction whose running time no bound of
#: the body's size gives: ``loop``, a call whose callee is not a constant, ``memory.grow``, a bulk
#: memory or table instruction, or an atomic wait.
UNBOUNDED = -1
_CALL, _RETURN_CALL = 0x10, 0x12
#: ``loop``, ``call_indirect``, ``return_call_indirect``, ``call_ref``, ``return_call_ref``, ``memory.grow``.
_UNBOUNDED_OPS = frozenset({0x03, 0x11, 0x13, 0x14, 0x15, 0x40})
_WATCHED_OPS = _UNBOUNDED_OPS | {_CALL, _RETURN_CALL}
_FC_UNBOUNDED = frozenset({8, 10, 11, 12, 14, 15, 17})  # memory.init/copy/fill, table.init/copy/grow/fill
_FE_UNBOUNDED = frozenset({1, 2})  # memory.atomic.wait32/64


def _skip_leb(code: bytes, pos: int) -> int:
    while code[pos] & 0x80:
        pos += 1
    return pos + 1


def _skip_memarg(code: bytes, pos: int) -> int:
    flags, pos = read_u(code, pos)
    if flags & 0x40:  # multi-memory: a memory index follows the alignment
        pos = _skip_leb(code, pos)
    return _skip_leb(code, pos)  # the offset (u64 under memory64)


def _skip_valtype(code: bytes, pos: int) -> int:
    byte = code[pos]
    return _skip_leb(code, pos + 1) if byte in (0x63, 0x64) else pos + 1  # (ref null? ht): a heap type follows


def _skip_blocktype(code: bytes, pos: int) -> int:
    byte = code[pos]
    if 0x40 <= byte < 0x80:  # 0x40 (empty) or one value type: a negative one-byte s33
        return _skip_valtype(code, pos)
    return _skip_leb(code, pos)  # a type index (s33, non-negative)


def _prefixed(code: bytes, op: int, pos: int, written: set[int], calls: list[int] | None) -> int | None:
    """Skip the rest of a prefixed instruction; None if it is not one the decoder knows."""
    sub, pos = read_u(code, pos)
    if calls is not None and sub in (_FC_UNBOUNDED if op == 0xFC else _FE_UNBOUNDED if op == 0xFE else ()):
        calls.append(UNBOUNDED)
    if op == 0xFC:
        if sub not in _FC:
            return None
        count, table_at = _FC[sub]
        for k in range(count):
            value, pos = read_u(code, pos)
            if k == table_at:
                written.add(value)
        return pos
    if op == 0xFD:
        if sub > _SIMD_LAST:
            return None
        if sub in _SIMD_MEMARG:
            return _skip_memarg(code, pos)
        if sub in _SIMD_MEMARG_LANE:
            return _skip_memarg(code, pos) + 1
        if sub in (0x0C, 0x0D):  # v128.const, i8x16.shuffle
            return pos + 16
        return pos + 1 if sub in _SIMD_LANE else pos
    if sub > _ATOMIC_LAST or 0x03 < sub < 0x10:  # 0xFE: threads
        return None
    return pos + 1 if sub == 0x03 else _skip_memarg(code, pos)  # atomic.fence takes one zero byte


def _scan_body(code: bytes, pos: int, end: int, written: set[int], calls: list[int] | None = None) -> bool:
    """Add the tables the body in ``code[pos:end]`` writes to ``written``; False if unsure.

    With ``calls``, also append the index each ``call`` or ``return_call``
    names, and ``UNBOUNDED`` for each instruction that makes the body's
    running time unbounded.
    """
    kinds = _KINDS
    groups, pos = read_u(code, pos)
    for _ in range(groups):  # locals: (count, value type)
        pos = _skip_valtype(code, _skip_leb(code, pos))
    while pos < end:
        op = code[pos]
        pos += 1
        kind = kinds[op]
        if kind == _NONE:
            continue
        if calls is not None and op in _WATCHED_OPS:
            if op in (_CALL, _RETURN_CALL):
                callee, pos = read_u(code, pos)
                calls.append(callee)
                continue
            calls.append(UNBOUNDED)
        if kind == _LEB:
            while code[pos] & 0x80:
                pos += 1
            pos += 1
        elif kind == _MEMARG:
            pos = _skip_memarg(code, pos)
        elif kind == _BLOCK:
            pos = _skip_blocktype(code, pos)
        elif kind == _LEB2:
            pos = _skip_leb(code, _skip_leb(code, pos))
        elif kind == _TABLE_SET:
            table, pos = read_u(code, pos)
            written.add(table)
        elif kind == _PREFIX:
            after = _prefixed(code, op, pos, written, calls)
            if after is None:
                return False
            pos = after
        elif kind == _F32:
            pos += 4
        elif kind == _F64:
            pos += 8
        elif kind == _BR_TABLE:
            n, pos = read_u(code, pos)
            for _ in range(n + 1):
                pos = _skip_leb(code, pos)
        elif kind == _SELECT_T:
            n, pos = read_u(code, pos)
            for _ in range(n):
                pos = _skip_valtype(code, pos)
        elif kind == _HEAP:
            pos = _skip_leb(code, pos)
        elif kind == _TRY_TABLE:
            pos = _skip_blocktype(code, pos)
            n, pos = read_u(code, pos)
            for _ in range(n):
                catch = code[pos]
                if catch > 3:
                    return False
                pos = _skip_leb(code, pos + 1)  # the tag (catch, catch_ref) or the label
                if catch < 2:
                    pos = _skip_leb(code, pos)  # the label
        else:
            return False
    return pos == end


def scan_code(payload: bytes) -> frozenset[int] | None:
    """The tables the function bodies of a code section's ``payload`` write; None if unsure."""
    written: set[int] = set()
    try:
        count, pos = read_u(payload, 0)
        for _ in range(count):
            size, pos = read_u(payload, pos)
            end = pos + size
            if end > len(payload) or not _scan_body(payload, pos, end, written):
                return None
            pos = end
    except (IndexError, InvalidModuleError):
        return None
    return frozenset(written) if pos == len(payload) else None


def written_tables(wasm: bytes) -> frozenset[int] | None:
    """The indices of the tables some instruction of module ``wasm`` writes; None if unsure."""
    info = wb.parse_module(wasm)
    code = info.section(wb.CODE)
    return frozenset() if code is None else scan_code(code.payload)


def fixed_tables(prepared: bytes) -> frozenset[int]:
    """The tables of a prepared module whose elements no guest code or host can change after instantiation.

    Defined (not imported), exported under no name but those ``prepare``
    adds (``__wm_``: a prepared module has no other such export), and
    written by no instruction.  Empty when the scan is unsure.
    """
    info = wb.parse_module(prepared)
    code = info.section(wb.CODE)
    written = frozenset() if code is None else scan_code(code.payload)
    if written is None:
        return frozenset()
    exported = {e.index for e in info.exports if e.kind == wb.KIND_TABLE and not e.name.startswith("__wm_")}
    defined = range(info.imported_tables, info.imported_tables + len(info.tables))
    return frozenset(t for t in defined if t not in written and t not in exported)
