"""LEB128 and section handling of the minimal wasm binary rewriter."""

import pytest
import wasmtime
from hypothesis import given, strategies as st

import snapshot

from snapshot import InvalidModuleError
from snapshot import _leb128 as leb
from snapshot import _wasmbin as wb


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_unsigned_leb_round_trips(value):
    data = leb.write_u(value)
    assert leb.read_u(data, 0) == (value, len(data))


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_signed_leb_round_trips_minimal_and_padded(value):
    for data in (leb.write_s(value), leb.write_s64_padded(value)):
        assert leb.read_s(data, 0, 64) == (value, len(data))
    assert len(leb.write_s64_padded(value)) == 10


def test_leb_errors_are_typed():
    with pytest.raises(InvalidModuleError, match="end of module"):
        leb.read_u(b"\x80\x80", 0)
    with pytest.raises(InvalidModuleError, match="too long"):
        leb.read_u(b"\x80\x80\x80\x80\x80\x01", 0)
    with pytest.raises(InvalidModuleError, match="too large"):
        leb.read_u(b"\xff\xff\xff\xff\x7f", 0)


def test_sections_are_inserted_in_canonical_order():
    sections = [wb.Section(wb.TYPE, b"\x00"), wb.Section(wb.CUSTOM, b"\x01x"), wb.Section(wb.CODE, b"\x00")]
    wb.set_section(sections, wb.EXPORT, b"\x00")
    wb.set_section(sections, wb.MEMORY, b"\x00")
    assert [s.id for s in sections] == [wb.TYPE, wb.CUSTOM, wb.MEMORY, wb.EXPORT, wb.CODE]
    wb.set_section(sections, wb.MEMORY, None)
    assert [s.id for s in sections] == [wb.TYPE, wb.CUSTOM, wb.EXPORT, wb.CODE]


def test_misordered_sections_are_refused():
    module = wb.MAGIC + wb.MODULE_VERSION + wb.encode_section(wb.EXPORT, b"\x00") + wb.encode_section(wb.TYPE, b"\x00")
    with pytest.raises(InvalidModuleError, match="out of order"):
        wb.parse_module(module)


def test_append_to_vector_keeps_existing_entries():
    payload = leb.write_vec([b"a", b"b"])
    assert wb.append_to_vector(payload, [b"c"]) == b"\x03abc"
    assert wb.append_to_vector(None, [b"c"]) == b"\x01c"


def test_gc_type_sections_parse():
    wasm = wasmtime.wat2wasm("""(module
      (rec (type $node (sub (struct (field $next (ref null $node)) (field i8) (field (mut i16)))))
           (type $f (func (param (ref null $node)) (result i32))))
      (type $bytes (array (mut i8)))
      (type $leaf (sub final $node (struct (field (ref null $node)) (field i8) (field (mut i16)) (field f64))))
      (func (type $f) i32.const 0))""")
    info = wb.parse_module(wasm)
    assert info.type_kinds == ["struct", "func", "array", "struct"]
    assert info.types[1] == (("(ref null $0)",), ("i32",)) and info.types[0] is None
    assert info.mutable_fields
    snapshot.prepare(wasm)
