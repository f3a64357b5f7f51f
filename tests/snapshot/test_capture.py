"""Capture and restore: every value type and edge case, byte for byte."""

import random
import struct
import subprocess
import sys
import textwrap

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

import snapshot
import workloads

EDGE = r"""
(module
  (func $a (result i32) i32.const 11)
  (func $b (result i32) i32.const 22)
  (func $c (result i32) i32.const 33)
  (table $t (export "t") 3 20 funcref)
  (table $e 2 externref)
  (elem (table $t) (i32.const 0) func $a $b)
  (global $i32 (mut i32) (i32.const -7))
  (global $i64 (mut i64) (i64.const -9000000000))
  (global $f32 (mut f32) (f32.const nan:0x200001))
  (global $f64 (mut f64) (f64.const -nan:0x4000000000001))
  (global $v (mut v128) (v128.const i32x4 1 -2 3 -4))
  (global $fr (mut funcref) (ref.func $c))
  (global $er (mut externref) (ref.null extern))
  (global $const i32 (i32.const 5))
  (memory $m0 1 100)
  (memory $m1 0)
  (data (memory $m0) (i32.const 10) "data segment")
  (func (export "poke") (param i32 i32) (i32.store8 $m0 (local.get 0) (local.get 1)))
  (func (export "poke1") (param i32 i32) (i32.store8 $m1 (local.get 0) (local.get 1)))
  (func (export "grow1") (param i32) (result i32) (memory.grow $m1 (local.get 0)))
  (func (export "grow0") (param i32) (result i32) (memory.grow $m0 (local.get 0)))
  (func (export "call") (param i32) (result i32) (call_indirect $t (result i32) (local.get 0)))
  (func (export "setv") (param i64 i64) (global.set $v (i64x2.replace_lane 1 (i64x2.splat (local.get 0)) (local.get 1))))
  (func (export "setf32bits") (param i32) (global.set $f32 (f32.reinterpret_i32 (local.get 0))))
  (func (export "f32bits") (result i32) (i32.reinterpret_f32 (global.get $f32)))
  (func (export "f64bits") (result i64) (i64.reinterpret_f64 (global.get $f64)))
  (func (export "setfr") (global.set $fr (ref.func $a)))
  (func (export "callfr") (result i32) (call $call_ref_shim))
  (func $call_ref_shim (result i32) (table.set $t (i32.const 2) (global.get $fr)) (call_indirect $t (result i32) (i32.const 2)))
  (func (export "set_extern") (param externref) (global.set $er (local.get 0)))
)
"""


def _mutate(w):
    w("poke", 70000 % 65536, 0xAB)
    w("grow0", 3)
    w("poke", 3 * 65536 + 17, 0xCD)
    w("grow1", 2)
    w("poke1", 65536 + 5, 0xEF)
    w("setv", -1, 0x0123456789ABCDEF)
    w("setf32bits", 0x7FA00001)  # a signalling NaN that wasmtime-py would quieten
    t = w.exports["t"]
    t.set(w.store, 2, w.exports["__wm_functable"].get(w.store, 0))  # point slot 2 at $a
    t.grow(w.store, 4, None)


def test_every_value_type_and_edge_case_round_trips(live):
    w = live(EDGE)
    _mutate(w)
    snap = w.capture()
    target = w.fresh()
    target.restore(snap)
    assert target.capture().same_state(snap)
    assert target.memory(0) == w.memory(0) and target.memory(1) == w.memory(1)
    assert target("f32bits") & 0xFFFFFFFF == 0x7FA00001
    assert target("f64bits") & (2**64 - 1) == 0xFFF4000000000001
    assert target("call", 2) == 11 and target("call", 1) == 22
    assert target.exports["t"].size(target.store) == 7
    assert target("callfr") == 33  # funcref global came across as a function index
    # Encoded and decoded, the state is still exact.
    again = snapshot.Snapshot.from_bytes(snap.to_bytes())
    assert again.same_state(snap)


def test_snapshot_values_are_raw_bits(live):
    w = live(EDGE)
    w("setf32bits", 0x7FA00001)
    g = {x.index: x for x in w.capture().globals}
    assert g[0].value == -7 and g[1].value == -9000000000
    assert g[2].value == 0x7FA00001
    assert g[3].value == 0xFFF4000000000001
    assert g[4].value == struct.unpack("<QQ", struct.pack("<iiii", 1, -2, 3, -4))[0] | (
        struct.unpack("<QQ", struct.pack("<iiii", 1, -2, 3, -4))[1] << 64)
    assert g[5].value == 2  # $c
    assert g[6].value is None
    assert 7 not in g  # immutable globals are not state


