"""Tests of snapshot._bounded: which exports provably finish within a bounded number of instructions."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

import snapshot
from snapshot import _wasmbin as wb
from snapshot._bounded import _spans
from workloads.thirdparty import find_thirdparty


def bounded(wat: str, limit: int = snapshot.DEFAULT_MAX_INSTRUCTIONS) -> dict[str, int]:
    return snapshot.bounded_exports(wasmtime.wat2wasm(wat), limit)


def body_sizes(wasm: bytes) -> list[int]:
    info = wb.parse_module(wasm)
    code = info.section(wb.CODE)
    assert code is not None
    spans = _spans(code.payload)
    assert spans is not None
    return [end - pos for pos, end in spans]


def test_straight_line_exports_are_bounded_by_their_size_plus_their_callees():
    wasm = wasmtime.wat2wasm("""
(module
  (func $leaf (export "leaf") (result i32) i32.const 1)
  (func $two (export "two") (result i32) call $leaf call $leaf i32.add)
  (func (export "four") (result i32) call $two call $two i32.add)
  (func (export "noop"))
  (func (export "branches") (param i32) (result i32)
    (block (result i32) (br_if 0 (i32.const 7) (local.get 0)) (drop) (i32.const 8))))
""")
    leaf, two, four, noop, branches = body_sizes(wasm)
    assert snapshot.bounded_exports(wasm) == {
        "leaf": leaf, "two": two + 2 * leaf, "four": four + 2 * (two + 2 * leaf), "noop": noop,
        "branches": branches}


@pytest.mark.parametrize("body", [
    "(loop)",
    "(call $host)",
    "(call $self)",
    "(call_indirect (type $v) (i32.const 0))",
    "(return_call_indirect (type $v) (i32.const 0))",
    "(call_ref $v (ref.func $leaf))",
    "(drop (memory.grow (i32.const 1)))",
    "(memory.fill (i32.const 0) (i32.const 0) (i32.const 1))",
    "(memory.copy (i32.const 0) (i32.const 0) (i32.const 1))",
    "(memory.init $d (i32.const 0) (i32.const 0) (i32.const 1))",
    "(drop (table.grow $t (ref.null func) (i32.const 1)))",
    "(table.fill $t (i32.const 0) (ref.null func) (i32.const 1))",
    "(table.copy $t $t (i32.const 0) (i32.const 0) (i32.const 1))",
    "(table.init $t $e (i32.const 0) (i32.const 0) (i32.const 1))",
    "(drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const 0)))",
    "(call $mutual)",
])
def test_an_instruction_with_no_bound_makes_the_export_and_its_callers_unbounded(body):
    found = bounded(f"""
(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $host (result i32)))
  (type $v (func))
  (memory 1 1 shared)
  (data $d "x")
  (table $t 1 funcref)
  (elem $e func $leaf)
  (elem declare func $leaf)
  (func $leaf (export "leaf"))
  (func $self (export "it") {body.replace("(call $host)", "(drop (call $host))")})
  (func (export "caller") call $self)
  (func $mutual call $self)
  (func (export "tail") return_call $leaf))
""")
    assert found.keys() == {"leaf", "tail"}


def test_memory_atomic_notify_and_table_size_are_bounded():
    found = bounded("""
(module (memory 1 1 shared) (table 1 funcref)
  (func (export "f") (result i32) (drop (memory.atomic.notify (i32.const 0) (i32.const 1))) (table.size 0)))
