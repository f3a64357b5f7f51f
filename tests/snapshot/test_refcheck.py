"""What prepare refuses, naming the item and the feature, and what it accepts because it holds no state."""

import pytest
import wasmtime

import snapshot
from snapshot import InvalidModuleError

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