def test_zero_pages_are_elided(live):
    """Capture leaves out zero wasm pages; the encoding leaves out zero 4 KiB pages."""
    import msgpack

    w = live(EDGE)
    w("grow0", 50)
    w("poke", 40 * 65536, 1)
    snap = w.capture()
    m0 = snap.memories[0]
    assert m0.size_bytes == 51 * 65536
    assert [(r.first_page, r.page_count) for r in m0.runs] == [(0, 16), (640, 16)]
    data = snap.to_bytes()
    pos, sent = 16, []
    while pos < len(data):
        ftype, length = struct.unpack_from(">BI", data, pos)
        body = msgpack.unpackb(data[pos + 5:pos + 5 + length])
        if ftype == 2 and body["m"] == 0:
            sent.append((body["raw"] // 4096, sum(count for _, count in body["zero"])))
        pos += 9 + length
    assert sent == [(2, 30)]  # pages 0 and 640 travel; 30 zero pages are named, not sent
    assert snapshot.Snapshot.from_bytes(data) == snap


def test_an_in_place_capture_views_the_live_memory_and_encodes_the_same(live):
    w = live(EDGE)
    w("grow0", 50)
    w("poke", 40 * 65536, 7)
    copied = w.capture()
    viewed = snapshot.capture(w.store, w.instance, in_place=True)
    assert viewed.same_state(copied)
    assert [(r.first_page, r.page_count) for r in viewed.memories[0].runs] == [(0, 16), (640, 16)]
    decoded = snapshot.Snapshot.from_bytes(viewed.to_bytes())
    assert decoded.same_state(copied)
    w("poke", 40 * 65536, 9)  # the views see what runs after: encode before the instance runs again
    assert not viewed.same_state(copied) and decoded.same_state(copied)


def test_host_externref_is_refused_clearly(live):
    w = live(EDGE)
    w("set_extern", "a host object")
    with pytest.raises(snapshot.UnrepresentableStateError, match="host externref"):
        w.capture()


def test_foreign_function_in_a_table_is_refused(live, engine):
    w = live(EDGE)
    foreign = wasmtime.Func(w.store, wasmtime.FuncType([], [wasmtime.ValType.i32()]), lambda: 1)
    w.exports["t"].set(w.store, 0, foreign)
    with pytest.raises(snapshot.UnrepresentableStateError, match="not part of the module"):
        w.capture()


def test_wrong_module_is_refused_and_target_untouched(live):
    a = live(EDGE)
    b = live("(module (memory 1) (global (mut i32) (i32.const 3)))")
    snap = a.capture()
    before = b.capture()
    with pytest.raises(snapshot.ModuleMismatchError):
        b.restore(snap)
    assert b.capture().same_state(before)


def test_unprepared_instance_is_refused(engine):
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, "(module (memory 1))"), [])
    with pytest.raises(snapshot.InvalidModuleError, match="prepare"):
        snapshot.capture(store, inst)


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.memories[0].__class__(0, s.memories[0].size_bytes + 1, s.memories[0].runs), "whole wasm pages"),
    (lambda s: s.memories[0].__class__(0, 200 * 65536, s.memories[0].runs), "maximum"),
    (lambda s: s.memories[0].__class__(0, 65536, (snapshot.PageRun(20, bytes(4096)),)), "malformed page run"),
])
def test_invalid_memory_is_refused_before_anything_is_written(live, damage, message):
    import dataclasses

    w = live(EDGE)
    _mutate(w)
    snap = w.capture()
    bad = dataclasses.replace(snap, memories=(damage(snap),) + snap.memories[1:])
    target = w.fresh()
    before = target.capture()
    with pytest.raises(snapshot.IncompatibleSnapshotError, match=message):
        target.restore(bad)
    assert target.capture().same_state(before)


@pytest.mark.parametrize("field, value, message", [
    ("globals", lambda g: (g[0].__class__(0, "i32", 2**31),) + g[1:], "valid i32"),
    ("globals", lambda g: g[1:], "different mutable globals"),
    ("tables", lambda t: (t[0].__class__(0, "funcref", (99,) * 3),) + t[1:], "out of range"),
    ("tables", lambda t: (t[0].__class__(0, "funcref", (None,) * 21),) + t[1:], "maximum"),
])
def test_invalid_globals_and_tables_are_refused_before_anything_is_written(live, field, value, message):
    import dataclasses

    w = live(EDGE)
    _mutate(w)
    snap = w.capture()
    bad = dataclasses.replace(snap, **{field: value(getattr(snap, field))})
    target = w.fresh()
    before = target.capture()
    with pytest.raises(snapshot.IncompatibleSnapshotError, match=message):
        target.restore(bad)
    assert target.capture().same_state(before)