""")
    assert "f" in found


def test_the_limit_counts_every_call_site():
    # Each level calls the one below twice: 2**depth leaves for one call of the top.
    depth = 12
    funcs = ["(func $f0)"] + [f"(func $f{i} call $f{i - 1} call $f{i - 1})" for i in range(1, depth + 1)]
    exports = "".join(f'(export "f{i}" (func $f{i}))' for i in range(depth + 1))
    wasm = wasmtime.wat2wasm(f"(module {' '.join(funcs)} {exports})")
    sizes = body_sizes(wasm)
    bound = [sizes[0]]
    for i in range(1, depth + 1):
        bound.append(sizes[i] + 2 * bound[-1])
    assert bound[-1] > 10_000  # the top of the tree is past the default limit
    found = snapshot.bounded_exports(wasm)
    assert found == {f"f{i}": b for i, b in enumerate(bound) if b <= 10_000}
    assert snapshot.bounded_exports(wasm, bound[5]) == {f"f{i}": bound[i] for i in range(6)}


def test_a_body_longer_than_the_limit_is_unbounded_without_decoding_it():
    wat = "(module (func (export \"long\") " + "(drop (i32.const 1)) " * 600 + "))"
    assert "long" in bounded(wat)
    assert bounded(wat, 1000) == {}


def test_gc_instructions_and_bytes_that_do_not_parse_give_no_bound():
    assert bounded("(module (type $s (struct)) (func (export \"f\") (drop (struct.new $s))))") == {}
    assert snapshot.bounded_exports(b"\x00asm\x01\x00\x00\x00\x0a\x05\x01\x03\x00\x0b") == {}
    assert snapshot.bounded_exports(b"not wasm") == {}


def test_quickjs_accessors_are_bounded_and_its_interpreter_is_not():
    path = find_thirdparty()
    if path is None:
        pytest.skip("QuickJS is not installed")
    found = snapshot.bounded_exports(path.read_bytes())
    assert "JS_DupValue" in found
    assert not {"JS_Eval", "JS_NewRuntime", "JS_RunGC"} & found.keys()


# --- random call graphs: the bound is exact for the model, and no run goes past it -------------------

_ITEMS = st.one_of(  # mostly bounded items, so that deep bounded call graphs are common
    st.tuples(st.just("const"), st.integers(0, 2**31)),
    st.tuples(st.just("branch"), st.integers(0, 1)),
    st.tuples(st.just("call"), st.integers(0, 5)),
    st.tuples(st.just("call"), st.integers(0, 5)),
    st.tuples(st.just("call"), st.integers(0, 5)),
    st.tuples(st.sampled_from(["loop", "host"]), st.just(0)),
)
_WAT = {
    "const": "(drop (i32.const {}))",
    "branch": "(block (br_if 0 (i32.const {})) (drop (i32.const 5)) (drop (i32.const 6)))",
    "call": "(call $f{})",
    "loop": "(loop (br_if 0 (i32.const 0)))",
    "host": "(call $host)",
}


def _expected(graph: list[list[tuple[str, int]]], sizes: list[int], func: int, path: frozenset[int],
              limit: int) -> int | None:
    """The model's bound of one call of ``func``: its size plus each callee's, per call site."""
    items = graph[func]
    if func in path or any(kind in ("loop", "host") for kind, _ in items):
        return None
    total = sizes[func]
    for kind, arg in items:
        if kind == "call":
            sub = _expected(graph, sizes, arg, path | {func}, limit)
            if sub is None or total + sub > limit:
                return None
            total += sub
    return total if total <= limit else None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_ITEMS, max_size=6), min_size=6, max_size=6), st.integers(20, 400))
def test_random_call_graphs_get_the_models_bound_and_never_run_past_it(graph, limit):
    funcs = "\n".join(f"(func $f{i} (export \"f{i}\") {' '.join(_WAT[k].format(a) for k, a in items)})"
                      for i, items in enumerate(graph))
    wasm = wasmtime.wat2wasm(f'(module (import "env" "host" (func $host)) {funcs})')
    sizes = body_sizes(wasm)
    found = snapshot.bounded_exports(wasm, limit)
    expected = {f"f{i}": _expected(graph, sizes, i, frozenset(), limit) for i in range(len(graph))}
    assert found == {name: b for name, b in expected.items() if b is not None}

    config = wasmtime.Config()
    config.consume_fuel = True
    store = wasmtime.Store(wasmtime.Engine(config))
    host = wasmtime.Func(store, wasmtime.FuncType([], []), lambda: None)
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, wasm), [host])
    for name, bound in found.items():
        store.set_fuel(10**6)
        func = instance.exports(store)[name]
        assert isinstance(func, wasmtime.Func)
        func(store)
        assert 10**6 - store.get_fuel() <= bound, name  # wasmtime charges at most one fuel per instruction


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_modules_give_an_answer_not_an_exception(data):
    wasm = bytearray(wasmtime.wat2wasm("""
(module (func $a (export "a") (result i32) (call $b) (i32.const 2) (i32.add)) (func $b (result i32) (i32.const 1))
  (func (export "l") (loop)))"""))
    for _ in range(data.draw(st.integers(1, 4))):
        wasm[data.draw(st.integers(8, len(wasm) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(8, len(wasm)))
    found = snapshot.bounded_exports(bytes(wasm[:cut]))
    assert isinstance(found, dict)
