"""Tests of snapshot._pristine: instances started in a captured state and reset to it after each use."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapshot
from snapshot import PAGE_BYTES, NotResettable, Pristine, Resettable, uffd_available

WASM_PAGES = 4
PAGES = WASM_PAGES * 65536 // PAGE_BYTES  # 64

WAT = f"""
(module
  (memory (export "memory") {WASM_PAGES} 8)
  (global $g (mut i32) (i32.const 7))
  (global $sp (mut i64) (i64.const 0))
  (table $t 4 8 funcref)
  (elem (table $t) (i32.const 0) func $one $two)
  (func $one (result i32) (i32.const 1))
  (func $two (result i32) (i32.const 2))
  (func (export "init")
    (i32.store (i32.const 70000) (i32.const 1234))
    (global.set $g (i32.const 42))
    (table.set $t (i32.const 2) (ref.func $two)))
  (func (export "poke") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
  (func (export "peek") (param i32) (result i32) (i32.load8_u (local.get 0)))
  (func (export "word") (result i32) (i32.load (i32.const 70000)))
  (func (export "set_global") (param i32) (global.set $g (local.get 0)))
  (func (export "get_global") (result i32) (global.get $g))
  (func (export "swap_table") (table.set $t (i32.const 0) (ref.func $two)))
  (func (export "slot") (param i32) (result i32) (call_indirect (result i32) (local.get 0)))
  (func (export "grow") (result i32) (memory.grow (i32.const 1)))
  (data (i32.const 100) "from a data segment"))
"""

BACKENDS = ["compare"] + (["uffd"] if uffd_available() else [])


def _pristine(engine, wat: str, init: str | None, given: str | None) -> tuple[Pristine, wasmtime.Module]:
    """A Pristine of ``wat`` after ``init``; ``given``: None, or which bytes it is told ("original", "prepared")."""
    wasm = wasmtime.wat2wasm(wat)
    prepared = snapshot.prepare(wasm)
    module = wasmtime.Module(engine, prepared)
    fresh = _instance(engine, module)
    booted = _instance(engine, module)
    snapshot.first_boot(booted.store, booted.instance)
    if init is not None:
        booted(init)
    told = {None: None, "original": wasm, "prepared": prepared}[given]
    return Pristine(snapshot.capture(booted.store, booted.instance),
                    snapshot.capture(fresh.store, fresh.instance), module=told), module


# Told the module, Pristine scans its code: WAT writes its table with
# table.set, so the table is compared at every reset all the same.
@pytest.fixture(scope="module", params=[None, "original"])
def pristine(engine, request):
    p, module = _pristine(engine, WAT, "init", request.param)
    assert 0 not in p.fixed_tables  # (1, the function table prepare adds, is never written)
    return p, module


class _Inst:
    def __init__(self, engine, module):
        self.store = wasmtime.Store(engine)
        self.instance = wasmtime.Instance(self.store, module, [])
        self.exports = self.instance.exports(self.store)

    def __call__(self, name, *args):
        return self.exports[name](self.store, *args)


def _instance(engine, module) -> _Inst:
    return _Inst(engine, module)


def _started(engine, pristine, backend):
    p, module = pristine
    inst = _instance(engine, module)
    return inst, Resettable(p, inst.store, inst.instance, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_is_the_state_after_init_without_running_it(engine, pristine, backend):
    inst, r = _started(engine, pristine, backend)
    assert inst("word") == 1234 and inst("get_global") == 42 and inst("slot", 2) == 2
    assert bytes(inst("peek", 100 + i) for i in range(19)) == b"from a data segment"
    assert not r.reset().changed  # nothing ran since the start
    r.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_globals_and_tables_written_by_a_use_are_gone_after_reset(engine, pristine, backend):
    inst, r = _started(engine, pristine, backend)
    inst("poke", 5, 9)
    inst("poke", 70000, 0)
    inst("set_global", -1)
    inst("swap_table")
    report = r.reset()
    assert report.changed and report.changed_pages == 2 and report.globals_changed and report.tables_changed
    assert inst("peek", 5) == 0 and inst("word") == 1234 and inst("get_global") == 42 and inst("slot", 0) == 1
    assert not r.reset().changed
    r.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_write_of_the_same_bytes_is_reset_but_not_counted_as_change(engine, pristine, backend):
    inst, r = _started(engine, pristine, backend)
    inst("poke", 100, ord("f"))
    report = r.reset()
    assert report.changed_pages == 0 and not report.changed
    r.close()


def test_grown_memory_is_not_resettable_and_nothing_is_written(engine, pristine):
    inst, r = _started(engine, pristine, BACKENDS[-1])
    inst("poke", 5, 9)
    assert inst("grow") == WASM_PAGES
    with pytest.raises(NotResettable, match="memory 0 grew"):
        r.reset()
    assert inst("peek", 5) == 9
    r.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pages=st.sets(st.integers(0, PAGES - 1), max_size=24), value=st.integers(1, 255))
def test_reset_writes_back_exactly_the_dirtied_pages(engine, pristine, pages, value):
    inst, r = _started(engine, pristine, BACKENDS[-1])
    before = bytes(inst("peek", p * PAGE_BYTES + 17) for p in range(PAGES))
    for p in pages:
        inst("poke", p * PAGE_BYTES + 17, value)
    report = r.reset()
    changed = {p for p in pages if before[p] != value}
    assert report.pages == len(pages)  # the tracker's pages, each written back once
    assert report.changed_pages == len(changed)
    assert bytes(inst("peek", p * PAGE_BYTES + 17) for p in range(PAGES)) == before
    r.close()


# A module whose code writes no table: call_indirect only, the table filled by an active segment.
READ_ONLY_TABLE = """
(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (table $t 3 funcref)
  (elem (table $t) (i32.const 0) func $one $two)
  (func $one (result i32) (i32.const 1))
  (func $two (result i32) (i32.const 2))
  (func (export "init") (global.set $g (i32.const 5)) (i32.store (i32.const 8) (i32.const 77)))
  (func (export "slot") (param i32) (result i32) (call_indirect (result i32) (local.get 0)))
  (func (export "use") (global.set $g (i32.add (global.get $g) (i32.const 1))) (i32.store (i32.const 8) (i32.const 0)))
  (func (export "state") (result i32) (i32.add (global.get $g) (i32.load (i32.const 8)))))
"""


@pytest.mark.parametrize("given", ["original", "prepared"])
def test_a_table_no_code_writes_is_never_read_and_the_rest_is_still_reset(engine, given):
    p, module = _pristine(engine, READ_ONLY_TABLE, "init", given)
    assert p.fixed_tables == {0, 1}  # the module's table, and the function table prepare adds
    inst, r = _started(engine, (p, module), BACKENDS[-1])
    assert r._raw_tables() == []  # a start reads no table
    for _ in range(3):
        assert inst("state") == 82 and inst("slot", 0) == 1 and inst("slot", 1) == 2
        inst("use")
        report = r.reset()
        assert report.changed_pages == 1 and report.globals_changed and not report.tables_changed
    r.close()
    unscanned, _ = _pristine(engine, READ_ONLY_TABLE, "init", None)
    assert not unscanned.fixed_tables


def test_the_module_given_must_be_the_one_captured(engine):
    other = wasmtime.wat2wasm(READ_ONLY_TABLE.replace("(i32.const 77)", "(i32.const 78)"))
    booted = _instance(engine, wasmtime.Module(engine, snapshot.prepare(wasmtime.wat2wasm(READ_ONLY_TABLE))))
    state = snapshot.capture(booted.store, booted.instance)
    with pytest.raises(snapshot.ModuleMismatchError):
        Pristine(state, state, module=other)
