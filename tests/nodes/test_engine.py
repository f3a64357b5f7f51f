"""The host's engine: the WebAssembly features it runs, and snapshots of them across two of its stores."""

import pytest
import wasmtime

import snapshot
from nodes._engine import engine_settings, make_engine
from nodes._limits import Limits

# One module per feature whose state snapshot/_refaccess.py carries; wasmtime
# 50 enables each by default, and engine_settings does not turn any off.
FEATURES = {
    "typed function references": '(module (type $t (func (result i32))) (func $f (type $t) (i32.const 3)) '
                                 '(table $x 1 (ref $t) (ref.func $f)) (func (export "run") (result i32) '
                                 '(call_ref $t (table.get $x (i32.const 0)))))',
    "gc (i31ref)": '(module (global $g (mut i31ref) (ref.i31 (i32.const -3))) '
                   '(func (export "run") (result i32) (i31.get_s (global.get $g))))',
    "exceptions": '(module (tag $e (param i32)) (func (export "run") (result i32) '
                  '(block $h (result i32) (try_table (catch $e $h) (throw $e (i32.const 3))) (i32.const 0))))',
    "table64": '(module (type $t (func (result i32))) (func $f (type $t) (i32.const 3)) (table $x i64 1 funcref) '
               '(elem (table $x) (i64.const 0) func $f) '
               '(func (export "run") (result i32) (call_indirect $x (type $t) (i64.const 0))))',
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_the_host_engine_runs_each_feature_and_moves_its_state(feature):
    engine = make_engine(engine_settings(Limits()))
    module = wasmtime.Module(engine, snapshot.prepare(wasmtime.wat2wasm(FEATURES[feature])))
    stores = [wasmtime.Store(engine) for _ in range(2)]
    for store in stores:
        store.set_epoch_deadline(1_000_000)
    source, target = (wasmtime.Instance(store, module, []) for store in stores)
    snapshot.first_boot(stores[0], source)
    snap = snapshot.Snapshot.from_bytes(snapshot.capture(stores[0], source).to_bytes())
    snapshot.restore(snap, stores[1], target)
    assert abs(target.exports(stores[1])["run"](stores[1])) == 3
