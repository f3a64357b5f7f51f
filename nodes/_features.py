"""The WebAssembly features a node's engine accepts, found by validating one small module per feature.

``wasmtime.Config`` settings cannot be read back, so the features are
probed on the engine the node runs workloads on: a feature is listed when
``Module.validate`` accepts a module that needs it.  The result is what
the membership advertises (``nodes._gossip``) and placement matches a
module's needs against.
"""

from __future__ import annotations

import functools

import wasmtime

#: Feature name (as the WebAssembly proposals name them) -> a module that needs it.
PROBES: dict[str, str] = {
    "multi-value": "(module (func (result i32 i32) i32.const 1 i32.const 2))",
    "bulk-memory": "(module (memory 1) (func i32.const 0 i32.const 0 i32.const 0 memory.fill))",
    "reference-types": "(module (table 1 externref))",
    "simd": "(module (func (result v128) v128.const i64x2 0 0))",
    "relaxed-simd": ("(module (func (result v128) v128.const i64x2 0 0 v128.const i64x2 0 0 "
                     "i8x16.relaxed_swizzle))"),
    "threads": "(module (memory 1 1 shared))",
    "multi-memory": "(module (memory 1) (memory 1))",
    "memory64": "(module (memory i64 1))",
    "tail-call": "(module (func $f return_call $f))",
    "extended-const": "(module (global i32 (i32.add (i32.const 1) (i32.const 2))))",
    "sign-extension": "(module (func (param i32) (result i32) local.get 0 i32.extend8_s))",
    "saturating-float-to-int": "(module (func (param f32) (result i32) local.get 0 i32.trunc_sat_f32_s))",
    "mutable-globals": "(module (global (import \"m\" \"g\") (mut i32)))",
}


@functools.cache
def _probe_bytes(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm(PROBES[name]))


def engine_features(engine: wasmtime.Engine) -> tuple[str, ...]:
    """The names in ``PROBES`` whose module ``engine`` accepts, sorted."""
    accepted = []
    for name in sorted(PROBES):
        try:
            wasmtime.Module.validate(engine, _probe_bytes(name))
        except (wasmtime.WasmtimeError, ValueError):
            continue
        accepted.append(name)
    return tuple(accepted)
