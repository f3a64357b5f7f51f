"""Module preparation: exports, start handling, digest, idempotence, errors."""

import collections
import re

import pytest
import wasmtime

import snapshot
import workloads
from snapshot import InvalidModuleError

import wast
from damage import EDITS, damage

WAT = r"""
(module
  (import "env" "f" (func $imp))
  (func $a (result i32) i32.const 1)
  (func $init (global.set $cnt (i32.const 7)))
  (table $t 2 funcref)
  (elem (table $t) (i32.const 0) func $a)
  (global $cnt (mut i32) (i32.const 0))
  (global $k i64 (i64.const 5))
  (global $f (mut f32) (f32.const 1.5))
  (memory 1)
  (start $init)
  (export "a" (func $a)))
"""


def test_prepare_exports_state_and_moves_start():
    prepared = snapshot.prepare(wasmtime.wat2wasm(WAT))
    m = snapshot.manifest(prepared)
    assert [e.export for e in m.memories] == ["__wm_memory_0"]
    assert [(e.index, e.reftype) for e in m.tables] == [(0, "funcref")]
    assert [(g.index, g.valtype, g.getter) for g in m.globals] == [(0, "i32", None), (2, "f32", "__wm_get_2")]
    assert m.start_export == "__wm_start"
    assert m.functable_export == "__wm_functable"
    assert m.function_count == 3  # one import plus two defined functions
    assert m.module_sha256 == snapshot.module_digest(prepared)


def test_start_no_longer_runs_at_instantiation_only_at_first_boot(engine):
    prepared = snapshot.prepare(wasmtime.wat2wasm(WAT))
    store = wasmtime.Store(engine)
    imp = wasmtime.Func(store, wasmtime.FuncType([], []), lambda: None)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, prepared), [imp])
    cnt = inst.exports(store)["__wm_global_0"]
    assert cnt.value(store) == 0
    snapshot.first_boot(store, inst)
    assert cnt.value(store) == 7


def test_prepare_is_deterministic_and_idempotent():
    wasm = wasmtime.wat2wasm(WAT)
    once = snapshot.prepare(wasm)
    assert snapshot.prepare(wasm) == once
    assert snapshot.prepare(once) == once


def test_digest_is_sha256_of_the_prepared_module_with_the_digest_zeroed():
    import hashlib

    prepared = snapshot.prepare(wasmtime.wat2wasm(WAT))
    digest = bytes.fromhex(snapshot.module_digest(prepared))
    # Patch the four embedded LEBs back to zero and hash: that is the digest.
    from snapshot import _leb128, _prepare, _wasmbin

    offsets = _prepare._digest_offsets(_wasmbin.parse_module(prepared))
    zeroed = bytearray(prepared)
    for off in offsets:
        zeroed[off:off + 10] = _leb128.write_s64_padded(0)
    assert hashlib.sha256(zeroed).digest() == digest


def test_tampered_prepared_module_is_refused():
    prepared = bytearray(snapshot.prepare(wasmtime.wat2wasm(WAT)))
    at = prepared.index(b"__wm_start") - 40  # somewhere inside the code
    prepared[at] ^= 0x01
    with pytest.raises(InvalidModuleError):
        snapshot.module_digest(bytes(prepared))


@pytest.mark.parametrize("data, message", [
    (b"", "not a WebAssembly binary"),
    (b"hello world, not wasm", "not a WebAssembly binary"),
    (b"\0asm\x0d\x00\x01\x00", "component"),
    (b"\0asm\x02\x00\x00\x00", "version"),
    (b"\0asm\x01\x00\x00\x00\x01\x05\x01", "past the end"),
    (b"\0asm\x01\x00\x00\x00\x63\x00", "unknown section"),
])
def test_bad_input_is_refused_with_a_clear_error(data, message):
    with pytest.raises(InvalidModuleError, match=message):
        snapshot.prepare(data)


def test_non_bytes_input_is_refused():
    with pytest.raises(InvalidModuleError, match="expected module bytes"):
        snapshot.prepare("(module)")


def test_invalid_module_body_is_refused():
    # Well-formed sections, but a function body that does not type-check.
    wasm = wasmtime.wat2wasm("(module (func (result i32) drop))")  # stack underflow
    with pytest.raises(InvalidModuleError, match="not a valid WebAssembly module"):
        snapshot.prepare(wasm)


def test_reserved_export_names_are_refused():
    with pytest.raises(InvalidModuleError, match="reserved prefix"):
        snapshot.prepare(wasmtime.wat2wasm('(module (func (export "__wm_x")))'))