def test_store_memory_limit_refusal_writes_no_contents(live, engine):
    w = live(EDGE)
    w("grow0", 40)
    w("poke", 39 * 65536, 9)
    snap = w.capture()
    target = w.fresh()
    target.store.set_limits(memory_size=10 * 65536)
    with pytest.raises(snapshot.IncompatibleSnapshotError, match="refused to grow"):
        target.restore(snap)
    assert target.memory(0)[10:22] == b"data segment"  # contents untouched
    g = {x.index: x.value for x in target.capture().globals}
    assert g[0] == -7


def test_restore_clears_data_segments_the_snapshot_overwrote(live):
    w = live(EDGE)
    for i in range(12):
        w("poke", 10 + i, 0)
    snap = w.capture()
    assert snap.memories[0].runs == ()  # memory 0 is now all zeros
    target = w.fresh()
    assert target.memory(0)[10:22] == b"data segment"
    target.restore(snap)
    assert target.memory(0) == bytes(65536)


@pytest.mark.parametrize("name", ["counter", "kvstore", "imgfilter", "grower"])
def test_c_workloads_carry_on_after_restore(live, name):
    w = live(workloads.load(name))
    drive = {
        "counter": lambda w: [w("incr", 5), w("add_and_get_log", 3), w("add_and_get_log", 4)],
        "kvstore": lambda w: [_kv_put(w, b"k%d" % i, b"v" * i) for i in range(50)],
        "imgfilter": lambda w: [_img(w)],
        "grower": lambda w: [w("grow_mb", 3)],
    }[name]
    probe = {
        "counter": lambda w: (w("incr", 1), w("log_checksum"), w("add_and_get_log", 9)),
        "kvstore": lambda w: (w("kv_count"), w("kv_checksum"), _kv_put(w, b"new", b"x"), w("kv_checksum")),
        "imgfilter": lambda w: (w("img_blur", 1, 2), w("img_checksum", 1), w("img_frames")),
        "grower": lambda w: (w("grow_mb", 1), w("grower_checksum"), w("pages")),
    }[name]
    drive(w)
    snap = w.capture()
    target = w.fresh()
    target.restore(snap)
    assert probe(target) == probe(w)
    assert target.memory() == w.memory()


def _kv_put(w, key: bytes, value: bytes) -> int:
    mem = w.exports["memory"]
    kp = w("wm_alloc", len(key))
    vp = w("wm_alloc", len(value))
    mem.write(w.store, key, kp)
    mem.write(w.store, value, vp)
    out = w("kv_put", kp, len(key), vp, len(value))
    w("wm_free", kp)
    w("wm_free", vp)
    return out


def _img(w):
    h = w("img_new", 64, 48)
    w.exports["memory"].write(w.store, bytes(range(256)) * 48, w("img_data", h))
    w("img_gray", h)
    return h


CHILD = textwrap.dedent("""
    import sys, wasmtime, snapshot, workloads
    engine = wasmtime.Engine()
    prepared = snapshot.prepare(workloads.load("kvstore"))
    store = wasmtime.Store(engine); store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine); linker.define_wasi()
    inst = linker.instantiate(store, wasmtime.Module(engine, prepared))
    ex = inst.exports(store)
    if sys.argv[1] == "capture":
        snapshot.first_boot(store, inst)
        mem = ex["memory"]
        for i in range(200):
            k, v = b"key%d" % i, b"value%d" % (i * i)
            kp, vp = ex["wm_alloc"](store, len(k)), ex["wm_alloc"](store, len(v))
            mem.write(store, k, kp); mem.write(store, v, vp)
            ex["kv_put"](store, kp, len(k), vp, len(v))
            ex["wm_free"](store, kp); ex["wm_free"](store, vp)
        sys.stdout.buffer.write(snapshot.capture(store, inst).to_bytes(key=bytes(32)))
    else:
        snapshot.restore(snapshot.Snapshot.from_bytes(sys.stdin.buffer.read(), key=bytes(32)), store, inst)
        print(ex["kv_count"](store), ex["kv_checksum"](store))
""")


def test_round_trip_across_processes(live):
    captured = subprocess.run([sys.executable, "-c", CHILD, "capture"], capture_output=True, check=True).stdout
    restored = subprocess.run([sys.executable, "-c", CHILD, "restore"], input=captured,
                              capture_output=True, check=True).stdout.split()
    # Rebuild the same state here and compare with what the other process reports.
    w = live(workloads.load("kvstore"))
    for i in range(200):
        _kv_put(w, b"key%d" % i, b"value%d" % (i * i))
    assert [int(x) for x in restored] == [200, w("kv_checksum")]
    assert snapshot.Snapshot.from_bytes(captured, key=bytes(32)).same_state(w.capture())


