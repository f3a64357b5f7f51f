"""Reference types: their names, their classes and the values a snapshot may carry."""

import pytest
from hypothesis import given, strategies as st

from snapshot import _reftypes as rt

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