def test_shared_memory_is_refused():
    with pytest.raises(InvalidModuleError, match="shared"):
        snapshot.prepare(wasmtime.wat2wasm("(module (memory 1 1 shared))"))


def test_manifest_of_unprepared_module_is_refused():
    with pytest.raises(InvalidModuleError, match="not been prepared"):
        snapshot.manifest(wasmtime.wat2wasm("(module)"))


@pytest.mark.parametrize("name", workloads.names())
def test_c_workloads_prepare_with_internal_stack_pointer_exported(name):
    prepared = snapshot.prepare(workloads.load(name))
    m = snapshot.manifest(prepared)
    # clang keeps __stack_pointer as mutable global 0, not exported.
    assert any(g.index == 0 and g.valtype == "i32" for g in m.globals)
    assert snapshot.prepare(prepared) == prepared


#: A refusal names the item and the feature that holds uncapturable state.
REFUSAL = re.compile(r"^(table|global|element segment) \d+ holds (GC references|exception references) \(")
#: The only features a module may be refused for: live GC objects (struct
#: and array identity) and live exceptions (see snapshot/_reftypes.py).
REFUSABLE = {"GC references", "exception references"}


def test_spec_testsuite_corpus_prepares_captures_and_restores(engine):
    """Every module of the spec test suite either prepares into a valid,
    idempotent module whose state survives capture, encoding, decoding and
    restore, or is refused naming the item and a feature whose state cannot
    be captured."""
    root = wast.testsuite_dir()
    if root is None:
        pytest.skip("spec test suite not found (set WASM_TESTSUITE)")
    seen = collections.Counter()
    refusals = collections.Counter()
    for path in sorted(root.glob("*.wast")):
        for text in wast.modules(path):
            try:
                wasm = wasmtime.wat2wasm(text)
                wasmtime.Module.validate(engine, wasm)
            except wasmtime.WasmtimeError:
                continue
            try:
                prepared = snapshot.prepare(wasm)
            except InvalidModuleError as exc:
                found = REFUSAL.match(str(exc))
                assert found and found.group(2) in REFUSABLE, (path.name, exc, refusals)
                refusals[found.group(2)] += 1
                continue
            assert snapshot.prepare(prepared) == prepared
            seen["prepared"] += 1
            module = wasmtime.Module(engine, prepared)
            if module.imports:
                continue
            store = wasmtime.Store(engine)
            try:
                inst = wasmtime.Instance(store, module, [])
                snapshot.first_boot(store, inst)
            except (wasmtime.Trap, wasmtime.WasmtimeError):
                continue  # modules whose start traps on purpose
            try:
                snap = snapshot.capture(store, inst)
            except snapshot.UnrepresentableStateError:
                seen["unrepresentable"] += 1
                continue
            store2 = wasmtime.Store(engine)
            inst2 = wasmtime.Instance(store2, module, [])
            snapshot.restore(snapshot.Snapshot.from_bytes(snap.to_bytes()), store2, inst2)
            again = snapshot.capture(store2, inst2)
            assert again.same_state(snap), path.name
            seen["round-tripped"] += 1
    # Measured: 2102 prepared, 1853 round-tripped, 26 refused (all GC references).
    assert seen["prepared"] > 2000 and seen["round-tripped"] > 1800, (seen, refusals)
    assert sum(refusals.values()) < 40, (seen, refusals)


def test_fuzzed_modules_are_refused_cleanly_or_prepared_validly():
    """Thousands of mutated modules: prepare raises InvalidModuleError (never
    another exception, never its own-bug message) or returns a module that is
    valid, idempotent and carries its digest."""
    import random

    rng = random.Random(99)
    seeds = [wasmtime.wat2wasm(WAT), workloads.load("counter")]
    outcomes = collections.Counter()
    for i in range(2500):
        data = bytearray(seeds[i % 2])
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            damage(data, rng, rng.randrange(len(EDITS)), at, delete_max=8, insert_max=8)
        try:
            prepared = snapshot.prepare(bytes(data))
        except InvalidModuleError as exc:
            assert "wasm-migrate bug" not in str(exc), exc
            outcomes["refused"] += 1
            continue
        assert snapshot.prepare(prepared) == prepared
        snapshot.module_digest(prepared)
        outcomes["prepared"] += 1
    assert outcomes["refused"] > 500 and outcomes["prepared"] > 100, outcomes
