"""Tests of snapshot._tablewrites: which tables a module's code writes, and which tables nothing can write."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

import snapshot
from snapshot._leb128 import write_s, write_u
from snapshot._tablewrites import fixed_tables, scan_code, written_tables
from workloads.thirdparty import find_thirdparty

# --- random instruction streams ---------------------------------------------------------------

_PLAIN = [0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD5, *range(0x45, 0xC5)]
_ONE_INDEX = [0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x18, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
              0x3F, 0x40, 0xD2, 0xD4, 0xD6]
_VALTYPES = [0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F, 0x6E, 0x71, 0x73]  # numeric, v128, abstract refs
_UNKNOWN_ONE_BYTE = [*range(0xC5, 0xD0), 0xD7, 0x16, 0x17, 0x1D, 0x1E, 0x27, *range(0xE0, 0xFB), 0xFF]

u32 = st.integers(0, 2**32 - 1)


def raw(n: int) -> st.SearchStrategy[bytes]:
    """``n`` bytes of an immediate, often ones that would decode as a table write or an unknown opcode:
    a decoder that reads one byte too few or too many then gets another answer."""
    byte = st.one_of(st.sampled_from([0x26, 0xFB, 0xC5, 0x11, 0xFC]), st.integers(0, 255))
    return st.lists(byte, min_size=n, max_size=n).map(bytes)


@st.composite
def uleb(draw, value=u32):
    """An unsigned LEB128, sometimes padded with redundant bytes (valid wasm up to 5 bytes for a u32)."""
    v = draw(value)
    raw = bytearray(write_u(v))
    pad = draw(st.integers(0, 5 - len(raw))) if len(raw) < 5 else 0
    if pad:
        raw[-1] |= 0x80
        raw += b"\x80" * (pad - 1) + b"\x00"
    return bytes(raw)


@st.composite
def valtype(draw):
    if draw(st.booleans()):
        return bytes([draw(st.sampled_from(_VALTYPES))])
    heap = draw(st.one_of(st.sampled_from([b"\x70", b"\x6f", b"\x6e"]), st.integers(0, 10_000).map(write_s)))
    return bytes([draw(st.sampled_from([0x63, 0x64]))]) + heap


@st.composite
def blocktype(draw):
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return b"\x40"
    if kind == 1:
        return draw(valtype())
    return write_s(draw(st.integers(0, 2**32 - 1)))  # a type index: a non-negative s33


@st.composite
def memarg(draw):
    align = draw(st.integers(0, 6))
    out = b""
    if draw(st.booleans()):
        out = write_u(align | 0x40) + draw(uleb())  # multi-memory: the memory index follows
    else:
        out = write_u(align)
    return out + write_u(draw(st.integers(0, 2**64 - 1)))


@st.composite
def instruction(draw, unknown: bool):
    """(bytes, the table it writes or None, whether the decoder cannot know it); ``unknown``: may be unknown."""
    kind = draw(st.sampled_from(range(16) if unknown else [k for k in range(16) if k != 14]))
    if kind == 0:
        return bytes([draw(st.sampled_from(_PLAIN))]), None, False
    if kind == 1:
        return bytes([draw(st.sampled_from(_ONE_INDEX))]) + draw(uleb()), None, False
    if kind == 2:
        op = draw(st.sampled_from([0x41, 0x42]))
        bits = 32 if op == 0x41 else 64
        return bytes([op]) + write_s(draw(st.integers(-(2**(bits - 1)), 2**(bits - 1) - 1))), None, False
    if kind == 3:
        return bytes([draw(st.sampled_from([0x11, 0x13]))]) + draw(uleb()) + draw(uleb()), None, False
    if kind == 4:
        return bytes([draw(st.integers(0x28, 0x3E))]) + draw(memarg()), None, False
    if kind == 5:
        return bytes([draw(st.sampled_from([0x02, 0x03, 0x04, 0x06]))]) + draw(blocktype()), None, False
    if kind == 6:
        labels = draw(st.lists(uleb(), max_size=5))
        return b"\x0e" + write_u(len(labels)) + b"".join(labels) + draw(uleb()), None, False
    if kind == 7:
        types = draw(st.lists(valtype(), max_size=3))
        return b"\x1c" + write_u(len(types)) + b"".join(types), None, False
    if kind == 8:
        heap = draw(st.one_of(st.sampled_from([b"\x70", b"\x6f"]), st.integers(0, 100_000).map(write_s)))
        return b"\xd0" + heap, None, False
    if kind == 9:
        op = draw(st.sampled_from([0x43, 0x44]))
        return bytes([op]) + draw(raw(4 if op == 0x43 else 8)), None, False
    if kind == 10:
        table = draw(st.integers(0, 1000))
        return b"\x26" + draw(uleb(st.just(table))), table, False
    if kind == 11:
        return draw(_bulk())
    if kind in (12, 15):
        return draw(_simd_or_atomic()), None, False
    if kind == 13:
        catches = []
        for _ in range(draw(st.integers(0, 3))):
            c = draw(st.integers(0, 3))
            catches.append(bytes([c]) + (draw(uleb()) if c < 2 else b"") + draw(uleb()))
        return b"\x1f" + draw(blocktype()) + write_u(len(catches)) + b"".join(catches), None, False
    if draw(st.booleans()):
        return bytes([draw(st.sampled_from(_UNKNOWN_ONE_BYTE))]), None, True
    return b"\xfb" + draw(uleb(st.integers(0, 40))), None, True  # GC: not decoded


@st.composite
def _bulk(draw):
    sub = draw(st.integers(0, 19))
    if sub > 17:
        return b"\xfc" + write_u(sub), None, True
    counts = {8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1}
    table_at = {12: 1, 14: 0, 15: 0, 17: 0}.get(sub)
    values = [draw(st.integers(0, 1000)) for _ in range(counts.get(sub, 0))]
    imm = b"".join(draw(uleb(st.just(v))) for v in values)
    return b"\xfc" + draw(uleb(st.just(sub))) + imm, None if table_at is None else values[table_at], False


_SIMD_PLAIN = [k for k in range(0x114) if not (k < 0x0E or 0x15 <= k < 0x23 or 0x54 <= k < 0x5E)]


@st.composite
def _simd_or_atomic(draw):
    """A SIMD or atomic instruction, each shape of immediates about as likely as the others."""
    shape = draw(st.integers(0, 5))
    if shape == 0:
        sub, imm = draw(st.sampled_from([*range(12), 0x5C, 0x5D])), draw(memarg())
    elif shape == 1:
        sub = draw(st.integers(0x54, 0x5B))
        imm = draw(memarg()) + draw(raw(1))
    elif shape == 2:
        sub, imm = draw(st.sampled_from([0x0C, 0x0D])), draw(raw(16))
    elif shape == 3:
        sub, imm = draw(st.integers(0x15, 0x22)), draw(raw(1))
    elif shape == 4:
        sub, imm = draw(st.sampled_from(_SIMD_PLAIN)), b""
    else:
        sub = draw(st.sampled_from([0, 1, 2, 3, *range(0x10, 0x4F)]))
        return b"\xfe" + write_u(sub) + (b"\x00" if sub == 3 else draw(memarg()))
    return b"\xfd" + draw(uleb(st.just(sub))) + imm


@st.composite
def body(draw, unknown: bool = False):
    groups = draw(st.lists(st.tuples(uleb(st.integers(0, 1000)), valtype()), max_size=3))
    locals_ = write_u(len(groups)) + b"".join(n + t for n, t in groups)
    items = draw(st.lists(instruction(unknown), max_size=30))
    code = locals_ + b"".join(i[0] for i in items) + b"\x0b"
    return write_u(len(code)) + code, {i[1] for i in items if i[1] is not None}, any(i[2] for i in items)


@settings(max_examples=400, deadline=None)
@given(st.booleans().flatmap(lambda unknown: st.lists(body(unknown), max_size=4)))
def test_the_scan_finds_exactly_the_tables_written_or_says_it_is_unsure(bodies):
    payload = write_u(len(bodies)) + b"".join(b[0] for b in bodies)
    unknown = any(b[2] for b in bodies)
    expected = None if unknown else frozenset().union(*(b[1] for b in bodies))
    assert scan_code(payload) == expected


@given(st.lists(body(), min_size=1, max_size=2), st.integers(1, 3))
def test_a_body_cut_short_or_run_over_makes_the_scan_unsure(bodies, cut):
    whole = b"".join(b[0] for b in bodies)
    assert scan_code(write_u(len(bodies)) + whole[:-cut]) is None
    assert scan_code(write_u(len(bodies)) + whole + b"\x01") is None


# --- real modules --------------------------------------------------------------------------------

_WRITERS = {
    "table.set": "(table.set $t (i32.const 0) (ref.null func))",
    "table.grow": "(drop (table.grow $t (ref.null func) (i32.const 1)))",
    "table.fill": "(table.fill $t (i32.const 0) (ref.null func) (i32.const 1))",
    "table.copy": "(table.copy $t $u (i32.const 0) (i32.const 0) (i32.const 1))",
    "table.init": "(table.init $t $seg (i32.const 0) (i32.const 0) (i32.const 1))",
}


def _module(body: str, extra: str = "") -> bytes:
    return wasmtime.wat2wasm(f"""
