"""What prepare adds for passive segments: segment parsing, and probe, drop and count exports that work."""

import pytest
import wasmtime

import snapshot
from snapshot import _segments
from snapshot import _wasmbin as wb
from snapshot._segments import Segment
from snapshot._state import DroppedSegments


def _sections(wat: str) -> wb.ModuleInfo:
    return wb.parse_module(wasmtime.wat2wasm(wat))


def test_data_segments_are_told_apart_with_their_lengths():
    info = _sections('(module (memory 1) (memory $m 1) (data "abc") (data (i32.const 8) "xy") (data "")'
                     ' (data (memory $m) (i32.const 0) "q") (data "0123456789"))')
    assert _segments.data_segments(info.section(wb.DATA).payload) == [
        Segment(0, True, 3), Segment(1, False, 2), Segment(2, True, 0), Segment(3, False, 1), Segment(4, True, 10)]


def test_element_segments_of_every_encoding_are_told_apart_with_their_types():
    info = _sections("""(module (type $t (func)) (table 2 funcref) (table $x 2 externref) (func $f (type $t))
      (elem (i32.const 0) $f)                                ;; 0: flags 0
      (elem func $f $f)                                      ;; 1: flags 1
      (elem (table 0) (i32.const 0) func $f)                 ;; 2: flags 2
      (elem declare func $f)                                 ;; 3: flags 3
      (elem funcref (ref.func $f) (ref.null func) (ref.func $f))  ;; 4: flags 5
      (elem $x (i32.const 0) externref (ref.null extern))   ;; 5: flags 6
      (elem externref)                                       ;; 6: flags 5, empty
      (elem (ref null $t) (ref.func $f))                     ;; 7: a typed reference, made nullable
      (elem (ref $t) (ref.func $f) (ref.func $f)))            ;; 8
    """)
    assert _segments.elem_segments(info.section(wb.ELEMENT).payload) == [
        Segment(0, False, 1, b"\x70"), Segment(1, True, 2, b"\x70"), Segment(2, False, 1, b"\x70"),
        Segment(3, False, 1, b"\x70"), Segment(4, True, 3, b"\x70"), Segment(5, False, 1, b"\x6f"),
        Segment(6, True, 0, b"\x6f"), Segment(7, True, 1, b"\x63\x00"), Segment(8, True, 2, b"\x63\x00")]


def test_modules_without_passive_segments_are_prepared_as_before(engine):
    wat = '(module (memory 1) (data (i32.const 0) "x") (data "") (elem declare func 0) (func))'
    prepared = snapshot.prepare(wasmtime.wat2wasm(wat))
    names = [e.name for e in wasmtime.Module(engine, prepared).exports]
    assert not [n for n in names if n.startswith(("__wm_probe", "__wm_data", "__wm_elem"))]
    info = wb.parse_module(prepared)
    assert info.section(wb.DATACOUNT) is None and len(info.memories) == 1


def test_prepare_adds_a_data_count_section_and_stays_idempotent(engine):
    wasm = wasmtime.wat2wasm('(module (data "hello"))')  # no code uses it, so no data count section
    assert wb.parse_module(wasm).section(wb.DATACOUNT) is None
    prepared = snapshot.prepare(wasm)
    info = wb.parse_module(prepared)
    assert info.section(wb.DATACOUNT).payload == b"\x01"
    assert len(info.memories) == 1  # the probes' own memory: 0 pages, never exported
    assert info.memories[0].minimum == info.memories[0].maximum == 0
    assert snapshot.prepare(prepared) == prepared
    assert not [e for e in wasmtime.Module(engine, prepared).exports if isinstance(e.type, wasmtime.MemoryType)]


@pytest.mark.parametrize("memory", ["(memory i64 1)", "(import \"env\" \"mem\" (memory 1))",
                                    "(import \"env\" \"mem\" (memory i64 1))"])
def test_probes_use_memory_0_whatever_its_address_type_or_origin(engine, memory):
    wat = (f'(module {memory} (data "abc") (data "d") (func (export "drop") (data.drop 1))'
           ' (func (export "init") (param i32) (memory.init 1 (i64.const 0) (i32.const 0) (local.get 0))))')
    if "i64" not in memory:
        wat = wat.replace("i64.const", "i32.const")
    module = wasmtime.Module(engine, snapshot.prepare(wasmtime.wat2wasm(wat)))

    def instance():
        store = wasmtime.Store(engine)
        imports = []
        if "import" in memory:
            limits = wasmtime.Limits(1, None)
            imports = [wasmtime.Memory(store, wasmtime.MemoryType(limits, is_64="i64" in memory))]
        return store, wasmtime.Instance(store, module, imports)

    store, inst = instance()
    inst.exports(store)["drop"](store)
    snap = snapshot.capture(store, inst)
    assert snap.dropped == DroppedSegments((1,), ())
    store2, inst2 = instance()
    snapshot.restore(snap, store2, inst2)
    with pytest.raises(wasmtime.Trap):
        inst2.exports(store2)["init"](store2, 1)
    inst2.exports(store2)["init"](store2, 0)


def test_probes_work_across_chunks(engine):
    n = 2 * _segments.CHUNK + 40
    wat = ("(module (memory 1) (table 1 funcref) (func $f)"
           + "".join(f'(data "s{k}") (elem func $f)' for k in range(n))
           + '(func (export "drop") (param i32) (local.get 0) (drop)'
           + "".join(f"(if (i32.eq (local.get 0) (i32.const {k})) (then (data.drop {k}) (elem.drop {k})))"
                     for k in range(n)) + "))")
    module = wasmtime.Module(engine, snapshot.prepare(wasmtime.wat2wasm(wat)))
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, module, [])
    exports = inst.exports(store)
    assert exports["__wm_data_count"](store, 0, -1) == n
    assert exports["__wm_elem_count"](store, _segments.CHUNK - 1, _segments.CHUNK + 1) == 2
    chosen = (0, _segments.CHUNK - 1, _segments.CHUNK, 2 * _segments.CHUNK + 1, n - 1)
    for k in chosen:
        exports["drop"](store, k)
    snap = snapshot.capture(store, inst)
    assert snap.dropped == DroppedSegments(chosen, chosen)
    store2 = wasmtime.Store(engine)
    inst2 = wasmtime.Instance(store2, module, [])
    snapshot.restore(snapshot.Snapshot.from_bytes(snap.to_bytes()), store2, inst2)
    assert snapshot.capture(store2, inst2).same_state(snap)
