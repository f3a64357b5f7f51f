"""Reference types: their names, their classes, and what prepare refuses (naming item and feature)."""

import pytest
import wasmtime
from hypothesis import given, strategies as st

import snapshot
from snapshot import InvalidModuleError
from snapshot import _reftypes as rt
from snapshot import _wasmbin as wb

ABSTRACT = [short for _, _, short in rt.HEAP_TYPES.values()]


@pytest.mark.parametrize("name", ABSTRACT + [f"(ref {h})" for h, _, _ in rt.HEAP_TYPES.values()])
def test_abstract_reference_types_encode_and_read_back(name):
    data = rt.encode(name)
    assert rt.read_reftype(data + b"\xff", 0) == (name, len(data))


@given(st.integers(0, 2**32 - 1), st.booleans())
def test_concrete_reference_types_encode_and_read_back(index, nullable):
    name = rt.ref_name(f"${index}", nullable)
    data = rt.encode(name)
    assert rt.read_reftype(data, 0) == (name, len(data))
    assert rt.split(name) == (f"${index}", nullable)


@pytest.mark.parametrize("bad", ["i32", "ref", "(ref null $01)", "(ref $-1)", "(ref null foo)", "(ref  any)",
                                 "funcref ", "(ref null $12345678901)", ""])
def test_malformed_type_strings_have_no_class(bad):
    assert rt.ref_class(bad) is None


def test_classes():
    assert [rt.ref_class(t) for t in ("funcref", "(ref $3)", "externref", "i31ref", "(ref i31)", "nullref",
                                       "nullfuncref", "nullexnref", "anyref", "structref", "exnref")] == \
        ["func", "func", "extern", "i31", "i31", "none", "none", "none", "gc", "gc", "exn"]
    assert rt.ref_class("(ref null $1)", ["func", "struct"]) == "gc"
    assert rt.ref_class("(ref null $0)", ["func", "struct"]) == "func"


@given(st.integers(-(2**31), 2**31))
def test_i31_values_fit_only_in_31_signed_bits(value):
    assert rt.value_fits("i31ref", value) == (-(2**30) <= value < 2**30)


def test_values_by_class_and_nullability():
    assert rt.value_fits("(ref null $2)", None) and rt.value_fits("(ref $2)", 5)
    assert not rt.value_fits("(ref $2)", None) and not rt.value_fits("(ref i31)", None)
    assert not rt.value_fits("(ref $2)", -1) and not rt.value_fits("funcref", True)
    assert rt.value_fits("nullref", None) and not rt.value_fits("nullref", 0)
    assert not rt.value_fits("externref", 0) and not rt.value_fits("anyref", None)
    assert not rt.value_fits("exnref", None)


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


REFUSED = [
    ("(module (table 2 anyref))", "table 0 holds GC references (anyref), which cannot be captured"),
    ("(module (table 1 eqref))", "table 0 holds GC references (eqref)"),
    ('(module (import "m" "t" (table 1 funcref)) (table 3 structref))', "table 1 holds GC references (structref)"),
    ("(module (table 1 arrayref))", "table 0 holds GC references (arrayref)"),
    ("(module (type $s (struct)) (global (mut i32) (i32.const 0)) (global (mut (ref null $s)) (ref.null $s)))",
     "global 1 holds GC references (struct type (ref null $0)), which cannot be captured"),
    ("(module (type $a (array i8)) (table 1 (ref null $a)))", "table 0 holds GC references (array type (ref null $0))"),
    ("(module (global (mut exnref) (ref.null exn)))", "global 0 holds exception references (exnref)"),
    ("(module (table 1 exnref))", "table 0 holds exception references (exnref)"),
    ("(module (type $s (struct (field (mut i32)))) (global anyref (struct.new $s (i32.const 1))))",
     "global 0 holds GC references (anyref) to objects with mutable fields"),
    ("(module (type $s (struct (field (mut i32)))) (elem $e (ref null $s) (item (struct.new_default $s))))",
     "element segment 0 holds GC references (struct type (ref null $0)) to objects with mutable fields"),
]


@pytest.mark.parametrize("wat, message", REFUSED)
def test_state_that_cannot_be_captured_is_refused_naming_item_and_feature(wat, message):
    with pytest.raises(InvalidModuleError) as exc:
        snapshot.prepare(wasmtime.wat2wasm(wat))
    assert message in str(exc.value)


ACCEPTED = [
    # GC objects that never change are rebuilt exactly by instantiation.
    "(module (type $s (struct (field i32))) (global anyref (struct.new $s (i32.const 1))))",
    "(module (type $s (struct (field i32))) (elem $e (ref null $s) (item (struct.new_default $s))))",
    # Types alone hold no state; neither do tags or an immutable exnref (always null).
    "(module (type $s (struct (field (mut i32)))) (func (result i32) (struct.get $s 0 (struct.new $s (i32.const 4)))))",
    "(module (tag $e (param i32)) (global exnref (ref.null exn)) (func (throw $e (i32.const 1))))",
    # i31 and bottom references are captured by value.
    "(module (table 1 i31ref) (global (mut nullref) (ref.null none)) (table 1 nullexnref))",
    # A passive segment of functions, of i31s: immutable.
    "(module (type $s (struct (field (mut i32)))) (elem $e i31ref (item (ref.i31 (i32.const 1)))))",
]


@pytest.mark.parametrize("wat", ACCEPTED)
def test_stateless_features_are_accepted(wat):
    prepared = snapshot.prepare(wasmtime.wat2wasm(wat))
    assert snapshot.prepare(prepared) == prepared