def test_third_party_quickjs_session_survives_capture_and_restore(live):
    """A 1.5 MB interpreter built by others (QuickJS-NG's WASI reactor,
    installed as a test dependency) keeps its JS heap across a restore."""
    from workloads.thirdparty import QuickJS, find_thirdparty

    path = find_thirdparty()
    if path is None:
        pytest.skip("qjs-wasi-reactor.wasm 0.15 is not installed (pip install -e '.[test]')")
    w = live(path.read_bytes(), boot=False)
    js = QuickJS(w.store, w.instance)
    js.start()
    js.eval("globalThis.m = new Map(); for (let i = 0; i < 500; i++) m.set('k' + i, i * i);"
            "var counter = 0; function tick() { return ++counter; }")
    assert js.eval("tick()") == "1"
    data = w.capture().to_bytes(key=bytes(32))
    target = w.fresh()
    target.restore(snapshot.Snapshot.from_bytes(data, key=bytes(32)))
    probe = "tick() + ':' + m.get('k7') + ':' + m.size"
    assert QuickJS(target.store, target.instance).eval(probe) == js.eval(probe) == "2:49:500"


EDGE_CHILD = textwrap.dedent("""
    import sys, wasmtime, snapshot
    sys.path.insert(0, sys.argv[1])
    import live_instance, test_capture
    w = live_instance.Live(wasmtime.Engine(), snapshot.prepare(wasmtime.wat2wasm(test_capture.EDGE)))
    test_capture._mutate(w)
    sys.stdout.buffer.write(w.capture().to_bytes())
""")


def test_every_edge_case_round_trips_across_processes(live):
    """Grown memories, several memories, internal globals, NaN payloads,
    v128, funcref globals and modified tables, captured in another process."""
    import os

    here = os.path.dirname(__file__)
    data = subprocess.run([sys.executable, "-c", EDGE_CHILD, here], capture_output=True, check=True).stdout
    w = live(EDGE)
    _mutate(w)
    target = w.fresh()
    target.restore(snapshot.Snapshot.from_bytes(data))
    assert target.capture().same_state(w.capture())
    assert target("f32bits") & 0xFFFFFFFF == 0x7FA00001
    assert target("call", 2) == 11 and target("callfr") == 33
    assert (target.memory(0), target.memory(1)) == (w.memory(0), w.memory(1))


def test_release_copies_gives_back_a_large_copy_and_leaves_small_ones():
    """Pages copied into an mmap (1 MiB and more) read as zeros after, and RSS falls; small runs stay as they were."""
    import ctypes

    from snapshot._capture import copy_runs
    from snapshot._state import MemoryState

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    source = bytearray(b"\x5a" * (40 << 20))
    address = ctypes.addressof((ctypes.c_char * len(source)).from_buffer(source))
    big_pages = (40 << 20) // snapshot.PAGE_BYTES
    runs = copy_runs(address, [(0, big_pages)]) + copy_runs(address, [(0, 2)])  # 40 MiB in an mmap, 8 KiB not
    snap = snapshot.Snapshot(module_sha256="00" * 32, state_id=bytes(16), base_id=None,
                             memories=(MemoryState(0, len(source), runs),), globals=(), tables=())
    before = rss()
    snapshot.release_copies(snap)
    assert before - rss() >= 32 << 20
    big, small = runs
    assert big.data[:4096] == bytes(4096) and big.data[-1] == 0  # given back: zero-fill on the next read
    assert bytes(small.data) == b"\x5a" * 8192
    snapshot.release_copies(snap)  # twice is harmless


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 24)), max_size=30))
def test_copy_runs_copies_short_and_long_runs_exactly(spans):
    """Runs under 64 KiB share buffers, longer ones get their own: every run holds its pages, and is a copy."""
    import ctypes

    from snapshot._capture import copy_runs

    page = snapshot.PAGE_BYTES
    memory = bytearray(random.Random(len(spans)).randbytes(400 * page))
    address = ctypes.addressof((ctypes.c_char * len(memory)).from_buffer(memory))
    ranges, end = [], 0
    for gap, length in spans:  # sorted, disjoint [start, end) ranges, as page_ranges makes them
        ranges.append((end + gap, end + gap + length))
        end += gap + length
    ranges = [(a, b) for a, b in ranges if b <= 400]
    runs = copy_runs(address, ranges)
    assert [(r.first_page, r.end_page) for r in runs] == ranges
    expected = [bytes(memory[a * page:b * page]) for a, b in ranges]
    memory[:] = bytes(len(memory))  # the copies must not follow the memory
    assert [bytes(r.data) for r in runs] == expected
