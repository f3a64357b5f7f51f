"""A module for the pool tests that leaves state behind on purpose: memory, a global and a table."""

import wasmtime

WAT = """
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 2 4)
  (global $count (mut i32) (i32.const 0))
  (table $t 2 2 funcref)
  (elem (table $t) (i32.const 0) func $one $one)
  (func $one (result i32) (i32.const 1))
  (func $two (result i32) (i32.const 2))
  (func (export "init") (i32.store (i32.const 1024) (i32.const 100)))
  ;; returns what the last call left (memory word + global + table slot), then leaves more
  (func (export "bump") (param $x i32) (result i32)
    (local $seen i32)
    (local.set $seen (i32.add (i32.add (i32.load (i32.const 1024)) (global.get $count))
                              (call_indirect (result i32) (i32.const 1))))
    (i32.store (i32.const 1024) (i32.add (i32.load (i32.const 1024)) (local.get $x)))
    (i32.store (i32.const 70000) (local.get $x))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (table.set $t (i32.const 1) (ref.func $two))
    (local.get $seen))
  (func (export "spin") (param $n i32) (result i32)
    (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $i))
  (func (export "grow") (result i32) (memory.grow (i32.const 1)))
  (func (export "boom") (unreachable))
  (func (export "bad_init") (unreachable))
  (func $use (drop (call $random_get (i32.const 0) (i32.const 0))))
  (elem declare func $two))
"""


def pool_module() -> bytes:
    return wasmtime.wat2wasm(WAT)


#: What "bump" returns on a pristine instance: the word init wrote, no count, table slot 1 = $one.
PRISTINE = 100 + 0 + 1