(module
  (table $u 2 funcref)
  (table $t 2 10 funcref)
  (elem $seg func $f)
  (func $f)
  (func (export "go") {body})
  {extra})""")


@pytest.mark.parametrize("name", sorted(_WRITERS))
def test_each_table_writing_instruction_is_found(name):
    wasm = _module(_WRITERS[name])
    assert written_tables(wasm) == {1}
    prepared = snapshot.prepare(wasm)
    assert 1 not in fixed_tables(prepared) and 0 in fixed_tables(prepared)


def test_reading_instructions_and_elem_drop_write_no_table():
    wasm = _module("(drop (table.get $t (i32.const 0))) (drop (table.size $t)) (elem.drop $seg)"
                   "(call_indirect $t (i32.const 0))")
    assert written_tables(wasm) == frozenset()
    assert {0, 1} <= fixed_tables(snapshot.prepare(wasm))


def test_a_table_the_module_exports_or_imports_is_never_fixed():
    exported = snapshot.prepare(_module("", '(export "t" (table $t))'))
    assert 1 not in fixed_tables(exported) and 0 in fixed_tables(exported)
    imported = snapshot.prepare(wasmtime.wat2wasm('(module (import "m" "t" (table 1 funcref)) (table 1 funcref))'))
    assert 0 not in fixed_tables(imported) and 1 in fixed_tables(imported)


def test_gc_instructions_make_every_table_compared():
    wasm = wasmtime.wat2wasm("""(module (type $s (struct (field i32))) (table 1 funcref)
      (func (export "go") (drop (struct.new $s (i32.const 1)))))""")
    assert written_tables(wasm) is None
    assert fixed_tables(wasm) == frozenset()


def test_quickjs_writes_no_table():
    path = find_thirdparty()
    if path is None:
        pytest.skip("QuickJS is not installed")
    assert written_tables(path.read_bytes()) == frozenset()
